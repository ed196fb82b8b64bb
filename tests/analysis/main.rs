//! What genesis reads without running anything: the LLM call-site
//! analyzer through its public API (`analysis_api`), on hand-written
//! fixtures (`analysis_fixtures`) and on published files (`analysis_corpus`),
//! and the test-report parsers on files real tools wrote (`report_parsers`).
//!
//! Grouped because none of them needs a Docker engine, a NATS server or
//! `tests/support`: this binary runs anywhere, in seconds (the corpus needs
//! its cache or the network). The integration tests are a few binaries of
//! modules, not one binary per file, because each binary links genesis and
//! its dependencies again, which made the suite's build slow on a 2-core CI.
//!
//! One module: `cargo test --test analysis report_parsers::`.

mod analysis_api;
mod analysis_corpus;
mod analysis_fixtures;
mod report_parsers;
