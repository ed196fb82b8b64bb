//! Genesis tries out proposed code changes safely: it snapshots a repo at a
//! commit, applies the change in a hardened Docker container, runs the test
//! suite against the unchanged baseline, and answers merge,
//! merge_with_adaptations or rollback with the numbers behind it.
//!
//! Where things live:
//! - [`contract`]: every JSON document of the external contract.
//! - [`config`]: policy files + genesis.toml + environment.
//! - [`snapshot`]: git snapshots, patching, the candidate commit.
//! - [`sandbox`]: one hardened container per run (bollard).
//! - [`results`]: test report parsers (JUnit, TAP, libtest, pytest, ExUnit).
//! - [`metrics`], [`policy`], [`llm_calls`]: the numbers and the verdict.
//! - [`runner`]: request → result orchestration shared by CLI and service.
//! - [`store`]: the redb database; [`export`]: its Postgres-compatible dump.
//! - [`service`]: the NATS service; [`jobs`], [`maintenance`]: schedules, cleanup, archives.
//! - [`images`]: offline test images; [`cli`]: the command line; [`errors`]: error types.

pub mod cli;
pub mod config;
pub mod contract;
pub mod doctor;
pub mod errors;
pub mod export;
pub mod images;
pub mod jobs;
pub mod llm_calls;
pub mod maintenance;
pub mod metrics;
pub mod policy;
pub mod results;
pub mod runner;
pub mod sandbox;
pub mod service;
pub mod snapshot;
pub mod store;
