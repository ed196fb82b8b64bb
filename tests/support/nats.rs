//! A real nats-server on a free loopback port, stopped (by PID) on drop.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

use std::time::{Duration, Instant};

pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    pub store_dir: tempfile::TempDir,
    jetstream: bool,
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
        let port = free_port();
        let store_dir = tempfile::tempdir().unwrap();
        let mut server = NatsServer {
            child: None,
            port,
            store_dir,
            jetstream,
        };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        // A config file, because max_payload has no flag: the contract's
        // 4 MiB request limit is tested with messages larger than NATS's 1 MB default.
        let mut conf = format!("listen: 127.0.0.1:{}\nmax_payload: 8388608\n", self.port);
        if self.jetstream {
            conf.push_str(&format!(
                "jetstream {{ store_dir: \"{}\" }}\n",
                self.store_dir.path().display()
            ));
        }
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
        self.stop();
        self.spawn();
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
