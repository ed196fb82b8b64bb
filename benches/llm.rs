//! What the LLM endpoint costs (figures in the README, "LLM endpoint"):
//!
//! 1. **A run whose suite makes no call**, with `llm_stub` on and off:
//!    one experiment end to end (baseline cached, so one container each),
//!    20 of each, alternated A B A B so machine drift hits both alike;
//!    the medians and the median of the pairwise differences.
//! 2. **Per call**: 1,000 non-streamed chat calls over one keep-alive
//!    connection to the endpoint, against a plain loopback HTTP server
//!    (the same hyper stack) answering the same bytes without reading,
//!    counting or recording anything; alternated in blocks of 100. Both
//!    listen on the host's loopback here: a socket in a sandbox's
//!    namespace is the same kernel path, only reached from another one.
//!
//! Run with `cargo bench --bench llm`. Part 1 needs the Docker engine and
//! the busybox test image (`genesis images build busybox`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use genesis::config::{Config, Env};
use genesis::contract::Request;
use genesis::runner::{NoProgress, Runner};
use genesis::sandbox::llm::{Answers, LlmEndpoint, LlmSetup};
use genesis::store::{Status, Store};

const IMAGE: &str = "genesis/busybox:latest";
const SUITE: &str = "echo 1..3; echo ok 1 - a; echo ok 2 - b; echo ok 3 - c";
const ROUNDS: usize = 20;
const CALLS: usize = 1000;
const BLOCK: usize = 100;

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    no_call_runs(&rt);
    per_call_overhead(&rt);
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn git(dir: &std::path::Path, args: &[&str]) {
    let ok = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(ok.success());
}

fn runner(rt: &tokio::runtime::Runtime, dir: &std::path::Path, stub: bool) -> Runner {
    let text = format!(
        "default_repo = \"app\"\n[repos.app]\npath = \"{}/app\"\nimage = \"{IMAGE}\"\ntest_command = \"sh run_tests.sh\"\nreport = \"tap\"\nllm_stub = {stub}\n",
        dir.display()
    );
    let home = dir.join(format!("home-{stub}"));
    let config = Arc::new(
        Config::from_layers(home, Some((dir.join("g.toml"), text)), &Env::default()).unwrap(),
    );
    let store = Store::open(&config.store_path()).unwrap();
    rt.block_on(Runner::new(config, store)).unwrap()
}

/// Part 1: the endpoint's cost to a run whose suite never calls it.
fn no_call_runs(rt: &tokio::runtime::Runtime) {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("run_tests.sh"), format!("{SUITE}\n")).unwrap();
    git(&app, &["init", "-q", "-b", "main"]);
    git(&app, &["add", "-A"]);
    git(
        &app,
        &[
            "-c",
            "user.name=b",
            "-c",
            "user.email=b@localhost",
            "commit",
            "-q",
            "-m",
            "init",
        ],
    );
    let with = runner(rt, dir.path(), true);
    let without = runner(rt, dir.path(), false);
    let mut n = 0u64;
    let mut run = |runner: &Runner| {
        n += 1;
        let request = Request::parse(
            serde_json::json!({
                "experiment_id": format!("bench-{n}"), "instance_id": "bench",
                "experiment_type": "bench", "risk_level": "low", "changes": {"files": []}
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let started = Instant::now();
        rt.block_on(async {
            runner.accept(&request, Status::Queued).await.unwrap();
            assert!(runner.run(&request, &NoProgress).await.is_success());
        });
        started.elapsed().as_secs_f64() * 1000.0
    };
    // Warm both baseline caches, so each measured run is one container.
    run(&with);
    run(&without);
    let (mut on, mut off, mut diff) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let a = run(&with);
        let b = run(&without);
        on.push(a);
        off.push(b);
        diff.push(a - b);
    }
    println!(
        "no-call run, {ROUNDS} each alternated: llm_stub on {:.1} ms, off {:.1} ms (medians); median difference {:+.1} ms",
        median(&mut on),
        median(&mut off),
        median(&mut diff)
    );
}

/// Part 2: per-call latency, endpoint against a plain server.
fn per_call_overhead(rt: &tokio::runtime::Runtime) {
    let _guard = rt.enter();
    let config = Config::from_layers("/nonexistent".into(), None, &Env::default()).unwrap();
    let setup = LlmSetup {
        policy: config.llm.clone(),
        answers: Arc::new(Answers::fixed(&config.llm.answer)),
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let endpoint_port = listener.local_addr().unwrap().port();
    let endpoint = LlmEndpoint::serve(listener, setup).unwrap();

    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"What is the capital of France?"}]}"#;
    let mut endpoint_client = Client::connect(endpoint_port);
    // The same answer bytes, for the plain server to send back.
    let answer = endpoint_client.call(body);
    let plain_port = rt.block_on(plain_server(answer));
    let mut plain_client = Client::connect(plain_port);
    plain_client.call(body);

    let (mut with, mut plain) = (Vec::new(), Vec::new());
    for _ in 0..CALLS / BLOCK {
        with.extend(endpoint_client.timed(body, BLOCK));
        plain.extend(plain_client.timed(body, BLOCK));
    }
    let record = rt.block_on(endpoint.finish());
    assert_eq!(record.tally.calls as usize, CALLS + 1);
    let (m_with, m_plain) = (median(&mut with), median(&mut plain));
    println!(
        "{CALLS} non-streamed chat calls, one keep-alive connection: endpoint {:.3} ms, plain server {:.3} ms (medians per call); overhead {:.3} ms",
        m_with,
        m_plain,
        m_with - m_plain
    );
}

/// A loopback HTTP server that answers every request with `answer`.
async fn plain_server(answer: Vec<u8>) -> u16 {
    use http_body_util::{BodyExt, Full};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let answer = bytes::Bytes::from(answer);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let answer = answer.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let answer = answer.clone();
                        async move {
                            let _ = request.into_body().collect().await;
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(answer))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    port
}

/// A minimal HTTP/1.1 keep-alive client: the same bytes to both servers.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    port: u16,
}

impl Client {
    fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Client {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
            port,
        }
    }

    /// One POST; returns the response body.
    fn call(&mut self, body: &str) -> Vec<u8> {
        write!(
            self.writer,
            "POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            self.port,
            body.len()
        )
        .unwrap();
        let mut length = 0;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut answer = vec![0; length];
        self.reader.read_exact(&mut answer).unwrap();
        answer
    }

    /// Milliseconds of each of `n` calls.
    fn timed(&mut self, body: &str, n: usize) -> Vec<f64> {
        (0..n)
            .map(|_| {
                let started = Instant::now();
                self.call(body);
                started.elapsed().as_secs_f64() * 1000.0
            })
            .collect()
    }
}
