//! The store and what is built from it: archives and sandbox exports
//! (`archive`), `genesis export` loaded into PostgreSQL (`export_pg`), a
//! full or damaged store (`faults_store`), SIGKILL in the middle of writes
//! (`store_crash`), the command line on a store (`cli`), the HTML reports
//! (`report_pages`) and the Debian package (`packaging`).
//!
//! Grouped because most of these fill a store by hand, or run a few
//! experiments at most, and check what is read back. One binary of
//! modules rather than one per file, because each binary links genesis
//! again, which made the suite's build slow on a 2-core CI.
//!
//! Libtest runs two of these tests at once, as each former file ran its
//! own; each test has its own homes, servers and file systems.
//! `store_crash` runs this binary again for its child writer, with
//! `--exact store_crash::crash_writer_child`, so only that test runs there.
//!
//! One module: `cargo test --test store report_pages::`.

#[path = "../support/mod.rs"]
mod support;

mod archive;
mod cli;
mod export_pg;
mod faults_store;
mod packaging;
mod report_pages;
mod store_crash;
