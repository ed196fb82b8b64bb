//! Genesis tries out proposed code changes safely: it snapshots a repo at a
//! commit, applies the change in a hardened Docker container, runs the test
//! suite against the unchanged baseline, and answers merge,
//! merge_with_adaptations or rollback with the numbers behind it.
//!
//! The modules follow the flow of one experiment, and data flows one way:
//! a module may use the ones listed above it, never one below.
//!
//! Foundations, used by every stage:
//! - [`errors`]: the error types and their exit codes.
//! - [`home`]: `GENESIS_HOME` and every path in it.
//! - [`contract`]: every JSON document and NATS subject of the external contract.
//! - [`config`]: policy files + genesis.toml + environment, validated on load.
//! - [`nats_auth`]: the options (credentials, TLS) of every NATS client, and
//!   which connect errors are refusals rather than a server not up yet.
//! - [`telemetry`]: the metrics registry that `/metrics` exports, fed by the
//!   runner and the service where things happen.
//!
//! Pure libraries (no I/O beyond what they are given):
//! - [`results`]: test report parsers (JUnit, TAP, libtest, pytest, ExUnit).
//! - [`analysis`]: LLM call sites and complexity of source files.
//!
//! The stages of an experiment:
//! - [`snapshot`]: git snapshots, patching, the candidate commit.
//! - [`environment`]: dependencies installed once per manifest, as an image.
//! - [`sandbox`]: one hardened container per run (bollard), its resources.
//! - [`judgement`]: metrics and the verdict.
//! - [`store`]: the redb database.
//! - [`runner`]: request → result, shared by the CLI and the service.
//!
//! Around the stored experiments:
//! - [`export`]: the Postgres-compatible dump; [`maintenance`]: cleanup,
//!   archives, sandbox export, disk budget; [`report`]: the trends
//!   aggregates and the HTML pages; [`jobs`]: the scheduler and the
//!   scheduled jobs; [`images`]: offline test images.
//!
//! On top, imported by nothing: [`service`] (NATS), [`doctor`], [`cli`].

pub mod errors;
pub mod home;

pub mod config;
pub mod contract;
pub mod nats_auth;
pub mod telemetry;

pub mod analysis;
pub mod results;

pub mod environment;
pub mod judgement;
pub mod sandbox;
pub mod snapshot;
pub mod store;

pub mod runner;

pub mod export;
pub mod images;
pub mod maintenance;
pub mod report;

pub mod jobs;

pub mod cli;
pub mod doctor;
pub mod service;
