//! TEMPORARY STUB until the parser module lands.
use serde::{Deserialize, Serialize};
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Passed,
    Failed,
    Errored,
    Skipped,
}
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestCase {
    pub id: String,
    pub outcome: Outcome,
    pub duration_ms: Option<f64>,
    pub message: Option<String>,
}
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestReport {
    pub format: String,
    pub cases: Vec<TestCase>,
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportSpec {
    Junit { path: String },
    Tap,
    Libtest,
    Pytest,
    Exunit,
    Auto,
}
impl std::str::FromStr for ReportSpec {
    type Err = ReportError;
    fn from_str(s: &str) -> Result<Self, ReportError> {
        Ok(match s {
            "auto" => ReportSpec::Auto,
            "tap" => ReportSpec::Tap,
            "libtest" => ReportSpec::Libtest,
            "pytest" => ReportSpec::Pytest,
            "exunit" => ReportSpec::Exunit,
            s if s.starts_with("junit:") => ReportSpec::Junit {
                path: s[6..].into(),
            },
            _ => return Err(ReportError::NoTests { format: s.into() }),
        })
    }
}
pub struct ReportInput<'a> {
    pub out_files: &'a [(String, Vec<u8>)],
    pub log: &'a str,
}
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("no tests in {format}")]
    NoTests { format: String },
}
pub fn parse_report(_spec: &ReportSpec, _input: &ReportInput) -> Result<TestReport, ReportError> {
    Err(ReportError::NoTests {
        format: "stub".into(),
    })
}
impl TestReport {
    pub fn count(&self, o: Outcome) -> usize {
        self.cases.iter().filter(|c| c.outcome == o).count()
    }
    pub fn test_count(&self) -> usize {
        self.cases.len() - self.count(Outcome::Skipped)
    }
    pub fn failures(&self) -> usize {
        self.count(Outcome::Failed) + self.count(Outcome::Errored)
    }
}
