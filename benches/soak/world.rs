//! The soak's world, all of it started by the soak and ended by it (by the
//! PIDs it holds): a JetStream `nats-server`, a Docker engine of its own,
//! and two `genesis serve` hosts, each with its GENESIS_HOME on a small
//! loop-mounted ext4 of its own (so one can be filled up).

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::support::engine::PrivateEngine;
use crate::support::nats::NatsServer;
use crate::support::{git_repo, TestHome};
use crate::workload::SUITE;

/// Size of each home's file system. More than the 1 GiB `genesis doctor`
/// wants free, so a clean home passes it.
const HOME_MB: u64 = 1536;
/// JetStream's ack wait for the hosts: a request a killed host held is
/// redelivered this long after its last progress ack.
pub const ACK_WAIT_MS: u64 = 10_000;
/// How long a SIGTERM'd host may drain.
pub const DRAIN_MS: u64 = 60_000;

/// Runs a command, panicking with its output unless it succeeds.
pub fn must(command: &mut Command, what: &str) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A loop-mounted ext4 (no reserved blocks, so "full" is full for root
/// too) mounted at `mount`; unmounted on drop.
pub struct HomeDisk {
    pub mount: PathBuf,
    mounted: bool,
}

impl HomeDisk {
    pub fn create(image: PathBuf, mount: PathBuf) -> HomeDisk {
        let file = fs::File::create(&image).unwrap();
        file.set_len(HOME_MB * 1024 * 1024).unwrap();
        drop(file);
        must(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-m", "0"])
                .arg(&image),
            "mkfs.ext4 for a home",
        );
        fs::create_dir_all(&mount).unwrap();
        must(
            Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(&mount),
            "mounting a home",
        );
        HomeDisk {
            mount,
            mounted: true,
        }
    }

    /// Fills the file system to the last block; returns the filler.
    pub fn fill(&self) -> PathBuf {
        let path = self.mount.join("soak-filler");
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .unwrap();
        // All the free space at once, then ever smaller writes until
        // nothing fits (what fallocate leaves: metadata, rounding).
        let free = statvfs_free(&self.mount);
        // SAFETY: fallocate(2) on a file this function opened for writing.
        unsafe {
            libc::fallocate(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
                0,
                free.saturating_sub(16 << 20) as i64,
            )
        };
        let mut block = vec![0u8; 1024 * 1024];
        while !block.is_empty() {
            if file.write_all(&block).is_err() {
                let half = block.len() / 2;
                block.truncate(if half < 4096 { 0 } else { half });
            }
        }
        let _ = file.sync_all();
        path
    }

    /// Unmounts (lazily if something still holds it) and says whether it was.
    pub fn unmount(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.mount).status();
            if is_mounted(&self.mount) {
                let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
            }
            self.mounted = false;
        }
    }
}

impl Drop for HomeDisk {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// Bytes free for root (the file systems have no reserved blocks anyway).
fn statvfs_free(path: &Path) -> u64 {
    let c = std::ffi::CString::new(path.display().to_string()).unwrap();
    // SAFETY: statvfs(3) with a NUL-terminated path and a zeroed out-buffer.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    st.f_bfree.saturating_mul(st.f_frsize)
}

/// Whether `path` is a mount point now.
pub fn is_mounted(path: &Path) -> bool {
    let wanted = path.display().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(wanted.as_str()))
}

/// Mount points at or below `root`.
pub fn mounts_below(root: &Path) -> Vec<String> {
    let root = root.display().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|p| p.starts_with(&root))
        .collect()
}

/// Loop devices whose backing file lies below `root`.
pub fn loops_below(root: &Path) -> Vec<String> {
    let out = Command::new("losetup")
        .args(["-l", "-n", "-O", "NAME,BACK-FILE"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let root = root.display().to_string();
    out.lines()
        .filter(|l| l.contains(&root))
        .map(str::to_owned)
        .collect()
}

/// One host: its home, disk, log and (while it runs) its `genesis serve`.
pub struct Host {
    pub name: String,
    pub home: TestHome,
    pub disk: HomeDisk,
    pub log: PathBuf,
    child: Option<Child>,
    env: Vec<(String, String)>,
}

impl Host {
    pub fn new(name: &str, repo: &Path, nats_url: &str, docker_host: &str) -> Host {
        let home = TestHome::new(&host_config(name, repo));
        let disk = HomeDisk::create(home.root().join("home.img"), home.home());
        let log = home.root().join("serve.log");
        Host {
            name: name.to_owned(),
            home,
            disk,
            log,
            child: None,
            env: vec![
                ("GENESIS_NATS_URL".into(), nats_url.into()),
                ("DOCKER_HOST".into(), docker_host.into()),
            ],
        }
    }

    /// A `genesis` command for this host (its home, config, NATS, engine).
    pub fn command(&self) -> Command {
        let mut command = self.home.command();
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// Starts `genesis serve` and waits for its "genesis ready".
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} runs already", self.name);
        let offset = fs::metadata(&self.log).map_or(0, |m| m.len());
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = self
            .command()
            .env("GENESIS_LOG", "info")
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn genesis serve");
        self.child = Some(child);
        self.wait_for_log("genesis ready", offset, Duration::from_secs(180));
    }

    fn wait_for_log(&mut self, needle: &str, offset: u64, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let text = fs::read(&self.log).unwrap_or_default();
            let tail = String::from_utf8_lossy(&text[(offset as usize).min(text.len())..]);
            if tail.contains(needle) {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "{} exited ({status}) before {needle:?}; log:\n{tail}",
                    self.name
                );
            }
            assert!(
                Instant::now() < deadline,
                "{}: no {needle:?} within {limit:?}; log:\n{tail}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `kill -9`, reaped.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the child this soak spawned and has not reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            let _ = child.wait();
        }
    }

    /// SIGTERM, and the exit status of the drain.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on the child this soak spawned and has not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_millis(DRAIN_MS + 30_000);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill9();
        self.disk.unmount();
    }
}

fn host_config(name: &str, repo: &Path) -> String {
    format!(
        r#"
default_repo = "app"
max_concurrent = 2
queue_capacity = 1
drain_timeout_ms = {DRAIN_MS}

[host]
name = "{name}"

[nats]
jetstream = true
ack_wait_ms = {ACK_WAIT_MS}
progress_ack_ms = {progress}

[repos.app]
path = "{repo}"
image = "genesis/busybox:latest"
test_command = "sh run_tests.sh"
report = "tap"

[limits.high]
cpus = 1.0
memory_mb = 256
pids = 64
timeout_ms = 60000
network = false
disk_mb = 64

[sandbox]
infra_retries = 2
engine_wait_ms = 60000
infra_backoff_ms = 200
"#,
        progress = ACK_WAIT_MS / 10,
        repo = repo.display()
    )
}

/// Everything the soak runs against.
pub struct World {
    pub nats: NatsServer,
    pub engine: PrivateEngine,
    pub hosts: Vec<Host>,
    /// Holds the repo the hosts snapshot (removed on drop).
    _repo_dir: tempfile::TempDir,
}

impl World {
    pub fn start() -> World {
        let engine = PrivateEngine::start();
        engine.build_image("busybox");
        let nats = NatsServer::start(true);
        let repo_dir = tempfile::tempdir().unwrap();
        let repo = git_repo(
            &repo_dir.path().join("app"),
            &[("run_tests.sh", SUITE), ("README", "app\n")],
        );
        let mut hosts: Vec<Host> = ["host-a", "host-b"]
            .iter()
            .map(|name| Host::new(name, &repo, &nats.url(), &engine.host()))
            .collect();
        for host in &mut hosts {
            host.start();
        }
        World {
            nats,
            engine,
            hosts,
            _repo_dir: repo_dir,
        }
    }
}
