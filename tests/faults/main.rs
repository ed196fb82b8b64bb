//! Host faults (`faults`): a suite writing 6 GB meets its disk cap, the
//! isolation probes and a judged experiment under gVisor's runsc, and a
//! Docker engine that crashes mid-run and comes back (engines of the
//! tests' own, never the machine's).
//!
//! A binary of its own, unlike the other groups, so that it never runs
//! beside their tests: the 6 GB writer checks how much free space the host
//! lost, on the file system Docker's data root and the temp dirs share,
//! with 128 MiB of slack for its own siblings. The disk-heavy tests of the
//! other binaries (environment builds, layers, archives, PostgreSQL
//! clusters) would eat that slack, and a lock would have to be taken by
//! each of them.
//!
//! `cargo test --test faults`.

#[path = "../support/mod.rs"]
mod support;

mod faults;
