//! Reports for people (contract §9): one experiment as an HTML page, and the
//! trends over all experiments as another; plus the aggregation behind the
//! trends, which the analysis, report and health jobs publish as documents.
//!
//! What it owns:
//! - [`experiment`] and [`trends`]: each returns one self-contained HTML
//!   page: CSS inline, charts as inline SVG, no JavaScript, no external
//!   resource of any kind (no font, image or stylesheet URL), a print
//!   stylesheet. Both are readable and printable as they are.
//! - [`summarize`] / [`summarize_days`] ([`aggregate`]): the period and
//!   per-day aggregates ([`Trend`]).
//! - Where pages go under `GENESIS_HOME/reports/` and writing them
//!   atomically ([`write()`]).
//!
//! What it must not do:
//! - Build markup by concatenating strings. Every page is an askama template
//!   under `templates/`, and every value taken from the store (test names,
//!   log tails, paths, descriptions, types: all attacker-controlled text) is
//!   inserted through askama's HTML escaping. No template uses `|safe`;
//!   charts are data ([`svg`]) that the templates draw, so chart labels are
//!   escaped like the rest.
//! - Write to the store or run anything: it only reads the store and the
//!   candidate's `test.log`.
//!
//! Why askama (pinned `=0.16.1`, maintained by the askama-rs organisation,
//! the successor of rinja): templates are compiled into the binary and
//! type-checked at build time, so a misspelt field is a compile error
//! rather than an empty cell in production; `.html` templates escape by
//! default; and nothing is read from disk at run time, so the binary
//! renders pages from anywhere. minijinja would do the escaping as well,
//! but checks templates only when they render.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::contract::Recommendation;
use crate::errors::{GenesisError, Result};
use crate::store::Store;

pub mod aggregate;
mod details;
mod experiment;
mod llm;
pub mod svg;
mod trends;

pub use aggregate::{summarize, summarize_days, Day, Trend};
pub use trends::MAX_DAYS;

/// The page of one experiment. [`GenesisError::UnknownExperiment`] when the
/// store does not hold `id`.
pub fn experiment(store: &Store, config: &Config, id: &str) -> Result<String> {
    experiment::build(store, config, id)
}

/// The trends page over the `days` UTC days ending with `now`'s (today
/// included), clamped to 1..=[`MAX_DAYS`].
pub fn trends(store: &Store, config: &Config, days: u64, now: DateTime<Utc>) -> Result<String> {
    trends::build(store, config, days, now)
}

/// `GENESIS_HOME/reports`.
pub fn reports_dir(config: &Config) -> PathBuf {
    config.home.reports()
}

/// Where `genesis report ID` writes by default, and where `show` looks.
pub fn experiment_path(config: &Config, id: &str) -> PathBuf {
    reports_dir(config).join(format!("{id}.html"))
}

/// Where the `report` job writes the trends page.
pub fn trends_path(config: &Config) -> PathBuf {
    reports_dir(config).join("trends.html")
}

/// Writes a page through a temporary file and a rename, so a reader (a
/// browser, a web server) never sees half a page.
pub fn write(path: &Path, html: &str) -> Result<()> {
    let context = |what: &str| format!("{what} {}", path.display());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| GenesisError::io(context("creating the folder of"), e))?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, html).map_err(|e| GenesisError::io(context("writing"), e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        GenesisError::io(context("renaming into place"), e)
    })
}

// Small formatting helpers shared by both pages.

fn generated_at() -> String {
    Utc::now().format("%Y-%m-%d %H:%M UTC").to_string()
}

fn fmt_ms(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

fn pct(x: f64) -> String {
    format!("{:.1} %", x * 100.0)
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut x = n as f64 / 1024.0;
    let mut unit = 0;
    while x >= 1024.0 && unit + 1 < UNITS.len() {
        x /= 1024.0;
        unit += 1;
    }
    format!("{x:.1} {}", UNITS[unit])
}

/// CSS class of a recommendation's badge.
fn verdict_class(recommendation: Option<Recommendation>) -> &'static str {
    match recommendation {
        Some(Recommendation::Merge) => "good",
        Some(Recommendation::MergeWithAdaptations) => "warn",
        Some(Recommendation::Rollback) => "bad",
        None => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(bytes(12), "12 B");
        assert_eq!(bytes(16 * 1024), "16.0 KiB");
        assert_eq!(bytes(3 * 1024 * 1024 + 1), "3.0 MiB");
        assert_eq!(pct(0.955), "95.5 %");
    }

    #[test]
    fn pages_are_written_whole_and_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reports").join("x.html");
        write(&path, "<p>one</p>").unwrap();
        write(&path, "<p>two</p>").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "<p>two</p>");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left");
    }
}
