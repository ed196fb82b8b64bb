//! A throwaway PostgreSQL cluster: `initdb` into a temp dir, `pg_ctl start`
//! on a free loopback port (as the `postgres` user when the tests run as
//! root, since PostgreSQL refuses to run as root), stopped on drop.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::nats::free_port;

pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    as_postgres: bool,
}

/// The newest installed server's bin directory (Debian keeps it off PATH).
fn server_bin() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (scripts/test installs it)")
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().expect("no initdb under /usr/lib/postgresql")
}

impl PgCluster {
    pub fn start() -> PgCluster {
        let dir = tempfile::tempdir().unwrap();
        let as_postgres = unsafe { libc::geteuid() } == 0;
        if as_postgres {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        let cluster = PgCluster {
            bin: server_bin(),
            port: free_port(),
            dir,
            as_postgres,
        };
        let data = cluster.data();
        cluster.server_cmd(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "genesis",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
        );
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            cluster.port,
            cluster.dir.path().display()
        );
        let log = cluster.dir.path().join("server.log");
        cluster.server_cmd(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &options,
                "-w",
                "start",
            ],
        );
        cluster
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs a server tool, as `postgres` when we are root.
    fn server_tool(&self, tool: &str, args: &[&str]) -> std::io::Result<Output> {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args).output()
    }

    fn server_cmd(&self, tool: &str, args: &[&str]) {
        let out = self
            .server_tool(tool, args)
            .unwrap_or_else(|e| panic!("running {tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn psql(&self, db: &str) -> Command {
        let mut cmd = Command::new(self.bin.join("psql"));
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args(["-p", &self.port.to_string(), "-U", "genesis", "-d", db])
            // Timestamps come back in UTC whatever the machine's zone.
            .env("PGTZ", "UTC");
        cmd
    }

    /// Runs a SQL file with `ON_ERROR_STOP`, as a user would load an export.
    pub fn load_file(&self, db: &str, file: &Path) -> Output {
        self.psql(db).arg("-f").arg(file).output().unwrap()
    }

    /// Runs SQL (psql meta-commands allowed), panicking with psql's output on failure.
    pub fn exec(&self, db: &str, sql: &str) {
        let out = self.psql(db).args(["-c", sql]).output().unwrap();
        assert!(
            out.status.success(),
            "psql -c {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The single value `sql` selects, as psql prints it unaligned.
    pub fn scalar(&self, db: &str, sql: &str) -> String {
        self.unaligned(db, sql).trim().to_owned()
    }

    /// What `sql` prints unaligned and without headers; panics with psql's
    /// error when it fails.
    fn unaligned(&self, db: &str, sql: &str) -> String {
        let out = self
            .psql(db)
            .args(["-A", "-t", "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// One JSON document per row: `SELECT row_to_json(t) FROM table t`.
    pub fn rows(&self, db: &str, table: &str, order_by: &str) -> Vec<serde_json::Value> {
        let sql = format!("SELECT row_to_json(t) FROM {table} t ORDER BY {order_by}");
        self.unaligned(db, &sql)
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.data();
        let data = data.to_str().unwrap();
        let _ = self.server_tool("pg_ctl", &["-D", data, "-m", "immediate", "-w", "stop"]);
    }
}
