//! Helpers shared by the integration tests: a throwaway GENESIS_HOME, git
//! repos made on the fly, the real `genesis` binary, and checks that nothing
//! leaked (containers, files outside the home).
//!
//! Each test binary (`tests/<group>/main.rs`) and the benches that use
//! these helpers compile all of them, and none uses all: `service` runs no
//! sandbox probe, `faults` starts no NATS server, the benches take a few.
//! Hence the allow below: unused in one binary is not dead. What no binary
//! and no bench uses is removed (found by building each with the allow
//! lifted and keeping what every one of them called unused).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

pub mod engine;
pub mod nats;
pub mod pg;
pub mod prometheus;
pub mod tmpfs;

/// The binary under test.
pub fn genesis_bin() -> &'static str {
    env!("CARGO_BIN_EXE_genesis")
}

/// A temp GENESIS_HOME with a config file.
pub struct TestHome {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl TestHome {
    /// `config` is the text of genesis.toml; it may refer to `{root}`, the
    /// temp dir, for repo paths.
    pub fn new(config: &str) -> TestHome {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = config.replace("{root}", &dir.path().display().to_string());
        let path = dir.path().join("genesis.toml");
        std::fs::write(&path, text).expect("write config");
        TestHome { dir, config: path }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// GENESIS_HOME (a subfolder, so the repos beside it are "outside").
    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(genesis_bin());
        cmd.env("GENESIS_HOME", self.home())
            .env("GENESIS_LOG", "warn")
            .arg("--config")
            .arg(&self.config)
            .current_dir(self.root());
        cmd
    }

    /// Runs genesis with a request on stdin.
    pub fn run_request(&self, request: &serde_json::Value) -> Output {
        self.run_stdin(&["run", "-"], request.to_string().as_bytes())
    }

    pub fn run_stdin(&self, args: &[&str], stdin: &[u8]) -> Output {
        use std::io::Write;
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn genesis");
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().expect("wait genesis")
    }

    pub fn run_args(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run genesis")
    }

    /// Containers labelled with this home, via the Docker API.
    pub fn containers_left(&self) -> Vec<(String, String)> {
        let label = genesis::sandbox::home_label(&self.home());
        block_on(async {
            let docker = genesis::sandbox::connect().await.expect("docker");
            genesis::sandbox::labelled_containers(&docker, Some(&label), None)
                .await
                .expect("list containers")
        })
    }
}

/// Parses stdout of `genesis run` as JSON.
pub fn result_json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}); status {:?}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Runs a future to completion on a runtime of its own, on its own thread,
/// so it works from plain tests and from inside `#[tokio::test]` alike.
pub fn block_on<F>(f: F) -> F::Output
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime")
                    .block_on(f)
            })
            .join()
            .expect("block_on thread")
    })
}

static IMAGE_LOCK: Mutex<()> = Mutex::new(());

/// Makes sure a built-in image exists, building it (offline) if not.
pub fn ensure_image(name: &str) {
    let _guard = IMAGE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let defs = genesis::images::definitions(None).unwrap();
    let (_, def) = defs.iter().find(|(n, _)| n == name).expect("known image");
    let present = block_on(async {
        let docker = genesis::sandbox::connect()
            .await
            .expect("docker engine reachable");
        genesis::images::exists(&docker, &def.tag).await
    });
    if present {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let status = Command::new(genesis_bin())
        .env("GENESIS_HOME", home.path())
        .args(["images", "build", name])
        .status()
        .expect("run genesis images build");
    assert!(status.success(), "genesis images build {name} failed");
}

/// `docker [-H HOST] ARGS` (the machine's engine without a host), returning
/// stdout; panics with stderr on failure.
pub fn docker_cli(host: Option<&str>, args: &[&str]) -> String {
    let mut command = Command::new("docker");
    if let Some(host) = host {
        command.arg("-H").arg(host);
    }
    let out = command.args(args).output().unwrap();
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Copies a directory of the project (a fixture, an example) to `dest`
/// and makes it a git repo with one commit.
pub fn git_copy(src: &Path, dest: &Path) {
    let status = Command::new("cp")
        .arg("-R")
        .arg(src)
        .arg(dest)
        .status()
        .unwrap();
    assert!(status.success(), "copying {}", src.display());
    git(dest, &["init", "-q", "-b", "main"]);
    git(dest, &["add", "-A"]);
    commit_all(dest, "init");
}

/// Runs `script` as the suite of one sandbox on the machine's engine
/// (a disk of `limits.disk_mb` when that is not 0) and returns the outcome.
pub fn run_script_in_sandbox(
    name: &str,
    image: &str,
    limits: genesis::config::Limits,
    script: &str,
) -> genesis::sandbox::RunOutcome {
    run_script_on(None, "", name, image, limits, script)
}

/// [`run_script_in_sandbox`] on the engine at `socket` (None: the
/// machine's) under OCI `runtime` ("" = the engine's default).
pub fn run_script_on(
    socket: Option<&Path>,
    runtime: &str,
    name: &str,
    image: &str,
    limits: genesis::config::Limits,
    script: &str,
) -> genesis::sandbox::RunOutcome {
    use genesis::sandbox::{CappedLog, Role, SandboxBuilder};
    let dir = tempfile::tempdir().unwrap();
    let label = genesis::sandbox::home_label(dir.path());
    let owner = genesis::snapshot::Owner {
        uid: 10001,
        gid: 10001,
    };
    let mut policy = genesis::config::Config::from_layers(
        dir.path().join("home"),
        None,
        &genesis::config::Env::default(),
    )
    .unwrap()
    .sandbox;
    policy.runtime = runtime.into();
    block_on(async {
        let docker = match socket {
            Some(path) => bollard::Docker::connect_with_unix(
                &path.display().to_string(),
                120,
                bollard::API_DEFAULT_VERSION,
            )
            .unwrap(),
            None => genesis::sandbox::connect().await.unwrap(),
        };
        let sandbox = SandboxBuilder::from_policy(&policy, name, Role::Candidate, image, limits)
            .home_label(&label)
            .disk(dir.path().join("scratch"), limits.disk_mb, owner)
            .command("app", "", script)
            .create(&docker)
            .await
            .unwrap();
        sandbox.upload_skeleton(owner).await.unwrap();
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_uid(10001);
        h.set_gid(10001);
        h.set_size(0);
        tar.append_data(&mut h, "app/", std::io::empty()).unwrap();
        sandbox
            .upload("/workspace", tar.into_inner().unwrap())
            .await
            .unwrap();
        let log = CappedLog::create(&dir.path().join("log"), 1 << 20).unwrap();
        let outcome = sandbox
            .run(std::time::Duration::from_secs(60), log)
            .await
            .unwrap();
        sandbox.remove().await.unwrap();
        assert!(
            !dir.path().join("scratch").exists()
                || std::fs::read_dir(dir.path().join("scratch"))
                    .unwrap()
                    .next()
                    .is_none(),
            "the run's disk was not released"
        );
        outcome
    })
}

/// What the isolation probe prints (see [`PROBE_EXPECTED`]).
pub const PROBE_SCRIPT: &str = r#"
echo "uid=$(id -u)"
grep -E '^(CapEff|NoNewPrivs):' /proc/self/status | tr -d '\t '
echo "mem=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max)"
echo "swap=$(cat /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes 2>/dev/null || echo n/a)"
echo "pids=$(cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max)"
echo "cpu=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null)"
echo "nets=$(ls /sys/class/net | tr '\n' ' ')"
touch /etc/genesis-probe 2>/dev/null && echo "etc=writable" || echo "etc=readonly"
touch /usr/genesis-probe 2>/dev/null && echo "usr=writable" || echo "usr=readonly"
touch /workspace/app/probe && echo "workspace=writable"
touch /genesis/out/probe && echo "out=writable"
touch /tmp/probe && echo "tmp=writable"
[ -e /var/run/docker.sock ] && echo "sock=present" || echo "sock=absent"
"#;

/// The probe's lines under limits cpus 0.5, memory 128 MB, pids 50.
pub const PROBE_EXPECTED: &[&str] = &[
    "CapEff:0000000000000000",
    "NoNewPrivs:1",
    "mem=134217728",
    "swap=134217728",
    "pids=50",
    "cpu=50000",
    "nets=lo ",
    "etc=readonly",
    "usr=readonly",
    "workspace=writable",
    "out=writable",
    "tmp=writable",
    "sock=absent",
];

/// The limits [`PROBE_EXPECTED`] is written for.
pub fn probe_limits(disk_mb: u64) -> genesis::config::Limits {
    genesis::config::Limits {
        cpus: 0.5,
        memory_mb: 128,
        pids: 50,
        timeout: std::time::Duration::from_secs(30),
        network: false,
        install_changes: true,
        disk_mb,
        patch_mb: 64,
    }
}

/// Commits what is staged, with a fixed test identity.
pub fn commit_all(path: &Path, message: &str) {
    git(
        path,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@localhost",
            "commit",
            "-q",
            "-m",
            message,
        ],
    );
}

/// Creates a git repo with the given files and one commit; returns its path.
pub fn git_repo(path: &Path, files: &[(&str, &str)]) -> PathBuf {
    std::fs::create_dir_all(path).unwrap();
    for (name, content) in files {
        let file = path.join(name);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, content).unwrap();
    }
    git(path, &["init", "-q", "-b", "main"]);
    git(path, &["add", "-A"]);
    commit_all(path, "init");
    path.to_path_buf()
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    // safe.directory: some tests chown repos to another user.
    let out = Command::new("git")
        .args(["-c", "safe.directory=*"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A unified diff turning `repo`'s committed files into `changes`, made by
/// git in a scratch copy so the repo itself is never touched.
pub fn diff_for(repo: &Path, changes: &[(&str, Option<&str>)]) -> String {
    let scratch = tempfile::tempdir().unwrap();
    let copy = scratch.path().join("copy");
    let out = Command::new("git")
        .args(["clone", "-q"])
        .arg(repo)
        .arg(&copy)
        .output()
        .unwrap();
    assert!(out.status.success());
    for (name, content) in changes {
        let file = copy.join(name);
        match content {
            Some(text) => {
                std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                std::fs::write(&file, text).unwrap();
            }
            None => std::fs::remove_file(&file).unwrap(),
        }
    }
    git(&copy, &["add", "-A"]);
    git(&copy, &["diff", "--cached"])
}

/// Digest of every file, symlink and mode under `root` (including `.git`),
/// to prove a directory was not modified.
pub fn tree_digest(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    use std::os::unix::fs::MetadataExt;
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let rel = path.strip_prefix(root).unwrap().display().to_string();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.file_type().is_symlink() {
            out.insert(
                rel,
                format!("link {}", std::fs::read_link(&path).unwrap().display()),
            );
        } else if meta.is_dir() {
            out.insert(rel.clone(), format!("dir {:o}", meta.mode()));
            walk(root, &path, out);
        } else {
            let bytes = std::fs::read(&path).unwrap();
            out.insert(
                rel,
                format!(
                    "file {:o} {} {:x?}",
                    meta.mode(),
                    bytes.len(),
                    &bytes[..bytes.len().min(64)]
                ) + &format!(" {}", simple_hash(&bytes)),
            );
        }
    }
}

fn simple_hash(bytes: &[u8]) -> u64 {
    // FNV-1a: enough to notice any change in a test.
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

/// A request with the given id, repo and patch.
pub fn request(id: &str, risk: &str, files: &[&str], patch: &str) -> serde_json::Value {
    serde_json::json!({
        "experiment_id": id,
        "instance_id": "test-instance",
        "experiment_type": "test",
        "description": "integration test",
        "risk_level": risk,
        "estimated_impact": 0.1,
        "changes": {"files": files, "description": "", "patch": patch},
        "rollback_plan": "none",
        "timeout_ms": 120000
    })
}

/// A TAP suite of three passing tests: the cheapest real suite.
pub const TAP_SUITE: &str =
    "echo 1..3\necho ok 1 - adds\necho ok 2 - subtracts\necho ok 3 - divides\n";

/// genesis.toml for `genesis serve` tests: the busybox image, [`TAP_SUITE`]
/// in `{root}/app`, quick JetStream progress acks and redelivery.
pub fn serve_config(max_concurrent: usize, jetstream: bool) -> String {
    serve_config_acking(max_concurrent, jetstream, 5000)
}

/// As [`serve_config`], with JetStream's ack wait (progress acks go out ten
/// times per ack wait).
pub fn serve_config_acking(max_concurrent: usize, jetstream: bool, ack_wait_ms: u64) -> String {
    let progress_ack_ms = ack_wait_ms / 10;
    format!(
        r#"
default_repo = "app"
max_concurrent = {max_concurrent}
drain_timeout_ms = 60000

[nats]
jetstream = {jetstream}
progress_ack_ms = {progress_ack_ms}
ack_wait_ms = {ack_wait_ms}

[repos.app]
path = "{{root}}/app"
image = "genesis/busybox:latest"
test_command = "sh run_tests.sh"
report = "tap"
"#
    )
}

/// A home for `genesis serve` with [`serve_config`] and its app repo.
pub fn serve_home(max_concurrent: usize, jetstream: bool) -> TestHome {
    serve_home_with(&serve_config(max_concurrent, jetstream))
}

/// A home with this config text (see [`serve_config`]) and the app repo.
pub fn serve_home_with(config: &str) -> TestHome {
    ensure_image("busybox");
    let home = TestHome::new(config);
    git_repo(&home.root().join("app"), &[("run_tests.sh", TAP_SUITE)]);
    home
}

/// A request whose suite first sleeps `seconds`, so it is seen running.
pub fn sleepy_request(id: &str, seconds: f64) -> serde_json::Value {
    let mut r = request(id, "low", &[], "");
    r["test_command"] = format!("sleep {seconds}; sh run_tests.sh").into();
    r
}

/// A `genesis serve` process; killed (by PID) on drop if still running.
pub struct ServeProcess {
    pub child: Option<std::process::Child>,
    /// Log lines from stderr, as they arrive.
    pub lines: std::sync::mpsc::Receiver<String>,
    /// Lines already taken from `lines` (by the waits), for later counting.
    pub history: std::sync::Mutex<Vec<String>>,
}

impl ServeProcess {
    /// Starts `genesis serve` and waits for its "genesis ready" log line.
    pub fn start(home: &TestHome, nats_url: &str) -> ServeProcess {
        let serve = ServeProcess::spawn(home, nats_url);
        serve.wait_for_line("genesis ready", std::time::Duration::from_secs(60));
        serve
    }

    /// Starts `genesis serve` without waiting for anything.
    pub fn spawn(home: &TestHome, nats_url: &str) -> ServeProcess {
        ServeProcess::spawn_with_env(home, nats_url, &[])
    }

    /// As [`ServeProcess::spawn`], with more environment variables (e.g.
    /// `GENESIS_NATS_PASSWORD`).
    pub fn spawn_with_env(home: &TestHome, nats_url: &str, env: &[(&str, &str)]) -> ServeProcess {
        use std::io::BufRead;
        let mut child = home
            .command()
            .envs(env.iter().copied())
            .env("GENESIS_NATS_URL", nats_url)
            .env("GENESIS_LOG", "info")
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn genesis serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        ServeProcess {
            child: Some(child),
            lines: rx,
            history: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Blocks until a stderr line contains `needle`; panics with the log on timeout.
    pub fn wait_for_line(&self, needle: &str, timeout: std::time::Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => {
                    self.history.lock().unwrap().push(line.clone());
                    return line;
                }
                Ok(line) => {
                    self.history.lock().unwrap().push(line.clone());
                    seen.push(line)
                }
                Err(_) => panic!(
                    "no log line with {needle:?} within {timeout:?}; log:\n{}",
                    seen.join("\n")
                ),
            }
        }
    }

    /// Blocks until `n` lines containing `needle` were logged, counting
    /// those an earlier wait already took.
    pub fn wait_for_count(&self, needle: &str, n: usize, timeout: std::time::Duration) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let count = self
                .history
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains(needle))
                .count();
            if count >= n {
                return;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.history.lock().unwrap().push(line),
                Err(_) => panic!(
                    "{count} of {n} log lines with {needle:?} within {timeout:?}; log:\n{}",
                    self.history.lock().unwrap().join("\n")
                ),
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the child this test spawned.
        unsafe { libc::kill(self.pid(), sig) };
    }

    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.take().expect("running").wait().unwrap()
    }

    /// Whether the process is still running (it has not exited on its own).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
