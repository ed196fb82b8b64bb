//! A Docker engine of the test's own: a second `dockerd` on its own socket,
//! data root, exec root and pid file, on a bridge of its own and without
//! iptables, and gVisor's `runsc` registered as a runtime when installed.
//!
//! Not `--bridge none`: dockerd 20.10 then *deletes the host's `docker0`*
//! (`removeDefaultBridgeInterface`), cutting the machine's own engine off
//! its network. The test makes its own bridge interface instead and
//! deletes it on drop.
//!
//! Fault tests crash and restart it, and the gVisor tests use its runtime;
//! the machine's own engine is never restarted or reconfigured. It is
//! stopped (by the PIDs it wrote) on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const RUNSC: &str = "/usr/bin/runsc";

pub struct PrivateEngine {
    pub root: tempfile::TempDir,
    child: Option<Child>,
    /// The bridge interface made for this engine (deleted on drop).
    bridge: String,
}

static ENGINES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Bridge interfaces of this helper are named `gnst{PID}x{N}`: unique per
/// process, since every test process numbers its engines from 0 and two of
/// them (tests, a soak, another worktree's tests) may run at once: with one
/// shared name one process deleted the other's bridge and its engine could
/// not start again.
const BRIDGE_PREFIX: &str = "gnst";

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Names and addresses of the machine's interfaces, one per line.
fn ip_output(args: &[&str]) -> String {
    Command::new("ip")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Deletes this helper's bridges whose process is gone (a crashed test's).
fn remove_orphan_bridges() {
    for line in ip_output(&["-o", "link", "show"]).lines() {
        let Some(name) = line
            .split(": ")
            .nth(1)
            .map(|n| n.split('@').next().unwrap_or(n))
        else {
            continue;
        };
        let pid = name
            .strip_prefix(BRIDGE_PREFIX)
            .and_then(|rest| rest.split_once('x'))
            .and_then(|(pid, _)| pid.parse::<i32>().ok());
        // SAFETY: signal 0 only checks that the process exists.
        if pid.is_some_and(|pid| unsafe { libc::kill(pid, 0) } != 0) {
            ip(&["link", "del", name]);
        }
    }
}

/// Makes a bridge interface with an address in a 10.254.X.0/24 no other
/// interface uses.
fn make_bridge(n: u32) -> String {
    remove_orphan_bridges();
    let name = format!("{BRIDGE_PREFIX}{}x{n}", std::process::id());
    ip(&["link", "del", &name]);
    assert!(
        ip(&["link", "add", &name, "type", "bridge"]),
        "ip link add {name}"
    );
    let taken = ip_output(&["-o", "-4", "addr", "show"]);
    let start = (std::process::id() + n) % 250;
    let subnet = (0..250)
        .map(|i| (start + i) % 250)
        .find(|x| !taken.contains(&format!("10.254.{x}.")))
        .expect("a free 10.254.X.0/24");
    assert!(ip(&[
        "addr",
        "add",
        &format!("10.254.{subnet}.1/24"),
        "dev",
        &name
    ]));
    assert!(ip(&["link", "set", &name, "up"]));
    name
}

impl PrivateEngine {
    /// Starts the engine and waits until it answers.
    pub fn start() -> PrivateEngine {
        let root = tempfile::Builder::new()
            .prefix("genesis-engine-")
            .tempdir()
            .unwrap();
        let n = ENGINES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let bridge = make_bridge(n);
        let mut engine = PrivateEngine {
            root,
            child: None,
            bridge,
        };
        engine.write_config();
        engine.spawn();
        engine
    }

    pub fn socket(&self) -> PathBuf {
        self.root.path().join("docker.sock")
    }

    /// For `DOCKER_HOST`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    pub fn has_runsc() -> bool {
        Path::new(RUNSC).exists()
    }

    fn write_config(&self) {
        let dir = self.root.path();
        let mut config = serde_json::json!({
            "data-root": dir.join("data"),
            "exec-root": dir.join("exec"),
            "pidfile": dir.join("docker.pid"),
            "hosts": [self.host()],
            "bridge": self.bridge,
            "iptables": false,
            "ip-masq": false,
        });
        if Self::has_runsc() {
            // Without --network=none a `--network none` container fails to start.
            config["runtimes"] = serde_json::json!({
                "runsc": {"path": RUNSC, "runtimeArgs": ["--network=none"]}
            });
        }
        std::fs::write(dir.join("daemon.json"), config.to_string()).unwrap();
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.path().join("dockerd.log"))
            .unwrap();
        let child = Command::new("dockerd")
            .arg("--config-file")
            .arg(self.root.path().join("daemon.json"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start a second dockerd");
        self.child = Some(child);
        self.wait_until_up(Duration::from_secs(60));
    }

    /// Polls the socket until the engine answers (it starts in ~1-3 s).
    fn wait_until_up(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let ok = Command::new("docker")
                .args([
                    "-H",
                    &self.host(),
                    "version",
                    "--format",
                    "{{.Server.Version}}",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("the private engine did not answer; log:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("dockerd.log")).unwrap_or_default()
    }

    /// `docker -H <this engine> ARGS`, returning stdout; panics on failure.
    pub fn docker(&self, args: &[&str]) -> String {
        super::docker_cli(Some(&self.host()), args)
    }

    /// Starts `genesis run` of `req` in `home` against this engine.
    pub fn spawn_run(&self, home: &super::TestHome, req: &serde_json::Value) -> Child {
        use std::io::Write;
        let mut child = home
            .command()
            .env("DOCKER_HOST", self.host())
            .args(["run", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(req.to_string().as_bytes())
            .unwrap();
        child
    }

    /// `genesis run` of `req` in `home` against this engine: its result.
    pub fn run(&self, home: &super::TestHome, req: &serde_json::Value) -> serde_json::Value {
        super::result_json(&self.spawn_run(home, req).wait_with_output().unwrap())
    }

    /// Builds a built-in image into this engine (`genesis images build`).
    pub fn build_image(&self, name: &str) {
        let home = tempfile::tempdir().unwrap();
        let status = Command::new(super::genesis_bin())
            .env("GENESIS_HOME", home.path())
            .env("DOCKER_HOST", self.host())
            .args(["images", "build", name])
            .status()
            .unwrap();
        assert!(
            status.success(),
            "genesis images build {name} on the private engine"
        );
    }

    /// A crash of the whole engine: SIGKILL to dockerd and to its
    /// containerd (the containers' shims live on), then a fresh dockerd on
    /// the same roots, which finds and stops what ran before.
    pub fn crash_and_restart(&mut self) {
        self.crash();
        self.restart();
    }

    /// The crash alone: SIGKILL to dockerd and its containerd; the engine
    /// stays away until [`PrivateEngine::restart`].
    pub fn crash(&mut self) {
        self.kill_dockerd(libc::SIGKILL);
        if let Some(pid) = self.containerd_pid() {
            // SAFETY: the containerd this engine's dockerd started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            wait_gone(pid, Duration::from_secs(10));
        }
    }

    /// A fresh dockerd on the same roots, after [`PrivateEngine::crash`].
    pub fn restart(&mut self) {
        self.spawn();
    }

    fn kill_dockerd(&mut self, signal: i32) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the dockerd this helper spawned.
            unsafe { libc::kill(child.id() as i32, signal) };
            let _ = child.wait();
        }
    }

    /// The containerd this engine started (it outlives a dockerd crash).
    fn containerd_pid(&self) -> Option<i32> {
        let path = self.root.path().join("exec/containerd/containerd.pid");
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    /// Unmounts whatever the engine left mounted under its roots.
    fn unmount_leftovers(&self) {
        let root = self.root.path().display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&root))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for point in points {
            let _ = Command::new("umount").args(["-l", point]).status();
        }
    }
}

impl Drop for PrivateEngine {
    fn drop(&mut self) {
        // Containers first, so their shims and mounts go with them.
        if self.child.is_some() {
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "docker -H {0} ps -aq | xargs -r docker -H {0} rm -f",
                    self.host()
                ))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        self.kill_dockerd(libc::SIGTERM);
        if let Some(pid) = self.containerd_pid() {
            // SAFETY: the containerd this engine's dockerd started.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            wait_gone(pid, Duration::from_secs(10));
        }
        self.unmount_leftovers();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

/// Polls until process `pid` is gone (at most `limit`).
fn wait_gone(pid: i32, limit: Duration) {
    let deadline = Instant::now() + limit;
    // SAFETY: signal 0 only checks that the process exists.
    while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}
