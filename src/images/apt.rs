//! The apt step of a debootstrap image: apt-get chrooted into the fresh
//! rootfs, for what debootstrap cannot do (resolve virtual packages for
//! `apt_install`, take updates for `security`), with proc mounted only for
//! its duration.

use crate::errors::{GenesisError, Result};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::io::AsyncBufReadExt;

use super::*;

/// apt-get in a chroot of the fresh rootfs, for what debootstrap cannot do:
/// resolve virtual packages (`apt_install`) and take updates (`security`).
pub(super) async fn apt_step(
    def: &ImageDef,
    rootfs: &Path,
    say: &(dyn Fn(&str) + Sync),
) -> Result<()> {
    let io = |what: &str, e| GenesisError::io(format!("{what} in {}", rootfs.display()), e);
    let (suite, mirror) = (def.suite(), def.mirror());
    let mut sources = format!("deb {mirror} {suite} main\n");
    if def.security {
        let security = host_security_mirror().unwrap_or_else(|| DEFAULT_SECURITY_MIRROR.into());
        sources.push_str(&format!(
            "deb {mirror} {suite}-updates main\ndeb {security} {suite}-security main\n"
        ));
    }
    std::fs::write(rootfs.join("etc/apt/sources.list"), sources)
        .map_err(|e| io("writing etc/apt/sources.list", e))?;
    // apt resolves names itself; remove first so a symlink in the rootfs
    // cannot redirect the copy onto a host file.
    let resolv = rootfs.join("etc/resolv.conf");
    let _ = std::fs::remove_file(&resolv);
    std::fs::copy("/etc/resolv.conf", &resolv).map_err(|e| io("copying etc/resolv.conf", e))?;
    // Maintainer scripts must not start daemons: they would outlive the
    // step and keep the proc mount busy.
    let policy = rootfs.join("usr/sbin/policy-rc.d");
    std::fs::write(&policy, "#!/bin/sh\nexit 101\n").map_err(|e| io("writing policy-rc.d", e))?;
    std::fs::set_permissions(&policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(|e| io("chmod policy-rc.d", e))?;

    let apt = ["-y", "-q", "--no-install-recommends"];
    let mut steps = vec![("update", "apt-get update".to_owned(), vec!["-q", "update"])];
    if def.security {
        let says = format!("apt-get full-upgrade from {suite}-updates and {suite}-security");
        steps.push(("full-upgrade", says, [&apt[..], &["full-upgrade"]].concat()));
    }
    if !def.apt_install.is_empty() {
        let says = format!("apt-get install {}", def.apt_install.join(" "));
        let mut args = [&apt[..], &["install"]].concat();
        args.extend(def.apt_install.iter().map(String::as_str));
        steps.push(("install", says, args));
    }
    steps.push(("clean", "apt-get clean".to_owned(), vec!["clean"]));

    // dpkg's maintainer scripts expect /proc.
    let mut proc = ProcMount::mount(&rootfs.join("proc"))?;
    let mut result = Ok(());
    for (step, says, args) in &steps {
        say(says);
        result = apt_get(rootfs, step, args, say).await;
        if result.is_err() {
            break;
        }
    }
    let unmounted = proc.unmount();
    let _ = std::fs::remove_file(&policy);
    // Docker mounts its own resolv.conf; the build host's must not ship.
    let emptied = std::fs::write(&resolv, "").map_err(|e| io("emptying etc/resolv.conf", e));
    result.and(unmounted).and(emptied)
}

/// Runs `apt-get ARGS` chrooted into `rootfs`, noninteractive. The host
/// environment is kept (as for debootstrap) so proxy variables reach apt.
async fn apt_get(
    rootfs: &Path,
    step: &str,
    args: &[&str],
    say: &(dyn Fn(&str) + Sync),
) -> Result<()> {
    let context = format!("apt-get {step} in {}", rootfs.display());
    // stderr joins stdout inside the chroot, so an error's last lines come
    // in the order apt wrote them.
    let mut child = tokio::process::Command::new("chroot")
        .arg(rootfs)
        .args(["/bin/sh", "-c", "exec \"$@\" 2>&1", "sh", "apt-get"])
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| GenesisError::io(format!("starting chroot for {context}"), e))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut last = std::collections::VecDeque::with_capacity(LAST_LINES);
    let (mut fetched, mut set_up) = (0usize, 0usize);
    while let Ok(Some(line)) = lines.next_line().await {
        // One line per 50 packages fetched or configured.
        if line.starts_with("Get:") && step != "update" {
            fetched += 1;
            if fetched.is_multiple_of(50) {
                say(&format!("  fetched {fetched} packages"));
            }
        } else if line.starts_with("Setting up ") {
            set_up += 1;
            if set_up.is_multiple_of(50) {
                say(&format!("  set up {set_up} packages"));
            }
        }
        if last.len() == LAST_LINES {
            last.pop_front();
        }
        last.push_back(line);
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|e| GenesisError::io(format!("waiting for {context}"), e))?;
    if !output.status.success() {
        last.extend(
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .map(str::to_owned),
        );
        return Err(GenesisError::sandbox(
            context,
            format!(
                "exited with {}: {}",
                output.status,
                Vec::from(last).join("\n")
            ),
        ));
    }
    if set_up > 0 {
        say(&format!("  {step}: set up {set_up} packages"));
    }
    Ok(())
}

/// Output lines an apt-get error carries.
const LAST_LINES: usize = 8;

/// proc mounted in a rootfs; unmounted on drop too (an error or panic must
/// not leave it, a later `remove_dir_all` of the rootfs would walk into it).
struct ProcMount {
    dir: PathBuf,
    mounted: bool,
}

impl ProcMount {
    fn mount(dir: &Path) -> Result<Self> {
        let out = std::process::Command::new("mount")
            .args(["-t", "proc", "proc"])
            .arg(dir)
            .output()
            .map_err(|e| GenesisError::io(format!("mounting proc on {}", dir.display()), e))?;
        if !out.status.success() {
            return Err(GenesisError::sandbox(
                format!("mounting proc on {}", dir.display()),
                String::from_utf8_lossy(&out.stderr).trim(),
            ));
        }
        Ok(ProcMount {
            dir: dir.to_path_buf(),
            mounted: true,
        })
    }

    /// Unmounts, lazily if something still holds it.
    fn unmount(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.mounted) {
            return Ok(());
        }
        let umount = |lazy: bool| {
            let mut cmd = std::process::Command::new("umount");
            if lazy {
                cmd.arg("-l");
            }
            cmd.arg(&self.dir).output()
        };
        match umount(false) {
            Ok(out) if out.status.success() => Ok(()),
            first => match umount(true) {
                Ok(out) if out.status.success() => Ok(()),
                _ => Err(GenesisError::sandbox(
                    format!("unmounting {}", self.dir.display()),
                    match first {
                        Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                        Err(e) => e.to_string(),
                    },
                )),
            },
        }
    }
}

impl Drop for ProcMount {
    fn drop(&mut self) {
        let _ = self.unmount();
    }
}

/// Unmounts `ROOTFS/proc` if it is a mount point (another device than the
/// rootfs), as a killed build leaves it.
pub(super) fn unmount_stale_proc(rootfs: &Path) {
    use std::os::unix::fs::MetadataExt;
    let proc = rootfs.join("proc");
    if let (Ok(root), Ok(p)) = (std::fs::metadata(rootfs), std::fs::metadata(&proc)) {
        if root.dev() != p.dev() {
            drop(ProcMount {
                dir: proc,
                mounted: true,
            });
        }
    }
}
