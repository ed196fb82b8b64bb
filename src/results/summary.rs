//! Fallbacks for suites that write no per-test report: pytest's and
//! ExUnit's console output.
//!
//! Per-test lines are used when the log has them (pytest `-v`:
//! `path::test PASSED`; pytest's short summary: `FAILED path::test - msg`;
//! ExUnit `--trace`: `  * test name (1.2ms)` and the numbered failure list
//! `  1) test name (Module)`). The final summary line (`2 failed, 11 passed
//! in 0.05s`; `10 tests, 2 failures, 1 skipped`) gives the totals; tests it
//! counts that no line names get placeholder ids such as
//! `(pytest passed 3)`. Those make the counts exact but cannot say *which*
//! passing test regressed, which is why a structured report is preferred.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regex::Regex;

use super::{bounded_message, case, Bounds, Outcome, ReportError, TestCase, TestReport};

/// Per-test results in order of first appearance; a later line about the
/// same test (the short summary after the `-v` line) refines it.
struct Named {
    order: Vec<String>,
    cases: BTreeMap<String, TestCase>,
    bounds: Bounds,
    format: &'static str,
    /// Set when a line names more tests, or a longer id, than `bounds` allow.
    refused: Option<ReportError>,
}

impl Named {
    fn new(format: &'static str, bounds: &Bounds) -> Named {
        Named {
            order: Vec::new(),
            cases: BTreeMap::new(),
            bounds: *bounds,
            format,
            refused: None,
        }
    }

    fn set(&mut self, id: &str, outcome: Outcome, message: Option<String>) {
        if self.refused.is_some() {
            return;
        }
        if !self.cases.contains_key(id) {
            let checked = self
                .bounds
                .count(
                    self.format,
                    self.order.len() as u64 + 1,
                    "the cases it lists",
                )
                .and_then(|()| self.bounds.id(self.format, id));
            if let Err(e) = checked {
                self.refused = Some(e);
                return;
            }
        }
        let entry = self.cases.entry(id.to_owned()).or_insert_with(|| {
            self.order.push(id.to_owned());
            case(id, outcome)
        });
        entry.outcome = outcome;
        if message.is_some() {
            entry.message = message;
        }
    }

    /// Adds placeholders until each outcome reaches the summary's total;
    /// a summary claiming more than `max_tests` is refused first.
    fn into_report(mut self, totals: &BTreeMap<Outcome, usize>) -> Result<TestReport, ReportError> {
        if let Some(e) = self.refused.take() {
            return Err(e);
        }
        let claimed = totals
            .values()
            .fold(0u64, |sum, n| sum.saturating_add(*n as u64));
        self.bounds
            .count(self.format, claimed, "its summary's counts")?;
        let format = self.format;
        let mut cases: Vec<TestCase> = std::mem::take(&mut self.order)
            .into_iter()
            .filter_map(|id| self.cases.remove(&id))
            .collect();
        for (&outcome, &total) in totals {
            let known = cases.iter().filter(|c| c.outcome == outcome).count();
            for k in known + 1..=total {
                let mut placeholder = case(format!("({format} {} {k})", outcome.as_str()), outcome);
                placeholder.message =
                    Some("counted from the summary line; no per-test report".into());
                cases.push(placeholder);
            }
        }
        Ok(TestReport {
            format: format.to_owned(),
            cases,
        })
    }
}

static PYTEST_VERBOSE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(\S+::\S.*?) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)(?: |$)").unwrap()
});
static PYTEST_SHORT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(PASSED|FAILED|ERROR|XFAIL|XPASS) (\S+?(?:::\S+)?)(?: - (.*))?$").unwrap()
});
static PYTEST_SUMMARY: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^=*\s*((?:\d+ [a-z]+(?:, )?)+) in [\d.]+s\b").unwrap());

fn pytest_outcome(word: &str) -> Option<Outcome> {
    Some(match word {
        "PASSED" | "passed" | "XPASS" | "xpassed" => Outcome::Passed,
        "FAILED" | "failed" => Outcome::Failed,
        "ERROR" | "error" | "errors" => Outcome::Errored,
        "SKIPPED" | "skipped" | "XFAIL" | "xfailed" => Outcome::Skipped,
        _ => return None,
    })
}

/// pytest's console output (`-q`, default or `-v`).
pub fn parse_pytest(log: &str, bounds: &Bounds) -> Result<TestReport, ReportError> {
    let mut named = Named::new("pytest", bounds);
    let mut totals: Option<BTreeMap<Outcome, usize>> = None;
    for line in log.lines().map(|l| l.trim_end_matches('\r')) {
        if let Some(c) = PYTEST_VERBOSE.captures(line) {
            if let Some(o) = pytest_outcome(&c[2]) {
                named.set(&c[1], o, None);
            }
        } else if let Some(c) = PYTEST_SHORT.captures(line) {
            if let Some(o) = pytest_outcome(&c[1]) {
                let message = c.get(3).and_then(|m| bounded_message(m.as_str()));
                named.set(&c[2], o, message);
            }
        } else if let Some(c) = PYTEST_SUMMARY.captures(line) {
            totals = Some(pytest_totals(&c[1]));
        }
    }
    match totals {
        Some(totals) => named.into_report(&totals),
        // No summary line: the run did not finish; per-test lines alone
        // would under-count, so only report them if that is all there is.
        None => named.into_report(&BTreeMap::new()),
    }
}

/// `2 failed, 11 passed, 1 skipped, 3 warnings, 1 error` → totals.
fn pytest_totals(counts: &str) -> BTreeMap<Outcome, usize> {
    let mut totals = BTreeMap::new();
    for part in counts.split(", ") {
        let Some((n, word)) = part.trim().split_once(' ') else {
            continue;
        };
        if let (Ok(n), Some(o)) = (n.parse::<usize>(), pytest_outcome(word)) {
            *totals.entry(o).or_insert(0) += n;
        }
    }
    totals
}

static EXUNIT_SUMMARY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^((?:\d+ (?:doctests?|tests?|propert(?:y|ies)|features?), )*)(\d+) failures?((?:, \d+ (?:excluded|skipped|invalid))*)")
        .unwrap()
});
static EXUNIT_FAILURE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\s+\d+\) ((?:test|doctest|property|feature) .+) \(([\w.]+)\)$").unwrap()
});
static EXUNIT_MODULE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^([\w.]+) \[\S+\.exs\]$").unwrap());
static EXUNIT_TRACE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\s+\* ((?:test|doctest|property|feature) .+?) \((excluded|skipped|[\d.]+m?s)\)")
        .unwrap()
});

/// What a terminal shows of a line: the text after its last carriage
/// return. `mix test --trace` rewrites a test's line in place (`* test x
/// [L#5]\r* test x (0.00ms) [L#5]`) even when writing to a pipe.
fn shown_text(line: &str) -> &str {
    let line = line.trim_end_matches('\r');
    line.rsplit('\r').next().unwrap_or(line)
}

/// ExUnit's console output (`mix test`, optionally `--trace`).
pub fn parse_exunit(log: &str, bounds: &Bounds) -> Result<TestReport, ReportError> {
    let mut named = Named::new("exunit", bounds);
    let mut module = String::new();
    let mut totals = None;
    for line in log.lines().map(shown_text) {
        if let Some(c) = EXUNIT_MODULE.captures(line) {
            module = c[1].to_owned();
        } else if let Some(c) = EXUNIT_TRACE.captures(line) {
            let outcome = match &c[2] {
                "excluded" | "skipped" => Outcome::Skipped,
                _ => Outcome::Passed,
            };
            named.set(&format!("{module}::{}", &c[1]), outcome, None);
        } else if let Some(c) = EXUNIT_FAILURE.captures(line) {
            named.set(&format!("{}::{}", &c[2], &c[1]), Outcome::Failed, None);
        } else if let Some(c) = EXUNIT_SUMMARY.captures(line) {
            totals = Some(exunit_totals(&c[1], &c[2], &c[3]));
        }
    }
    named.into_report(&totals.unwrap_or_default())
}

/// ExUnit counts excluded, skipped and invalid tests in its total, and
/// failures apart from them; invalid tests (a failed `setup_all`) errored.
fn exunit_totals(kinds: &str, failures: &str, extras: &str) -> BTreeMap<Outcome, usize> {
    let sum_of = |text: &str, words: &[&str]| -> usize {
        text.split(", ")
            .filter_map(|p| p.trim().split_once(' '))
            .filter(|(_, w)| words.iter().any(|k| w.starts_with(k)))
            .filter_map(|(n, _)| n.parse::<usize>().ok())
            .sum()
    };
    let total = sum_of(kinds, &["doctest", "test", "propert", "feature"]);
    let failed: usize = failures.parse().unwrap_or(0);
    let not_run = sum_of(extras, &["excluded", "skipped"]);
    let invalid = sum_of(extras, &["invalid"]);
    let passed = total.saturating_sub(failed + not_run + invalid);
    BTreeMap::from([
        (Outcome::Passed, passed),
        (Outcome::Failed, failed),
        (Outcome::Errored, invalid),
        (Outcome::Skipped, not_run),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::outcomes;

    fn parse_pytest(log: &str) -> TestReport {
        super::parse_pytest(log, &Bounds::default()).unwrap()
    }

    fn parse_exunit(log: &str) -> TestReport {
        super::parse_exunit(log, &Bounds::default()).unwrap()
    }

    #[test]
    fn summaries_claiming_more_than_max_tests_are_refused_unbuilt() {
        let bounds = Bounds::with_max_tests(1000);
        let err =
            super::parse_pytest("4000000000 failed, 1 passed in 0.01s\n", &bounds).unwrap_err();
        assert!(
            err.to_string()
                .contains("4000000001 tests (its summary's counts)"),
            "{err}"
        );
        let err = super::parse_exunit(
            "Finished in 0.1 seconds\n4000000000 tests, 4000000000 failures\n",
            &bounds,
        );
        assert!(err.is_err() || err.unwrap().cases.len() <= 1000);
        assert_eq!(
            super::parse_pytest("1000 passed in 0.01s\n", &bounds)
                .unwrap()
                .cases
                .len(),
            1000
        );
    }

    #[test]
    fn pytest_quiet_output_counts_exactly_and_names_failures() {
        let log = "..F.F..s.                                                      [100%]\n=================================== FAILURES ===================================\n___ test_div ___\n\n    def test_div():\n>       assert div(1, 0) == 0\nE       ZeroDivisionError: division by zero\n\n=========================== short test summary info ============================\nFAILED tests/test_ops.py::test_div - ZeroDivisionError: division by zero\nFAILED tests/test_ops.py::test_mean[empty] - assert 1 == 0\n2 failed, 6 passed, 1 skipped in 0.05s\n";
        let r = parse_pytest(log);
        assert_eq!(r.format, "pytest");
        assert_eq!(r.test_count(), 8);
        assert_eq!(r.failures(), 2);
        assert_eq!(r.count(Outcome::Skipped), 1);
        assert_eq!(r.cases[0].id, "tests/test_ops.py::test_div");
        assert_eq!(
            r.cases[0].message.as_deref(),
            Some("ZeroDivisionError: division by zero")
        );
        assert_eq!(r.cases[2].id, "(pytest passed 1)");
    }

    #[test]
    fn pytest_verbose_lines_name_every_test() {
        let log = "tests/t.py::test_a PASSED                                   [ 33%]\ntests/t.py::test_b[x-1] FAILED                              [ 66%]\ntests/t.py::test_c SKIPPED (no db)                          [100%]\n=========== 1 failed, 1 passed, 1 skipped, 2 warnings in 0.12s ===========\n";
        let r = parse_pytest(log);
        assert_eq!(
            outcomes(&r),
            [
                ("tests/t.py::test_a", Outcome::Passed),
                ("tests/t.py::test_b[x-1]", Outcome::Failed),
                ("tests/t.py::test_c", Outcome::Skipped),
            ]
        );
    }

    #[test]
    fn pytest_collection_errors_and_xfail_count_right() {
        let log = "ERROR tests/test_broken.py - ImportError: no module named x\n!!!! Interrupted: 1 error during collection !!!!\n===== 1 error in 0.10s =====\n";
        let r = parse_pytest(log);
        assert_eq!(outcomes(&r), [("tests/test_broken.py", Outcome::Errored)]);
        let r = parse_pytest("3 passed, 1 xfailed, 1 xpassed, 1 deselected in 0.02s\n");
        assert_eq!(r.test_count(), 4);
        assert_eq!(r.failures(), 0);
        assert!(parse_pytest("no tests ran in 0.01s\n").cases.is_empty());
    }

    #[test]
    fn exunit_summary_with_failures_excluded_and_invalid() {
        let log = "..\n\n  1) test divides by zero (CalcTest)\n     test/calc_test.exs:12\n     ** (ArithmeticError) bad argument in arithmetic expression\n\n  2) doctest Calc.add/2 (1) (CalcTest)\n     test/calc_test.exs:3\n\nFinished in 0.05 seconds (0.00s async, 0.05s sync)\n1 doctest, 9 tests, 2 failures, 1 excluded, 1 skipped, 1 invalid\n";
        let r = parse_exunit(log);
        assert_eq!(r.format, "exunit");
        assert_eq!(r.cases[0].id, "CalcTest::test divides by zero");
        assert_eq!(r.cases[1].id, "CalcTest::doctest Calc.add/2 (1)");
        assert_eq!(r.count(Outcome::Failed), 2);
        assert_eq!(r.count(Outcome::Errored), 1);
        assert_eq!(r.count(Outcome::Skipped), 2);
        assert_eq!(r.count(Outcome::Passed), 5);
        assert_eq!(r.test_count(), 8);
    }

    #[test]
    fn exunit_trace_names_every_test() {
        let log = "CalcTest [test/calc_test.exs]\n  * test adds (0.01ms) [L#4]\n  * test later (excluded) [L#8]\n  * test divides (1.2ms) [L#12]\n\n  1) test divides (CalcTest)\n     test/calc_test.exs:12\n\nFinished in 0.03 seconds\n3 tests, 1 failure, 1 excluded\n";
        let r = parse_exunit(log);
        assert_eq!(
            outcomes(&r),
            [
                ("CalcTest::test adds", Outcome::Passed),
                ("CalcTest::test later", Outcome::Skipped),
                ("CalcTest::test divides", Outcome::Failed),
            ]
        );
    }

    #[test]
    fn exunit_trace_keeps_what_a_terminal_shows_after_a_carriage_return() {
        // As `mix test --trace` 1.14 writes it to a pipe.
        let log = "CalcTest [test/calc_test.exs]\n  * test adds [L#4]\r  * test adds (0.00ms) [L#4]\n\nFinished in 0.02 seconds\n1 test, 0 failures\n";
        let r = parse_exunit(log);
        assert_eq!(outcomes(&r), [("CalcTest::test adds", Outcome::Passed)]);
    }
}
