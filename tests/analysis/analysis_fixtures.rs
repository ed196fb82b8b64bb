//! Hand-written fixtures, one per construct per language, with exact
//! expected call-site lines (and complexity for the `complexity.*` ones):
//! `fixtures/expected.toml`.
//!
//! Each fixture also marks its sites with a trailing `site` comment; the test
//! checks the markers and the TOML agree, so the expectation is visible where
//! the code is.

use std::path::{Path, PathBuf};

use genesis::analysis::{Analyzer, FunctionComplexity, Language, Shapes};
use serde::Deserialize;

/// One small file per construct and language, with `expected.toml`.
fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/analysis")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expected {
    fixture: Vec<Fixture>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    path: String,
    language: Language,
    llm_call_lines: Vec<u32>,
    #[serde(default)]
    unmarked: Vec<u32>,
    complexity: Option<u32>,
    functions: Option<Vec<FunctionComplexity>>,
    note: String,
}

/// Lines carrying a trailing `site` marker comment, once per `site` word.
fn marked_lines(source: &str) -> Vec<u32> {
    let mut lines = Vec::new();
    for (i, line) in source.lines().enumerate() {
        let trimmed = line.trim_end().trim_end_matches("*/}").trim_end();
        let Some(pos) = ["# ", "// ", "/* "]
            .iter()
            .filter_map(|m| trimmed.rfind(m).map(|p| p + m.len()))
            .max()
        else {
            continue;
        };
        let words: Vec<&str> = trimmed[pos..].split_whitespace().collect();
        if !words.is_empty() && words.iter().all(|w| *w == "site") {
            let line_no = u32::try_from(i + 1).unwrap();
            lines.extend(std::iter::repeat_n(line_no, words.len()));
        }
    }
    lines
}

#[test]
fn fixtures_match_expected_lines_and_complexity() {
    let text = std::fs::read_to_string(fixtures_dir().join("expected.toml")).unwrap();
    let expected: Expected = toml::from_str(&text).expect("expected.toml parses");
    let analyzer = Analyzer::new(Shapes::builtin()).unwrap();
    let mut failures = Vec::new();
    for fx in &expected.fixture {
        let source = std::fs::read_to_string(fixtures_dir().join(&fx.path)).unwrap();

        let mut marked = marked_lines(&source);
        marked.extend(&fx.unmarked);
        marked.sort_unstable();
        assert_eq!(
            marked, fx.llm_call_lines,
            "{}: `site` markers disagree with expected.toml",
            fx.path
        );

        assert_eq!(
            analyzer.language_for(&fx.path),
            Some(fx.language),
            "{}",
            fx.path
        );
        let got = analyzer.analyze(&fx.path, &source, None).unwrap();
        assert_eq!(got.language, fx.language);
        assert_eq!(got.llm_call_sites as usize, got.llm_call_lines.len());
        if got.llm_call_lines != fx.llm_call_lines {
            failures.push(format!(
                "{}: expected {:?}, got {:?} ({})",
                fx.path, fx.llm_call_lines, got.llm_call_lines, fx.note
            ));
        }
        if let Some(functions) = &fx.functions {
            if &got.functions != functions {
                failures.push(format!(
                    "{}: functions\n expected {functions:?}\n got      {:?}",
                    fx.path, got.functions
                ));
            }
        }
        if let Some(complexity) = fx.complexity {
            if got.complexity != complexity {
                failures.push(format!(
                    "{}: complexity expected {complexity}, got {}",
                    fx.path, got.complexity
                ));
            }
        }
        let sum: u32 = got.functions.iter().map(|f| f.complexity).sum();
        assert_eq!(
            got.complexity, sum,
            "{}: complexity is the sum over functions",
            fx.path
        );
    }
    assert!(
        failures.is_empty(),
        "fixture failures:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_language_has_fixtures() {
    let text = std::fs::read_to_string(fixtures_dir().join("expected.toml")).unwrap();
    let expected: Expected = toml::from_str(&text).unwrap();
    for language in Language::ALL {
        assert!(
            expected.fixture.iter().any(|f| f.language == language),
            "no fixture for {language}"
        );
    }
}
