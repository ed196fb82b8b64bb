//! A real Prometheus server (Debian's `prometheus` package) on a free
//! loopback port, scraping the given targets every second; stopped (by
//! PID) on drop. Queries go through its HTTP API, as a dashboard's would.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::nats::free_port;

pub struct Prometheus {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts scraping `targets` (`HOST:PORT`, path `/metrics`) every second
    /// and waits until the server says it is ready.
    pub fn start(targets: &[String]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: genesis\n    scrape_interval: 1s\n    scrape_timeout: 1s\n\
             \x20   static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start prometheus ({e}); install it: apt-get install -y prometheus")
            });
        let server = Prometheus {
            child,
            port,
            _dir: dir,
        };
        server.wait_until_ready(Duration::from_secs(60));
        server
    }

    fn wait_until_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let url = format!("http://127.0.0.1:{}/-/ready", self.port);
            if ureq::get(&url).call().is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus was not ready within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// An instant query's result vector (`data.result`).
    pub fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let url = format!("http://127.0.0.1:{}/api/v1/query", self.port);
        let body = ureq::get(&url)
            .query("query", expr)
            .call()
            .unwrap_or_else(|e| panic!("query {expr}: {e}"))
            .body_mut()
            .read_to_string()
            .unwrap();
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["status"], "success", "query {expr}: {doc}");
        doc["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The single value of a query that yields one series, if it does.
    pub fn value(&self, expr: &str) -> Option<f64> {
        let result = self.query(expr);
        let sample = result.first()?;
        sample["value"][1].as_str()?.parse().ok()
    }

    /// Polls a query until `ok` holds for its value, or panics with the
    /// last value at the deadline.
    pub fn wait_for(&self, expr: &str, ok: impl Fn(f64) -> bool, timeout: Duration) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.value(expr);
            if let Some(v) = value.filter(|v| ok(*v)) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{expr} = {value:?}, not as expected within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the child this test spawned and has not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// `GET http://ADDR/PATH` (HTTP/1.1, connection closed by the server):
/// the status code and the body, whatever the status.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    let status = raw.split(' ').nth(1)?.parse().ok()?;
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}
