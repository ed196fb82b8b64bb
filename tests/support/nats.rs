//! A real nats-server on a free loopback port, stopped (by PID) on drop.
//!
//! Fault tests kill it (`SIGKILL`, by PID) and start it again on the same
//! port with the same JetStream store directory, so streams, consumers and
//! unacknowledged messages survive as they would on a real host; a server
//! may also be reserved (port and store chosen) and started later, for a
//! client that must wait for it. [`NatsServer::start_with`] adds lines of
//! the test's own to the server's config file (authorization, TLS).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures_util::StreamExt;

pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    pub store_dir: tempfile::TempDir,
    jetstream: bool,
    /// Lines appended to the server's config file.
    extra_conf: String,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl NatsServer {
    pub fn start(jetstream: bool) -> NatsServer {
        let mut server = NatsServer::reserve(jetstream);
        server.launch();
        server
    }

    /// A core-NATS server whose config file also holds `extra_conf` (e.g.
    /// an `authorization { … }` or `tls { … }` block).
    pub fn start_with(extra_conf: &str) -> NatsServer {
        let mut server = NatsServer::reserve(false);
        server.extra_conf = extra_conf.to_owned();
        server.launch();
        server
    }

    /// A port and a store directory, with no server yet: [`NatsServer::launch`]
    /// starts it.
    pub fn reserve(jetstream: bool) -> NatsServer {
        NatsServer {
            child: None,
            port: free_port(),
            store_dir: tempfile::tempdir().unwrap(),
            jetstream,
            extra_conf: String::new(),
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server on this port and store, and waits until it listens.
    pub fn launch(&mut self) {
        assert!(self.child.is_none(), "nats-server is already running");
        // A config file, because max_payload has no flag: the contract's
        // 4 MiB request limit is tested with messages larger than NATS's 1 MB default.
        let mut conf = format!("listen: 127.0.0.1:{}\nmax_payload: 8388608\n", self.port);
        if self.jetstream {
            conf.push_str(&format!(
                "jetstream {{ store_dir: \"{}\" }}\n",
                self.store_dir.path().display()
            ));
        }
        conf.push_str(&self.extra_conf);
        let conf_path = self.store_dir.path().join("nats.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start nats-server ({e}); install it: apt-get install -y nats-server")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server (SIGKILL) and starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// `kill -9` by PID: no goodbye to clients, nothing flushed beyond what
    /// the server already wrote.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the child this test spawned and has not reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            let _ = child.wait();
        }
    }

    pub fn stop(&mut self) {
        self.kill();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A client that keeps reconnecting forever, also to a server that is not up yet.
pub async fn patient_client(url: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connect(url)
        .await
        .unwrap()
}

/// Waits until JetStream answers an account-info request without an error
/// (after a start or restart it recovers its streams before it does), or
/// panics at the deadline.
pub async fn wait_for_jetstream(client: &async_nats::Client, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let answer = client.request("$JS.API.INFO", "".into()).await;
        let last = match answer {
            Ok(msg) => match serde_json::from_slice::<serde_json::Value>(&msg.payload) {
                Ok(doc) if doc.get("error").is_none() => return,
                Ok(doc) => doc.to_string(),
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "JetStream did not answer within {timeout:?}: {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Subjects genesis answers on (contract §3).
pub const RESULT_SUBJECTS: [&str; 2] = [
    "agent.events.experiment.completed.*",
    "agent.events.experiment.failed.*",
];

/// The shortest duplicate window nats-server accepts.
const SHORTEST_DUPLICATE_WINDOW: Duration = Duration::from_millis(100);

/// A stream of the test's own that keeps every answer on the server's disk,
/// so none is missed while the test's client reconnects. Its duplicate
/// window is the shortest the server takes, so a result published twice
/// (even with the same `Nats-Msg-Id`) is counted twice unless both copies
/// came within 100 ms.
pub async fn capture_results(js: &jetstream::Context, name: &str) {
    js.create_stream(jetstream::stream::Config {
        name: name.into(),
        subjects: RESULT_SUBJECTS.iter().map(|s| (*s).to_owned()).collect(),
        duplicate_window: SHORTEST_DUPLICATE_WINDOW,
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("creating the result stream {name}: {e}"));
}

/// How many messages a stream holds.
pub async fn stream_len(js: &jetstream::Context, name: &str) -> u64 {
    let mut stream = js.get_stream(name).await.unwrap();
    stream.info().await.unwrap().state.messages
}

/// Every message of a stream, as (subject, JSON body), oldest first.
pub async fn stream_messages(
    js: &jetstream::Context,
    name: &str,
) -> Vec<(String, serde_json::Value)> {
    let total = stream_len(js, name).await as usize;
    let stream = js.get_stream(name).await.unwrap();
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut out = Vec::with_capacity(total);
    while out.len() < total {
        let msg = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("reading the result stream")
            .expect("result stream ended")
            .expect("result stream message");
        let body = serde_json::from_slice(&msg.payload).unwrap_or(serde_json::Value::Null);
        out.push((msg.subject.to_string(), body));
    }
    out
}

/// State of a durable consumer: (messages not yet delivered, delivered but
/// not acknowledged).
pub async fn consumer_backlog(
    js: &jetstream::Context,
    stream: &str,
    consumer: &str,
) -> (u64, usize) {
    let stream = js.get_stream(stream).await.unwrap();
    let mut consumer: jetstream::consumer::PullConsumer =
        stream.get_consumer(consumer).await.unwrap();
    let info = consumer.info().await.unwrap();
    (info.num_pending, info.num_ack_pending)
}
