//! Test-report parsing: turns what a test suite left behind (files in
//! `/genesis/out`, the captured log) into one list of per-test outcomes.
//!
//! Every number of CONTRACT §5 that users merge or roll back on is counted
//! from a [`TestReport`], so the parsers here are pure functions with no I/O
//! and are unit-tested on real reports of the real tools.
//!
//! Formats, one module each:
//! * [`junit`]: JUnit XML as pytest, cargo-nextest, ExUnit's formatter,
//!   jest-junit and Maven surefire write it (a structured file: preferred).
//! * [`tap`]: TAP 13/14 on the log (plans, `# SKIP`, `# TODO`, `Bail out!`).
//! * [`libtest`]: `cargo test` text output, and cargo-nextest's status lines.
//! * [`summary`]: pytest's `-v` lines and summary line, ExUnit's summary:
//!   the fallback when a suite writes no per-test report.
//!
//! Identity: each test gets an id that stays the same between the baseline
//! and the candidate run (`classname::name` for JUnit, the description for
//! TAP, `target::path` for libtest) so [`crate::judgement::metrics`] can say which test
//! regressed. A repeated id within one report gets a `#2`, `#3` suffix
//! rather than silently collapsing two tests into one.
//!
//! Trust: when a structured report is configured (`junit:PATH`), the log is
//! never consulted for pass/fail; a test suite can print anything. A report
//! that is missing or holds zero tests is an error ([`ReportError`]) which the
//! runner turns into `failed` / `no_tests`: never a silent 100%.

pub mod coverage;
pub mod junit;
pub mod libtest;
pub mod summary;
pub mod tap;

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where `/genesis/out` appears inside the container; report paths in the
/// config are written as container paths and resolved against the files
/// downloaded from there.
pub const OUT_DIR: &str = "/genesis/out/";

/// What happened to one test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Passed,
    /// An assertion failed (JUnit `<failure>`, TAP `not ok`).
    Failed,
    /// The test could not run to its assertion (JUnit `<error>`, a crash,
    /// a test planned but never reported).
    Errored,
    /// Not run, or an expected failure (`# TODO`, xfail): not counted.
    Skipped,
}

impl crate::contract::Named for Outcome {
    const ALL: &'static [Self] = &[
        Outcome::Passed,
        Outcome::Failed,
        Outcome::Errored,
        Outcome::Skipped,
    ];
    fn as_str(self) -> &'static str {
        Outcome::as_str(self)
    }
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Failed => "failed",
            Outcome::Errored => "errored",
            Outcome::Skipped => "skipped",
        }
    }
}

/// One test's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestCase {
    /// Stable identity used to compare baseline and candidate.
    pub id: String,
    pub outcome: Outcome,
    /// As reported by the tool, when it reports one.
    pub duration_ms: Option<f64>,
    /// Failure or skip message, cut to [`MAX_MESSAGE`] bytes.
    pub message: Option<String>,
}

/// Every test of one suite run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestReport {
    /// Which parser produced it (`junit`, `tap`, `libtest`, `nextest`,
    /// `pytest`, `exunit`), shown to users next to the numbers.
    pub format: String,
    pub cases: Vec<TestCase>,
}

impl TestReport {
    pub fn count(&self, o: Outcome) -> usize {
        self.cases.iter().filter(|c| c.outcome == o).count()
    }

    /// Tests that ran: skipped ones are excluded (CONTRACT §5).
    pub fn test_count(&self) -> usize {
        self.cases.len() - self.count(Outcome::Skipped)
    }

    /// Failed plus errored.
    pub fn failures(&self) -> usize {
        self.count(Outcome::Failed) + self.count(Outcome::Errored)
    }
}

/// The `report` key of a repository's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportSpec {
    /// A JUnit XML file under `/genesis/out`, or every `*.xml` file under a
    /// directory when the path ends with `/`.
    Junit {
        path: String,
    },
    Tap,
    Libtest,
    Pytest,
    Exunit,
    /// A JUnit file in `/genesis/out` if there is one, else the first text
    /// format the log holds (TAP, libtest/nextest, pytest, ExUnit).
    Auto,
}

impl FromStr for ReportSpec {
    type Err = ReportError;

    fn from_str(s: &str) -> Result<Self, ReportError> {
        let spec = match s {
            "auto" => ReportSpec::Auto,
            "tap" => ReportSpec::Tap,
            "libtest" => ReportSpec::Libtest,
            "pytest" => ReportSpec::Pytest,
            "exunit" => ReportSpec::Exunit,
            _ => match s.strip_prefix("junit:") {
                Some(path) => ReportSpec::Junit {
                    path: junit_path(path)?,
                },
                None => {
                    return Err(ReportError::BadSpec {
                        spec: s.to_owned(),
                        reason: "expected \"junit:/genesis/out/FILE.xml\", \"tap\", \"libtest\", \
                                 \"pytest\", \"exunit\" or \"auto\""
                            .into(),
                    })
                }
            },
        };
        Ok(spec)
    }
}

/// Only `/genesis/out` comes back from the container, so a JUnit path must
/// name something under it; returns the path relative to it.
fn junit_path(path: &str) -> Result<String, ReportError> {
    let bad = |reason: &str| ReportError::BadSpec {
        spec: format!("junit:{path}"),
        reason: reason.to_owned(),
    };
    let rel = path
        .strip_prefix(OUT_DIR)
        .ok_or_else(|| bad("the report must be written under /genesis/out/"))?;
    if rel.is_empty() {
        return Ok(String::new());
    }
    if rel.split('/').any(|p| p == ".." || p == ".") {
        return Err(bad("the path may not contain . or .. components"));
    }
    Ok(rel.to_owned())
}

impl fmt::Display for ReportSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReportSpec::Junit { path } => write!(f, "junit:{OUT_DIR}{path}"),
            ReportSpec::Tap => f.write_str("tap"),
            ReportSpec::Libtest => f.write_str("libtest"),
            ReportSpec::Pytest => f.write_str("pytest"),
            ReportSpec::Exunit => f.write_str("exunit"),
            ReportSpec::Auto => f.write_str("auto"),
        }
    }
}

/// What a finished suite left behind.
pub struct ReportInput<'a> {
    /// Regular files of `/genesis/out`, paths relative to it.
    pub out_files: &'a [(String, Vec<u8>)],
    /// The captured (possibly capped) stdout and stderr.
    pub log: &'a str,
    /// How much a report may make genesis hold.
    pub bounds: Bounds,
}

/// What a suite reports never decides how much genesis holds (contract
/// §5): a report claiming more tests than `max_tests` (a TAP plan, a
/// summary's counts, or cases actually listed) or a test id longer than
/// `max_id_bytes` is refused before it is built, as `bad_report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// `[limits] max_tests`.
    pub max_tests: u64,
    pub max_id_bytes: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            max_tests: 100_000,
            max_id_bytes: MAX_ID_BYTES,
        }
    }
}

/// Longest test id kept (contract §5).
pub const MAX_ID_BYTES: usize = 4096;

impl Bounds {
    pub fn with_max_tests(max_tests: u64) -> Bounds {
        Bounds {
            max_tests,
            ..Bounds::default()
        }
    }

    /// Refuses a report that would hold `n` tests, past `max_tests`.
    pub fn count(&self, format: &str, n: u64, what: &str) -> Result<(), ReportError> {
        if n <= self.max_tests {
            return Ok(());
        }
        Err(ReportError::TooLarge {
            format: format.to_owned(),
            detail: format!(
                "{n} tests ({what}), more than [limits] max_tests ({})",
                self.max_tests
            ),
        })
    }

    /// Refuses a test id longer than `max_id_bytes`.
    pub fn id(&self, format: &str, id: &str) -> Result<(), ReportError> {
        if id.len() <= self.max_id_bytes {
            return Ok(());
        }
        Err(ReportError::TooLarge {
            format: format.to_owned(),
            detail: format!(
                "a test id of {} bytes, longer than the {} byte limit",
                id.len(),
                self.max_id_bytes
            ),
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ReportError {
    #[error("invalid report setting {spec:?}: {reason}")]
    BadSpec { spec: String, reason: String },
    #[error("the test suite wrote no report at {path}")]
    Missing { path: String },
    #[error("the {format} report {file} is malformed: {detail}")]
    Malformed {
        format: &'static str,
        file: String,
        detail: String,
    },
    #[error("no tests found in the {format} report")]
    NoTests { format: String },
    #[error("the {format} report claims {detail}; genesis holds no more than that")]
    TooLarge { format: String, detail: String },
}

/// Longest message kept per test: enough to see the assertion, bounded so
/// a test that dumps megabytes into its failure does not bloat the store.
pub const MAX_MESSAGE: usize = 4096;

/// Parses what a suite left behind according to `spec`.
pub fn parse_report(spec: &ReportSpec, input: &ReportInput) -> Result<TestReport, ReportError> {
    let report = match spec {
        ReportSpec::Junit { path } => {
            junit::parse_files(&select_junit_files(path, input)?, &input.bounds)?
        }
        ReportSpec::Tap => tap::parse(input.log, &input.bounds)?,
        ReportSpec::Libtest => libtest::parse(input.log, &input.bounds)?,
        ReportSpec::Pytest => summary::parse_pytest(input.log, &input.bounds)?,
        ReportSpec::Exunit => summary::parse_exunit(input.log, &input.bounds)?,
        ReportSpec::Auto => parse_auto(input)?,
    };
    if report.cases.is_empty() {
        return Err(ReportError::NoTests {
            format: report.format,
        });
    }
    input.bounds.count(
        &report.format,
        report.cases.len() as u64,
        "the cases it lists",
    )?;
    for case in &report.cases {
        input.bounds.id(&report.format, &case.id)?;
    }
    Ok(report)
}

fn select_junit_files<'a>(
    path: &str,
    input: &'a ReportInput,
) -> Result<Vec<(&'a str, &'a [u8])>, ReportError> {
    let is_dir = path.is_empty() || path.ends_with('/');
    let files: Vec<(&str, &[u8])> = input
        .out_files
        .iter()
        .filter(|(name, _)| {
            if is_dir {
                name.starts_with(path) && name.ends_with(".xml")
            } else {
                name == path
            }
        })
        .map(|(name, bytes)| (name.as_str(), bytes.as_slice()))
        .collect();
    if files.is_empty() {
        return Err(ReportError::Missing {
            path: format!("{OUT_DIR}{path}"),
        });
    }
    Ok(files)
}

fn parse_auto(input: &ReportInput) -> Result<TestReport, ReportError> {
    let xml: Vec<(&str, &[u8])> = input
        .out_files
        .iter()
        .filter(|(name, _)| name.ends_with(".xml"))
        .map(|(name, bytes)| (name.as_str(), bytes.as_slice()))
        .collect();
    if !xml.is_empty() {
        return junit::parse_files(&xml, &input.bounds);
    }
    let parsers: [TextParser; 4] = [
        tap::parse,
        libtest::parse,
        summary::parse_pytest,
        summary::parse_exunit,
    ];
    for parse in parsers {
        let report = parse(input.log, &input.bounds)?;
        if !report.cases.is_empty() {
            return Ok(report);
        }
    }
    Ok(TestReport {
        format: "auto".into(),
        cases: Vec::new(),
    })
}

/// A parser of the log's text formats.
type TextParser = fn(&str, &Bounds) -> Result<TestReport, ReportError>;

/// Builds a report, giving repeated ids a `#2`, `#3`… suffix in order of
/// appearance so that both runs of a suite number them the same way.
pub(crate) fn with_unique_ids(format: &str, cases: Vec<TestCase>) -> TestReport {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let cases = cases
        .into_iter()
        .map(|mut case| {
            let n = seen.entry(case.id.clone()).or_insert(0);
            *n += 1;
            if *n > 1 {
                case.id = format!("{}#{}", case.id, n);
            }
            case
        })
        .collect();
    TestReport {
        format: format.to_owned(),
        cases,
    }
}

/// Cuts a message to [`MAX_MESSAGE`] bytes at a character boundary.
pub(crate) fn bounded_message(text: &str) -> Option<String> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if text.len() <= MAX_MESSAGE {
        return Some(text.to_owned());
    }
    let mut end = MAX_MESSAGE;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Some(format!(
        "{}… ({} bytes cut)",
        &text[..end],
        text.len() - end
    ))
}

/// (id, outcome) of every case, for the parsers' unit tests.
#[cfg(test)]
pub(crate) fn outcomes(r: &TestReport) -> Vec<(&str, Outcome)> {
    r.cases.iter().map(|c| (c.id.as_str(), c.outcome)).collect()
}

pub(crate) fn case(id: impl Into<String>, outcome: Outcome) -> TestCase {
    TestCase {
        id: id.into(),
        outcome,
        duration_ms: None,
        message: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(files: &'a [(String, Vec<u8>)], log: &'a str) -> ReportInput<'a> {
        ReportInput {
            out_files: files,
            log,
            bounds: Bounds::default(),
        }
    }

    #[test]
    fn specs_parse_and_name_what_is_wrong() {
        assert_eq!(
            "junit:/genesis/out/junit.xml".parse::<ReportSpec>(),
            Ok(ReportSpec::Junit {
                path: "junit.xml".into()
            })
        );
        assert_eq!("tap".parse::<ReportSpec>(), Ok(ReportSpec::Tap));
        assert_eq!("auto".parse::<ReportSpec>(), Ok(ReportSpec::Auto));
        let e = "junit:/tmp/x.xml".parse::<ReportSpec>().unwrap_err();
        assert!(e.to_string().contains("/genesis/out/"), "{e}");
        let e = "junit:/genesis/out/../x.xml"
            .parse::<ReportSpec>()
            .unwrap_err();
        assert!(e.to_string().contains(".."), "{e}");
        let e = "xunit".parse::<ReportSpec>().unwrap_err();
        assert!(e.to_string().contains("\"xunit\""), "{e}");
        for s in ["junit:/genesis/out/r.xml", "tap", "libtest", "auto"] {
            assert_eq!(s.parse::<ReportSpec>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn a_configured_junit_file_that_is_missing_is_an_error_even_if_the_log_looks_fine() {
        let spec: ReportSpec = "junit:/genesis/out/junit.xml".parse().unwrap();
        let e = parse_report(&spec, &input(&[], "1..1\nok 1 - fine\n")).unwrap_err();
        assert_eq!(
            e,
            ReportError::Missing {
                path: "/genesis/out/junit.xml".into()
            }
        );
    }

    #[test]
    fn an_empty_report_is_no_tests_not_a_pass() {
        let files = vec![(
            "junit.xml".to_owned(),
            b"<testsuites><testsuite name=\"x\" tests=\"0\"/></testsuites>".to_vec(),
        )];
        let spec: ReportSpec = "junit:/genesis/out/junit.xml".parse().unwrap();
        let e = parse_report(&spec, &input(&files, "")).unwrap_err();
        assert!(matches!(e, ReportError::NoTests { .. }), "{e:?}");
        let e = parse_report(&ReportSpec::Tap, &input(&[], "Segmentation fault\n")).unwrap_err();
        assert!(matches!(e, ReportError::NoTests { .. }), "{e:?}");
    }

    #[test]
    fn a_junit_directory_takes_every_xml_file_under_it() {
        let files = vec![
            (
                "reports/a.xml".to_owned(),
                br#"<testsuite name="a"><testcase classname="A" name="one"/></testsuite>"#.to_vec(),
            ),
            ("reports/notes.txt".to_owned(), b"not xml".to_vec()),
            (
                "reports/b.xml".to_owned(),
                br#"<testsuite name="b"><testcase classname="B" name="two"><failure/></testcase></testsuite>"#.to_vec(),
            ),
        ];
        let spec: ReportSpec = "junit:/genesis/out/reports/".parse().unwrap();
        let r = parse_report(&spec, &input(&files, "")).unwrap();
        assert_eq!(r.test_count(), 2);
        assert_eq!(r.failures(), 1);
    }

    #[test]
    fn auto_prefers_a_junit_file_over_the_log_then_tries_text_formats() {
        let files = vec![(
            "junit.xml".to_owned(),
            br#"<testsuite><testcase classname="c" name="n"/></testsuite>"#.to_vec(),
        )];
        let r = parse_report(&ReportSpec::Auto, &input(&files, "1..1\nnot ok 1 - x\n")).unwrap();
        assert_eq!(r.format, "junit");
        let r = parse_report(&ReportSpec::Auto, &input(&[], "1..1\nnot ok 1 - x\n")).unwrap();
        assert_eq!(r.format, "tap");
        let log = "running 1 test\ntest a::b ... ok\n\ntest result: ok. 1 passed; 0 failed\n";
        let r = parse_report(&ReportSpec::Auto, &input(&[], log)).unwrap();
        assert_eq!(r.format, "libtest");
        let r = parse_report(&ReportSpec::Auto, &input(&[], "3 passed in 0.01s\n")).unwrap();
        assert_eq!(r.format, "pytest");
        let log = "Finished in 0.1 seconds\n2 tests, 0 failures\n";
        let r = parse_report(&ReportSpec::Auto, &input(&[], log)).unwrap();
        assert_eq!(r.format, "exunit");
    }

    #[test]
    fn repeated_ids_are_numbered_not_merged() {
        let r = with_unique_ids(
            "tap",
            vec![
                case("x", Outcome::Passed),
                case("x", Outcome::Failed),
                case("y", Outcome::Passed),
                case("x", Outcome::Passed),
            ],
        );
        let ids: Vec<&str> = r.cases.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["x", "x#2", "y", "x#3"]);
    }

    #[test]
    fn counts_follow_the_contract() {
        let r = TestReport {
            format: "t".into(),
            cases: vec![
                case("a", Outcome::Passed),
                case("b", Outcome::Failed),
                case("c", Outcome::Errored),
                case("d", Outcome::Skipped),
            ],
        };
        assert_eq!(r.test_count(), 3);
        assert_eq!(r.failures(), 2);
    }

    #[test]
    fn long_messages_are_cut_at_a_char_boundary() {
        let long = "é".repeat(MAX_MESSAGE);
        let m = bounded_message(&long).unwrap();
        assert!(m.len() < MAX_MESSAGE + 40);
        assert!(m.contains("bytes cut"));
        assert_eq!(bounded_message("  \n"), None);
    }
}
