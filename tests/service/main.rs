//! `genesis serve` and everything it talks to over NATS, against real
//! nats-servers this binary starts: round trips, limits, duplicates,
//! restarts and draining (`service`), authentication and TLS (`nats_auth`),
//! NATS and multi-host faults (`faults_nats`), what the soak found
//! (`soak_findings`), scheduled jobs (`jobs`), Prometheus and `/readyz`
//! (`operations`), and the NATS peers genesis asks for analysis and for
//! framework detection (`analysis_peer`, `framework_peer`).
//!
//! Grouped because each of these starts its own nats-server (on a free
//! loopback port) and most their own `genesis serve`. One binary of modules
//! rather than one per file, because each binary links genesis again, which
//! made the suite's build slow on a 2-core CI.
//!
//! Libtest runs two of these tests at once, as each former file ran its
//! own. Nothing is shared between tests: each has its servers, ports,
//! homes and streams; the private Docker engine of `soak_findings` has its
//! own socket, roots and bridge (named by process and counter), and the
//! full-home tests a tmpfs of their own.
//!
//! One module: `cargo test --test service nats_auth::`.

#[path = "../support/mod.rs"]
mod support;

mod analysis_peer;
mod faults_nats;
mod framework_peer;
mod jobs;
mod nats_auth;
mod operations;
mod service;
mod soak_findings;
