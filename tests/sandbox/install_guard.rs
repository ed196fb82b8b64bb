//! The install step of an environment as a hostile candidate would use it
//! (issue 22): its network reaches nothing of ours, it cannot fill the
//! disk, it cannot hang the runs that copy what it left, and it cannot
//! carry `pass_env` secrets into a log, an error, a record or an event.
//!
//! Real engine, real iptables, real nats-server; busybox installs, so each
//! test takes seconds. Every address targeted is one the test made: a
//! listener on the host side of genesis's install bridge, and a container
//! the test starts on that bridge.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::support::nats::NatsServer;
use crate::support::*;

const BUSYBOX: &str = "genesis/busybox:latest";

/// A home whose repo `app` has a TAP suite and an install of `install`,
/// with `extra` TOML after the repo table.
fn install_home(install: &str, extra: &str) -> TestHome {
    ensure_image("busybox");
    let home = TestHome::new(&format!(
        "default_repo = \"app\"\n[repos.app]\npath = \"{{root}}/app\"\nimage = \"{BUSYBOX}\"\n\
         test_command = \"sh run_tests.sh\"\nreport = \"tap\"\n\
         install_command = {install:?}\ninstall_inputs = [\"deps.txt\"]\n{extra}\n"
    ));
    git_repo(
        &home.root().join("app"),
        &[("run_tests.sh", TAP_SUITE), ("deps.txt", "none\n")],
    );
    home
}

/// The install logs of a home (one per install).
fn install_logs(home: &TestHome) -> String {
    let dir = home.home().join("environments");
    let mut text = String::new();
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        if entry.path().extension().is_some_and(|e| e == "log") {
            text.push_str(&std::fs::read_to_string(entry.path()).unwrap());
        }
    }
    text
}

/// Removes the environment images a home built.
fn remove_environment_images(home: &TestHome) {
    let dir = home.home().join("environments");
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        if entry.path().extension().is_some_and(|e| e == "json") {
            let v: Value = serde_json::from_slice(&std::fs::read(entry.path()).unwrap()).unwrap();
            let _ = std::process::Command::new("docker")
                .args(["rmi", "-f", v["image"].as_str().unwrap()])
                .output();
        }
    }
}

fn default_policy() -> genesis::config::EnvironmentPolicy {
    let dir = tempfile::tempdir().unwrap();
    genesis::config::Config::from_layers(
        dir.path().join("home"),
        None,
        &genesis::config::Env::default(),
    )
    .unwrap()
    .environments
}

/// Makes sure the install network and its rules exist (as an install
/// would) with `pass_env` for home `home_label`; returns the network.
fn guard_for(
    home_label: &str,
    pass_env: &[(String, String)],
) -> genesis::environment::guard::InstallNetwork {
    let policy = default_policy();
    block_on(async {
        let docker = genesis::sandbox::connect().await.unwrap();
        genesis::environment::guard::prepare(&docker, &policy, home_label, pass_env)
            .await
            .unwrap()
            .expect("the guard is on by default")
    })
}

/// A plain HTTP server the test runs on `addr`: counts connections and
/// answers each with `hello`. Stopped (its thread joined) on drop.
struct CountingServer {
    port: u16,
    addr: Ipv4Addr,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CountingServer {
    fn start(addr: Ipv4Addr) -> CountingServer {
        let listener = TcpListener::bind((addr, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopping) = (accepted.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request);
                let _ = stream.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 6\r\n\r\nhello\n");
            }
        });
        CountingServer {
            port,
            addr,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}:{}/", self.addr, self.port)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for CountingServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect((self.addr, self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A container the test runs on the install network (removed on drop).
struct Neighbour {
    name: String,
}

impl Drop for Neighbour {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
    }
}

/// A plain HTTP GET from inside the install with busybox `nc` (its
/// `wget` crashes in this image); one line saying whether `url` answered.
fn probe(label: &str, url: &str) -> String {
    let authority = url.trim_start_matches("http://").trim_end_matches('/');
    let (host, port) = authority.rsplit_once(':').unwrap();
    format!(
        "if printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {host} {port} 2>&1 | grep -q hello; \
         then echo \"{label}: REACHED\"; else echo \"{label}: refused\"; fi; "
    )
}

#[test]
fn an_install_reaches_neither_a_host_listener_nor_a_container_beside_it() {
    ensure_image("busybox");
    // The network as genesis makes it, so the test knows the host's
    // address on its bridge before the install runs (no pass_env: nothing
    // of any home's is written).
    let network = guard_for("install-guard-test", &[]);
    let gateway = network.gateway.expect("the install network has a gateway");

    let host_listener = CountingServer::start(gateway);
    // The proxy named in HTTPS_PROXY (pass_env) is the one host address
    // an install may reach: the control that the path itself works.
    let proxy = CountingServer::start(gateway);
    let neighbour = Neighbour {
        name: format!("genesis-test-neighbour-{}", std::process::id()),
    };
    docker_cli(
        None,
        &[
            "run",
            "-d",
            "--network",
            &network.name,
            "--name",
            &neighbour.name,
            BUSYBOX,
            "sh",
            "-c",
            "mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p 8080 -h /www",
        ],
    );
    let neighbour_ip = docker_cli(
        None,
        &[
            "inspect",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &neighbour.name,
        ],
    )
    .trim()
    .to_string();
    let neighbour_url = format!("http://{neighbour_ip}:8080/");
    // From the host, the neighbour answers (it is not a dead address),
    // once its httpd listens.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !raw_get(&neighbour_url) {
        assert!(
            std::time::Instant::now() < deadline,
            "the neighbour does not serve"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let install = [
        probe("host listener", &host_listener.url()),
        probe("neighbour", &neighbour_url),
        probe("proxy", &proxy.url()),
    ]
    .concat();
    let home = install_home(&install, "[environments]\npass_env = [\"HTTPS_PROXY\"]\n");
    let built = home
        .command()
        .env("HTTPS_PROXY", format!("http://{}:{}", gateway, proxy.port))
        .args(["env", "build", "app"])
        .output()
        .unwrap();
    let log = install_logs(&home);
    assert!(
        built.status.success(),
        "{}\n{log}",
        String::from_utf8_lossy(&built.stderr)
    );
    assert!(
        log.contains("proxy: REACHED"),
        "the proxy exception does not hold:\n{log}"
    );
    assert!(log.contains("host listener: refused"), "{log}");
    assert!(log.contains("neighbour: refused"), "{log}");
    assert_eq!(
        host_listener.accepted(),
        0,
        "a connection reached the host listener"
    );
    assert!(proxy.accepted() >= 1);

    // The host itself still reaches its listener.
    assert!(
        raw_get(&host_listener.url()),
        "the host cannot reach its own listener"
    );
    assert_eq!(host_listener.accepted(), 1);

    // doctor's line says so.
    let (ok, line, _) = block_on(async {
        let docker = genesis::sandbox::connect().await.unwrap();
        genesis::environment::guard::doctor_line(Some(&docker), &default_policy()).await
    });
    assert!(ok && line.contains("rules in place"), "{line}");

    // Drop this home's proxy exception from the shared chains.
    guard_for(&genesis::sandbox::home_label(&home.home()), &[]);
    assert!(home.containers_left().is_empty());
    remove_environment_images(&home);
}

/// `GET url` over a plain socket; true when the answer says hello.
fn raw_get(url: &str) -> bool {
    let authority = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let Ok(addr) = authority.parse() else {
        return false;
    };
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.write_all(b"GET / HTTP/1.0\r\n\r\n");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.contains("hello")
}

#[test]
fn an_install_writing_past_its_disk_cap_is_stopped_and_the_experiment_fails() {
    // Writes 48 MB, then idles: the watchdog, not the time limit, ends it.
    let home = install_home(
        "dd if=/dev/zero of=/root/filler bs=1M count=48 2>/dev/null && echo written; sleep 600",
        "[environments]\ndisk_mb = 16\ndisk_check_ms = 100\ntimeout_ms = 60000\n",
    );
    let repo = home.root().join("app");
    let patch = diff_for(&repo, &[("NOTES", Some("x\n"))]);
    let out = home.run_request(&request("disk-capped", "high", &["NOTES"], &patch));
    let r = result_json(&out);
    assert_eq!(r["status"], "failed", "{r:#}");
    assert_eq!(r["error_kind"], "environment_failed", "{r:#}");
    let error = r["error"].as_str().unwrap();
    assert!(
        error.contains("past the 16 MB cap ([environments] disk_mb), and was killed"),
        "{error}"
    );
    assert!(
        error.contains("written"),
        "the log tail is missing: {error}"
    );

    // An install that writes past the cap and ends before a measurement
    // is caught before its layer becomes an image.
    let quick = install_home(
        "dd if=/dev/zero of=/root/filler bs=1M count=48 2>/dev/null",
        "[environments]\ndisk_mb = 16\ndisk_check_ms = 600000\n",
    );
    let built = quick.run_args(&["env", "build", "app"]);
    let stderr = String::from_utf8_lossy(&built.stderr);
    assert!(!built.status.success(), "{stderr}");
    assert!(
        stderr.contains("past the 16 MB cap ([environments] disk_mb); no image was made"),
        "{stderr}"
    );
    for h in [&home, &quick] {
        assert!(h.containers_left().is_empty());
        assert!(!h.home().join("environments").read_dir().unwrap().any(|e| e
            .unwrap()
            .path()
            .extension()
            .is_some_and(|x| x == "json")));
    }
}

#[test]
fn copying_what_an_install_left_is_bounded_by_the_install_time_limit() {
    // The install (root in the image) leaves a `sh` first on PATH that
    // never ends: the step that copies its workspace into each run (an
    // exec of `sh -c "cp -a …"`) would hang forever.
    let home = install_home(
        "mkdir -p deps && echo lib > deps/lib.txt && mkdir -p /usr/local/bin && \
         printf '#!/bin/busybox sh\\nexec sleep 600\\n' > /usr/local/bin/sh && chmod 755 /usr/local/bin/sh",
        "[environments]\ntimeout_ms = 5000\n",
    );
    let repo = home.root().join("app");
    let patch = diff_for(&repo, &[("NOTES", Some("x\n"))]);
    let out = home.run_request(&request("copy-bounded", "high", &["NOTES"], &patch));
    let r = result_json(&out);
    assert_eq!(r["status"], "failed", "{r:#}");
    assert_eq!(r["error_kind"], "environment_failed", "{r:#}");
    let error = r["error"].as_str().unwrap();
    assert!(
        error.contains("copying the environment's workspace files")
            && error
                .contains("ran past 5000 ms, the install's time limit ([environments] timeout_ms)"),
        "{error}"
    );
    assert!(home.containers_left().is_empty());
    remove_environment_images(&home);
}

/// Every file under `dir`, as (path, bytes).
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                out.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_env_values_never_reach_a_log_an_error_a_record_or_an_event() {
    use futures_util::StreamExt;
    // Two values, one inside the other; printed on their own lines, and
    // 12,000 times in one line of 300 KB that the log pump cuts in pieces.
    let short = "gns-secret-7f3a9c";
    let long = "gns-secret-7f3a9c-and-its-tail-51e0";
    let install = "echo \"token is $GENESIS_TEST_TOKEN\"; echo \"long is $GENESIS_TEST_LONG\"; \
                   i=0; while [ $i -lt 12000 ]; do printf '%s' \"$GENESIS_TEST_TOKEN\"; i=$((i+1)); done; echo; \
                   echo \"again $GENESIS_TEST_LONG$GENESIS_TEST_TOKEN\"; exit 3";
    let nats = NatsServer::start(false);
    let home = install_home(
        install,
        "[environments]\npass_env = [\"GENESIS_TEST_TOKEN\", \"GENESIS_TEST_LONG\"]\n",
    );
    let mut serve = ServeProcess::spawn_with_env(
        &home,
        &nats.url(),
        &[("GENESIS_TEST_TOKEN", short), ("GENESIS_TEST_LONG", long)],
    );
    serve.wait_for_line("genesis ready", Duration::from_secs(60));
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut failed = client
        .subscribe("agent.events.experiment.failed.redacted")
        .await
        .unwrap();
    let repo = home.root().join("app");
    let patch = diff_for(&repo, &[("NOTES", Some("x\n"))]);
    client
        .publish(
            "agent.events.experiment.request.test-instance",
            request("redacted", "high", &["NOTES"], &patch)
                .to_string()
                .into(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(120), failed.next())
        .await
        .expect("no failed event within 120 s")
        .unwrap();
    let event_text = String::from_utf8_lossy(&event.payload).into_owned();
    let doc: Value = serde_json::from_str(&event_text).unwrap();
    assert_eq!(doc["error_kind"], "environment_failed", "{doc:#}");
    let error = doc["error"].as_str().unwrap();
    assert!(error.contains("exited with status 3"), "{error}");
    assert!(
        error.contains("[redacted GENESIS_TEST_LONG][redacted GENESIS_TEST_TOKEN]"),
        "{error}"
    );
    assert!(
        !event_text.contains(short),
        "the event carries the secret:\n{event_text}"
    );
    serve.signal(libc::SIGTERM);
    assert!(serve.wait().success());

    // The stored record.
    let shown = home.run_args(&["show", "redacted", "--json"]);
    let record = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    assert!(record.contains("[redacted GENESIS_TEST_TOKEN]"), "{record}");
    assert!(!record.contains(short), "the record carries the secret");

    // Every file genesis wrote: the install log says what was there.
    let log = install_logs(&home);
    assert!(
        log.contains("token is [redacted GENESIS_TEST_TOKEN]"),
        "{log}"
    );
    assert!(
        log.contains("long is [redacted GENESIS_TEST_LONG]"),
        "{log}"
    );
    assert!(log.matches("[redacted GENESIS_TEST_TOKEN]").count() > 12000);
    let files = files_under(&home.home());
    assert!(!files.is_empty());
    for (path, bytes) in &files {
        assert!(
            !contains(bytes, short),
            "{} carries the secret",
            path.display()
        );
    }
    assert!(home.containers_left().is_empty());
}
