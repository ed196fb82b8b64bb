//! A small file system of a test's own (a tmpfs, so nothing touches the
//! disk), for a GENESIS_HOME that fills up, and filling it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted on `dir` for a test; unmounted on drop, also when
/// the test fails.
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    pub fn mount(dir: &Path, options: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount -t tmpfs on {} (the test needs root): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            dir: dir.to_path_buf(),
        }
    }
}

impl Tmpfs {
    /// Gives the file system a new size (`mount -o remount,size=...`):
    /// space freed without touching what is on it.
    pub fn resize(&self, options: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "remount {}: {}",
            self.dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// Fills the file system holding `dir` with one file, to the last byte it
/// takes; returns the file.
pub fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0xA5u8; 64 * 1024];
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if genesis::store::faults::is_no_space(&e) => break,
            Err(e) => panic!("filling {}: {e}", dir.display()),
        }
    }
    // Partial blocks: write single bytes until not even one fits.
    while let Ok(1) = file.write(&[0]) {}
    path
}
