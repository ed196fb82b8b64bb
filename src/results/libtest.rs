//! Rust test output from the log: `cargo test` (libtest's text format) and
//! `cargo nextest run` (its status lines).
//!
//! libtest prints `test PATH ... ok|FAILED|ignored` per test, grouped under
//! cargo's `Running TARGET (deps/BIN-HASH)` / `Doc-tests CRATE` headers and
//! closed by `test result:`. The same test path can exist in two targets
//! (a unit test module in the lib and the bin), so the id is
//! `TARGET::PATH`, where TARGET is the source path cargo prints (stable;
//! the hashed binary name is not). A target whose section never reaches its
//! `test result:` line crashed (a segfault, an abort): it gets one errored
//! case so the run cannot look green.
//!
//! nextest prints `PASS [ 0.004s] BINARY-ID TEST-PATH` (and FAIL, TIMEOUT,
//! SIGSEGV, …), repeats failures after its `Summary` line and prints one
//! line per retry; the last status of an id wins, so retried-then-passed
//! tests count once, as passed.

use std::collections::HashMap;

use super::{case, with_unique_ids, Bounds, Outcome, ReportError, TestCase, TestReport};

/// libtest's or nextest's lines. Each case comes from a line of the
/// (capped) log, so what is built is bounded by the log; the bounds are
/// checked on the result, as for every format.
pub fn parse(log: &str, _bounds: &Bounds) -> Result<TestReport, ReportError> {
    let libtest = parse_libtest(log);
    if !libtest.cases.is_empty() {
        return Ok(libtest);
    }
    Ok(parse_nextest(log))
}

fn parse_libtest(log: &str) -> TestReport {
    let mut cases: Vec<TestCase> = Vec::new();
    let mut target: Option<String> = None;
    // Whether the current target's section reached `test result:`.
    let mut section_closed = true;
    let mut section_has_tests = false;
    let close_crashed = |cases: &mut Vec<TestCase>, target: &Option<String>, closed: bool| {
        if let (false, Some(t)) = (closed, target) {
            let mut crashed = case(format!("{t}::(crashed)"), Outcome::Errored);
            crashed.message =
                Some("the test binary ended before printing `test result:`".to_owned());
            cases.push(crashed);
        }
    };
    for line in log.lines().map(|l| l.trim_end_matches('\r')) {
        // libtest writes its own lines at column 0; indented copies are a
        // test's captured output (nextest and libtest echo it on failure).
        let trimmed = line.trim_start();
        if let Some(name) = section_header(trimmed) {
            close_crashed(&mut cases, &target, section_closed || !section_has_tests);
            target = Some(name);
            section_closed = false;
            section_has_tests = false;
        } else if line.starts_with("test result:") {
            section_closed = true;
        } else if trimmed.starts_with("running ")
            && (trimmed.ends_with(" tests") || trimmed.ends_with(" test"))
        {
            section_has_tests |= !trimmed.starts_with("running 0 ");
        } else if let Some((path, outcome)) = test_line(line) {
            let id = match &target {
                Some(t) => format!("{t}::{path}"),
                None => path.to_owned(),
            };
            cases.push(case(id, outcome));
        }
    }
    close_crashed(&mut cases, &target, section_closed || !section_has_tests);
    if cases.iter().all(|c| c.id.ends_with("::(crashed)")) {
        cases.clear(); // a header and a crash alone do not make this format
    }
    with_unique_ids("libtest", cases)
}

/// `Running unittests src/lib.rs (target/debug/deps/x-0123)` → `src/lib.rs`;
/// `Running tests/api.rs (…)` → `tests/api.rs`; `Doc-tests x` → `doc-tests x`.
fn section_header(line: &str) -> Option<String> {
    if let Some(rest) = line.strip_prefix("Running ") {
        let rest = rest.strip_prefix("unittests ").unwrap_or(rest);
        let source = rest.split(" (").next().unwrap_or(rest).trim();
        return (!source.is_empty()).then(|| source.to_owned());
    }
    line.strip_prefix("Doc-tests ")
        .map(|krate| format!("doc-tests {}", krate.trim()))
}

/// `test a::b ... ok`, `test a::b - should panic ... ok`,
/// `test src/lib.rs - f (line 3) ... FAILED`, `test x ... ignored, reason`.
fn test_line(line: &str) -> Option<(&str, Outcome)> {
    let rest = line.strip_prefix("test ")?;
    let (path, status) = rest.rsplit_once(" ... ")?;
    let path = path.strip_suffix(" - should panic").unwrap_or(path);
    let outcome = match status.trim() {
        "ok" => Outcome::Passed,
        "FAILED" => Outcome::Failed,
        s if s == "ignored" || s.starts_with("ignored,") => Outcome::Skipped,
        s if s.starts_with("bench:") => Outcome::Passed,
        _ => return None,
    };
    Some((path.trim(), outcome))
}

fn parse_nextest(log: &str) -> TestReport {
    let mut order: Vec<String> = Vec::new();
    let mut last: HashMap<String, TestCase> = HashMap::new();
    for line in log.lines() {
        let Some(test) = nextest_line(line) else {
            continue;
        };
        if !last.contains_key(&test.id) {
            order.push(test.id.clone());
        }
        last.insert(test.id.clone(), test);
    }
    let cases = order
        .into_iter()
        .filter_map(|id| last.remove(&id))
        .collect();
    TestReport {
        format: "nextest".into(),
        cases,
    }
}

/// `        PASS [   0.004s] my-crate::api tests::x` (maybe after `TRY 2 `).
fn nextest_line(line: &str) -> Option<TestCase> {
    let mut rest = line.trim_start();
    if let Some(after_try) = rest.strip_prefix("TRY ") {
        rest = after_try.split_once(' ')?.1.trim_start();
    }
    let (status, rest) = rest.split_once(" [")?;
    let (time, rest) = rest.split_once("s]")?;
    // Newer nextest versions put a `(2/5)` progress counter first.
    let mut words = rest
        .split_whitespace()
        .skip_while(|w| w.starts_with('(') && w.ends_with(')') && w.contains('/'));
    let (binary, path) = (words.next()?, words.next()?);
    if words.next().is_some() {
        return None;
    }
    let outcome = match status.trim() {
        "PASS" | "LEAK" => Outcome::Passed,
        "FAIL" | "LEAK-FAIL" => Outcome::Failed,
        "TIMEOUT" | "ABORT" | "SIGSEGV" | "SIGABRT" | "SIGKILL" | "SIGBUS" | "SIGILL"
        | "SIGFPE" => Outcome::Errored,
        "SKIP" => Outcome::Skipped,
        _ => return None,
    };
    let mut test = case(format!("{binary}::{path}"), outcome);
    test.duration_ms = time.trim().parse::<f64>().ok().map(|s| s * 1000.0);
    if outcome == Outcome::Errored {
        test.message = Some(format!("nextest: {}", status.trim()));
    }
    Some(test)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::outcomes;

    fn parse(log: &str) -> TestReport {
        super::parse(log, &Bounds::default()).unwrap()
    }

    #[test]
    fn plain_libtest_without_cargo_headers() {
        let log = "\nrunning 4 tests\ntest a::ok ... ok\ntest a::bad ... FAILED\ntest a::later ... ignored, needs a database\ntest a::panics - should panic ... ok\n\nfailures:\n\n---- a::bad stdout ----\n\ntest result: FAILED. 2 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out\n";
        let r = parse(log);
        assert_eq!(r.format, "libtest");
        assert_eq!(
            outcomes(&r),
            [
                ("a::ok", Outcome::Passed),
                ("a::bad", Outcome::Failed),
                ("a::later", Outcome::Skipped),
                ("a::panics", Outcome::Passed),
            ]
        );
    }

    #[test]
    fn a_test_binary_that_crashes_mid_run_is_errored() {
        let log = "     Running unittests src/lib.rs (target/debug/deps/x-1)\n\nrunning 2 tests\ntest a ... ok\nerror: test failed, to rerun pass `--lib`\n\nCaused by:\n  process didn't exit successfully: (signal: 11, SIGSEGV)\n";
        let r = parse(log);
        assert_eq!(
            outcomes(&r),
            [
                ("src/lib.rs::a", Outcome::Passed),
                ("src/lib.rs::(crashed)", Outcome::Errored),
            ]
        );
    }

    #[test]
    fn nextest_last_status_wins_and_summary_repeats_do_not_double_count() {
        let log = "    Starting 3 tests across 1 binary\n        PASS [   0.004s] k::api t::a\n        FAIL [   0.010s] k::api t::b\n  TRY 2 PASS [   0.002s] k::api t::c\n        SIGSEGV [   0.100s] k::api t::d\n------------\n     Summary [   0.120s] 4 tests run: 2 passed, 1 failed, 1 crashed\n        FAIL [   0.010s] k::api t::b\n";
        let r = parse(log);
        assert_eq!(r.format, "nextest");
        assert_eq!(
            outcomes(&r),
            [
                ("k::api::t::a", Outcome::Passed),
                ("k::api::t::b", Outcome::Failed),
                ("k::api::t::c", Outcome::Passed),
                ("k::api::t::d", Outcome::Errored),
            ]
        );
        assert_eq!(r.cases[0].duration_ms, Some(4.0));
    }

    #[test]
    fn prose_is_not_mistaken_for_tests() {
        let r = parse("test the thing ... please\nrunning late\nPASS the salt\n");
        assert!(r.cases.is_empty());
    }
}
