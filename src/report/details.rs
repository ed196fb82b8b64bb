//! The lower half of the experiment page: per-test lists (baseline vs
//! candidate), resources, environment, analysis and the log tail.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::bytes;
use super::svg::{self, Svg};
use crate::contract::{Completed, Metrics};
use crate::results::Outcome;
use crate::store::{BaselineFigures, MetricsRow, TestOutcomes};

/// Rows shown per test list; the rest are counted.
const MAX_TEST_ROWS: usize = 200;
/// How much of the end of the candidate's log the page shows.
const LOG_TAIL_BYTES: u64 = 16 * 1024;

pub(super) struct CountRow {
    pub(super) run: &'static str,
    pub(super) total: usize,
    pub(super) passed: usize,
    pub(super) failed: usize,
    pub(super) errored: usize,
    pub(super) skipped: usize,
}

pub(super) struct TestList {
    pub(super) title: &'static str,
    pub(super) about: &'static str,
    pub(super) rows: Vec<(String, String, String)>,
    pub(super) total: usize,
}

impl TestList {
    pub(super) fn more(&self) -> usize {
        self.total - self.rows.len()
    }
}

pub(super) struct AnalysisRow {
    pub(super) name: String,
    pub(super) before: String,
    pub(super) after: String,
}

pub(super) struct LogTail {
    pub(super) path: String,
    pub(super) text: String,
    pub(super) note: String,
}

pub(super) fn counts(o: &TestOutcomes) -> Vec<CountRow> {
    let row = |run, list: &[(String, Outcome)]| {
        let count = |what: Outcome| list.iter().filter(|(_, o)| *o == what).count();
        CountRow {
            run,
            total: list.len(),
            passed: count(Outcome::Passed),
            failed: count(Outcome::Failed),
            errored: count(Outcome::Errored),
            skipped: count(Outcome::Skipped),
        }
    };
    vec![row("baseline", &o.baseline), row("candidate", &o.candidate)]
}

pub(super) fn test_lists(
    outcomes: Option<&TestOutcomes>,
    regressions: &[String],
    flaky: &[String],
) -> Vec<TestList> {
    let empty = TestOutcomes::default();
    let o = outcomes.unwrap_or(&empty);
    let base: HashMap<&str, Outcome> = o.baseline.iter().map(|(t, r)| (t.as_str(), *r)).collect();
    let cand: HashMap<&str, Outcome> = o.candidate.iter().map(|(t, r)| (t.as_str(), *r)).collect();
    let outcome =
        |m: &HashMap<&str, Outcome>, t: &str| m.get(t).map_or("missing", |o| o.as_str()).to_owned();
    let list = |title, about, names: Vec<&str>| {
        let total = names.len();
        let rows = names
            .into_iter()
            .take(MAX_TEST_ROWS)
            .map(|t| (t.to_owned(), outcome(&base, t), outcome(&cand, t)))
            .collect();
        TestList {
            title,
            about,
            rows,
            total,
        }
    };
    let fixed: Vec<&str> = o
        .candidate
        .iter()
        .filter(|(t, r)| {
            *r == Outcome::Passed
                && matches!(
                    base.get(t.as_str()),
                    Some(Outcome::Failed | Outcome::Errored)
                )
        })
        .map(|(t, _)| t.as_str())
        .collect();
    let skipped: Vec<&str> = o
        .candidate
        .iter()
        .filter(|(_, r)| *r == Outcome::Skipped)
        .map(|(t, _)| t.as_str())
        .collect();
    vec![
        list(
            "Regressed",
            "passed on the baseline; fail, vanish or are skipped in the candidate",
            regressions.iter().map(String::as_str).collect(),
        ),
        list(
            "Fixed",
            "failed on the baseline, pass in the candidate",
            fixed,
        ),
        list(
            "Flaky",
            "failed, then passed on a re-run: not counted as regressions",
            flaky.iter().map(String::as_str).collect(),
        ),
        list(
            "Skipped",
            "skipped in the candidate (not counted in test_count)",
            skipped,
        ),
    ]
}

fn runtimes(m: &Metrics, c: Option<&Completed>, row: Option<&MetricsRow>) -> (u64, Option<u64>) {
    let base = c
        .map(|c| c.baseline.runtime_ms)
        .or(row.map(|r| r.baseline.runtime_ms));
    (m.runtime_ms, base)
}

pub(super) fn resources(
    m: &Metrics,
    c: Option<&Completed>,
    row: Option<&MetricsRow>,
) -> Vec<(&'static str, String, String)> {
    let (cand_ms, base_ms) = runtimes(m, c, row);
    let baseline = c
        .map(|c| BaselineFigures::from(&c.baseline))
        .or(row.map(|r| r.baseline.clone()));
    let base_coverage = c.and_then(|c| c.baseline.code_coverage_percent);
    let pct = |x: Option<f64>| x.map_or("not measured".to_owned(), |x| format!("{x:.1} %"));
    vec![
        (
            "Runtime",
            format!("{} ({:+.1} %)", secs(cand_ms), m.performance_delta * 100.0),
            base_ms.map(secs).unwrap_or_default(),
        ),
        (
            "Tests run / failures",
            format!("{} / {}", m.test_count, m.failures),
            baseline
                .map(|b| format!("{} / {}", b.test_count, b.failures))
                .unwrap_or_default(),
        ),
        (
            "Memory peak",
            format!("{:.1} MB", m.memory_peak_mb),
            String::new(),
        ),
        (
            "CPU usage",
            format!("{:.1} %", m.cpu_usage_percent),
            String::new(),
        ),
        ("I/O operations", m.io_operations.to_string(), String::new()),
        (
            "Line coverage",
            pct(m.code_coverage_percent),
            base_coverage.map(|x| pct(Some(x))).unwrap_or_default(),
        ),
        (
            "Complexity change",
            m.complexity_change
                .map_or("no functions touched".into(), |x| {
                    format!("{:+.1} %", x * 100.0)
                }),
            String::new(),
        ),
    ]
}

pub(super) fn runtime_chart(m: &Metrics, c: Option<&Completed>, row: Option<&MetricsRow>) -> Svg {
    let (cand, base) = runtimes(m, c, row);
    let mut rows = Vec::new();
    if let Some(base) = base {
        rows.push((
            "baseline".to_owned(),
            base as f64 / 1000.0,
            "bar-base",
            format!("baseline {}", secs(base)),
        ));
    }
    rows.push((
        "candidate".to_owned(),
        cand as f64 / 1000.0,
        "bar",
        format!("candidate {}", secs(cand)),
    ));
    svg::hbars("runtime, baseline vs candidate, in seconds", &rows, " s")
}

fn secs(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

pub(super) fn environment(c: &Completed) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    match &c.environment {
        Some(e) => {
            out.push(("Image", e.image.clone()));
            out.push(("Key", e.key.clone()));
            out.push((
                "Install",
                if e.reused {
                    "reused (built before this experiment)".to_owned()
                } else {
                    format!("built for it in {}", secs(e.build_ms))
                },
            ));
        }
        None => out.push(("Environment", "none: the repo's image as configured".into())),
    }
    if let Some(f) = &c.framework {
        let how = if f.detected { "detected" } else { "configured" };
        out.push(("Framework", format!("{} ({how})", f.name)));
        out.push(("Test command", f.test_command.clone()));
        out.push(("Report", f.report.clone()));
    }
    out
}

/// Fields of `analysis` the table leaves out: the call sites are listed,
/// by file and line, in the LLM calls section.
const SHOWN_ELSEWHERE: [&str; 1] = ["sites"];

/// The result's `analysis` object, whatever its exact fields: a
/// `{before, after}` pair becomes one row with both, anything else one row.
pub(super) fn analysis(raw: &serde_json::Value) -> Option<Vec<AnalysisRow>> {
    let obj = raw.get("analysis")?.as_object()?;
    let show = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "—".into(),
        other => other.to_string(),
    };
    Some(
        obj.iter()
            .filter(|(k, _)| !SHOWN_ELSEWHERE.contains(&k.as_str()))
            .map(|(k, v)| match (v.get("before"), v.get("after")) {
                (Some(b), Some(a)) => AnalysisRow {
                    name: k.clone(),
                    before: show(b),
                    after: show(a),
                },
                _ => AnalysisRow {
                    name: k.clone(),
                    before: show(v),
                    after: String::new(),
                },
            })
            .collect(),
    )
}

/// The end of a log: the last [`LOG_TAIL_BYTES`], from a line start, with
/// terminal colour codes removed. None when there is no log.
pub(super) fn log_tail(path: &Path) -> Option<LogTail> {
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let start = len.saturating_sub(LOG_TAIL_BYTES);
    file.seek(SeekFrom::Start(start)).ok()?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf).ok()?;
    let mut text = String::from_utf8_lossy(&buf).into_owned();
    if start > 0 {
        if let Some(nl) = text.find('\n') {
            text.drain(..=nl);
        }
    }
    let ansi = regex::Regex::new(r"\x1b\[[0-9;?]*[ -/]*[@-~]").expect("a valid regex");
    let text = ansi.replace_all(&text, "").into_owned();
    let note = if start > 0 {
        format!("last {} of {}", bytes(LOG_TAIL_BYTES), bytes(len))
    } else {
        format!("whole log, {}", bytes(len))
    };
    Some(LogTail {
        path: path.display().to_string(),
        text,
        note,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_tail_starts_at_a_line_and_drops_colours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.log");
        let mut text = "x".repeat(LOG_TAIL_BYTES as usize);
        text.push_str("\nlast \x1b[31mred\x1b[0m line\n");
        std::fs::write(&path, text).unwrap();
        let tail = log_tail(&path).unwrap();
        assert_eq!(tail.text, "last red line\n");
        assert!(tail.note.starts_with("last 16.0 KiB of"), "{}", tail.note);
        assert!(log_tail(&dir.path().join("absent")).is_none());
    }
}
