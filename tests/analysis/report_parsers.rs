//! The report parsers on files the real tools wrote: pytest's JUnit (from
//! the python image), `cargo test` and `cargo nextest` output (from a small
//! crate with passing, failing, ignored, should-panic and doc tests), and
//! hand-written ExUnit, jest-junit and surefire files where this machine
//! has no such tool. Each expected list was read off the tool's own output.

use genesis::results::{parse_report, Bounds, Outcome, ReportInput, ReportSpec, TestReport};
use Outcome::*;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/reports/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

fn from_file(spec: &str, file: &str) -> TestReport {
    let files = vec![(file.to_owned(), fixture(file))];
    let spec: ReportSpec = spec.parse().unwrap();
    parse_report(
        &spec,
        &ReportInput {
            out_files: &files,
            log: "",
            bounds: Bounds::default(),
        },
    )
    .unwrap()
}

fn from_log(spec: ReportSpec, file: &str) -> TestReport {
    let log = String::from_utf8(fixture(file)).unwrap();
    parse_report(
        &spec,
        &ReportInput {
            out_files: &[],
            log: &log,
            bounds: Bounds::default(),
        },
    )
    .unwrap()
}

fn outcomes(r: &TestReport) -> Vec<(&str, Outcome)> {
    r.cases.iter().map(|c| (c.id.as_str(), c.outcome)).collect()
}

#[test]
fn pytest_junit_from_the_python_image() {
    let r = from_file("junit:/genesis/out/pytest-junit.xml", "pytest-junit.xml");
    assert_eq!(
        outcomes(&r),
        [
            ("tests.test_sample::test_passes", Passed),
            ("tests.test_sample::test_fails", Failed),
            ("tests.test_sample::test_errors_in_fixture", Errored),
            ("tests.test_sample::test_skipped", Skipped),
            ("tests.test_sample::test_xfail", Skipped),
            ("tests.test_sample::test_param[a\\tb]", Passed),
            (
                "tests.test_sample::test_param[\\xfcml\\xe4ut-\\U0001f600]",
                Passed
            ),
            ("tests.test_sample::test_param[<&>]", Failed),
            ("tests.test_sample.TestClass::test_method", Passed),
        ]
    );
    assert_eq!(r.test_count(), 7);
    assert_eq!(r.failures(), 3);
    let fails = r.cases[1].message.as_deref().unwrap();
    assert!(fails.contains("assert 1 == 2"), "{fails}");
}

#[test]
fn cargo_test_output() {
    let r = from_log(ReportSpec::Libtest, "cargo-test.log");
    assert_eq!(r.format, "libtest");
    assert_eq!(
        outcomes(&r),
        [
            ("src/lib.rs::tests::adds", Passed),
            ("src/lib.rs::tests::later", Skipped),
            ("src/lib.rs::tests::panics", Passed),
            ("src/lib.rs::tests::divides_by_zero", Failed),
            ("tests/api.rs::adds", Passed),
            ("tests/api.rs::wrong", Failed),
            ("doc-tests calc::src/lib.rs - add (line 3)", Passed),
            ("doc-tests calc::src/lib.rs - div (line 10)", Failed),
        ]
    );
}

#[test]
fn nextest_status_lines_ignore_the_echoed_libtest_output() {
    let r = from_log(ReportSpec::Libtest, "nextest.log");
    assert_eq!(r.format, "nextest");
    assert_eq!(
        outcomes(&r),
        [
            ("calc::tests::adds", Passed),
            ("calc::tests::divides_by_zero", Failed),
            ("calc::api::adds", Passed),
            ("calc::tests::panics", Passed),
            ("calc::api::wrong", Failed),
        ]
    );
}

#[test]
fn nextest_junit() {
    let r = from_file("junit:/genesis/out/nextest-junit.xml", "nextest-junit.xml");
    assert_eq!(
        outcomes(&r),
        [
            ("calc::tests::adds", Passed),
            ("calc::tests::divides_by_zero", Failed),
            ("calc::tests::panics", Passed),
            ("calc::api::adds", Passed),
            ("calc::api::wrong", Failed),
        ]
    );
    assert_eq!(
        r.cases[4].message.as_deref(),
        Some("thread 'wrong' (9961) panicked at tests/api.rs:2:22")
    );
}

#[test]
fn exunit_junit_formatter() {
    let r = from_file("junit:/genesis/out/exunit-junit.xml", "exunit-junit.xml");
    assert_eq!(
        outcomes(&r),
        [
            ("Elixir.CalcTest::test adds", Passed),
            ("Elixir.CalcTest::test divides by zero", Failed),
            ("Elixir.CalcTest::test later", Skipped),
            ("Elixir.CalcTest::doctest Calc.add/2 (1)", Errored),
        ]
    );
    assert_eq!(
        r.cases[1].message.as_deref(),
        Some("error: bad argument in arithmetic expression")
    );
}

#[test]
fn jest_junit() {
    let r = from_file("junit:/genesis/out/jest-junit.xml", "jest-junit.xml");
    assert_eq!(
        outcomes(&r),
        [
            ("calc adds::calc adds", Passed),
            ("calc divides::calc divides", Failed),
            ("calc later::calc later", Skipped),
            ("calc émoji 😀 & <tags>::calc émoji 😀 & <tags>", Passed),
        ]
    );
    let divides = r.cases[1].message.as_deref().unwrap();
    assert!(divides.contains("Object.<anonymous>"), "{divides}");
}

#[test]
fn maven_surefire() {
    let r = from_file("junit:/genesis/out/surefire.xml", "surefire.xml");
    assert_eq!(
        outcomes(&r),
        [
            ("com.example.CalcTest::adds", Passed),
            ("com.example.CalcTest::divides", Failed),
            ("com.example.CalcTest::reads", Errored),
        ]
    );
    assert_eq!(
        r.cases[1].message.as_deref(),
        Some("expected: <0> but was: <1>")
    );
}

#[test]
fn pytest_console_output_from_the_python_image() {
    let r = from_log(ReportSpec::Pytest, "pytest-quiet.log");
    assert_eq!(r.test_count(), 7);
    assert_eq!(r.failures(), 3);
    assert_eq!(r.count(Skipped), 2);
    let failed: Vec<&str> = r
        .cases
        .iter()
        .filter(|c| c.outcome != Passed && c.outcome != Skipped)
        .map(|c| c.id.as_str())
        .collect();
    assert_eq!(
        failed,
        [
            "tests/test_sample.py::test_fails",
            "tests/test_sample.py::test_param[<&>]",
            "tests/test_sample.py::test_errors_in_fixture",
        ]
    );
}
