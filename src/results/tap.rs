//! TAP (Test Anything Protocol) versions 12–14, read from the log.
//!
//! * Test lines: `ok N - description` / `not ok N description`, at column 0
//!   (indented lines are TAP 14 subtests, summarised by their parent line).
//! * Directives: `# SKIP reason` → skipped; `not ok … # TODO` is a known
//!   failure → skipped (TAP says it must not fail the suite); `ok … # TODO`
//!   passed unexpectedly → passed. Directive words match case-insensitively
//!   by prefix (`# skipped: …` counts), and `\#` in a description is literal.
//! * A YAML diagnostic block (`  ---` … `  ...`) after a failing test becomes
//!   its message.
//! * Plan `1..N`: tests planned but never reported are errored, so a suite
//!   that dies half-way cannot look green; `Bail out!` names the reason.
//!   `1..0 # SKIP reason` is a deliberately empty run.
//!
//! Identity: the description when there is one (stable when tests are
//! added or renumbered), else `test N`.

use super::{
    bounded_message, case, with_unique_ids, Bounds, Outcome, ReportError, TestCase, TestReport,
};

pub fn parse(log: &str, bounds: &Bounds) -> Result<TestReport, ReportError> {
    let mut state = State {
        bounds: *bounds,
        ..State::default()
    };
    for line in log.lines() {
        state.line(line.trim_end_matches('\r'));
        if let Some(e) = state.refused.take() {
            return Err(e);
        }
    }
    state.finish()
}

#[derive(Default)]
struct State {
    cases: Vec<TestCase>,
    /// Test numbers seen, to find planned tests that never reported.
    numbers: Vec<u64>,
    plan: Option<u64>,
    bail_out: Option<String>,
    bounds: Bounds,
    /// Set when the log claims more than `bounds` allow.
    refused: Option<ReportError>,
    /// Lines of a YAML block being read for the last failing test.
    yaml: Option<Vec<String>>,
}

impl State {
    fn line(&mut self, line: &str) {
        if self.bail_out.is_some() {
            return;
        }
        if let Some(yaml) = self.yaml.as_mut() {
            let trimmed = line.trim();
            if trimmed == "..." {
                let text = std::mem::take(yaml).join("\n");
                self.yaml = None;
                if let Some(last) = self.cases.last_mut() {
                    if last.message.is_none() {
                        last.message = bounded_message(&text);
                    }
                }
            } else {
                yaml.push(line.to_owned());
            }
            return;
        }
        if line.starts_with("  ") && line.trim() == "---" {
            let last_failed = self
                .cases
                .last()
                .is_some_and(|c| c.outcome != Outcome::Passed);
            if last_failed {
                self.yaml = Some(Vec::new());
            }
            return;
        }
        if let Some(reason) = line.strip_prefix("Bail out!") {
            self.bail_out = Some(reason.trim().to_owned());
        } else if let Some(plan) = parse_plan(line) {
            // A plan is a claim: checked before anything is built for it.
            if let Err(e) = self.bounds.count("tap", plan, "its plan") {
                self.refused = Some(e);
                return;
            }
            self.plan.get_or_insert(plan);
        } else if let Some((number, test)) = parse_test_line(line, self.cases.len() as u64 + 1) {
            let checked = self
                .bounds
                .count("tap", self.cases.len() as u64 + 1, "the cases it lists")
                .and_then(|()| self.bounds.id("tap", &test.id));
            if let Err(e) = checked {
                self.refused = Some(e);
                return;
            }
            self.numbers.push(number);
            self.cases.push(test);
        }
    }

    fn finish(mut self) -> Result<TestReport, ReportError> {
        if let Some(plan) = self.plan {
            let reported: std::collections::HashSet<u64> = self.numbers.iter().copied().collect();
            let why = match &self.bail_out {
                Some(reason) if !reason.is_empty() => format!("not run: Bail out! {reason}"),
                Some(_) => "not run: Bail out!".to_owned(),
                None => "planned but never reported".to_owned(),
            };
            for n in 1..=plan {
                if !reported.contains(&n) {
                    let mut missing = case(format!("test {n}"), Outcome::Errored);
                    missing.message = Some(why.clone());
                    self.cases.push(missing);
                }
            }
        } else if let Some(reason) = self.bail_out {
            let mut bailed = case("Bail out!", Outcome::Errored);
            bailed.message = bounded_message(&reason);
            self.cases.push(bailed);
        }
        Ok(with_unique_ids("tap", self.cases))
    }
}

/// `1..N`, optionally followed by `# SKIP reason`.
fn parse_plan(line: &str) -> Option<u64> {
    let rest = line.strip_prefix("1..")?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let after = rest[digits.len()..].trim_start();
    if digits.is_empty() || !(after.is_empty() || after.starts_with('#')) {
        return None;
    }
    digits.parse().ok()
}

/// A top-level `ok` / `not ok` line; `next` numbers a line without one.
fn parse_test_line(line: &str, next: u64) -> Option<(u64, TestCase)> {
    let (passed, rest) = if let Some(rest) = line.strip_prefix("not ok") {
        (false, rest)
    } else if let Some(rest) = line.strip_prefix("ok") {
        (true, rest)
    } else {
        return None;
    };
    if !(rest.is_empty() || rest.starts_with(' ') || rest.starts_with('\t')) {
        return None; // "okay", "not okay": prose, not TAP
    }
    let rest = rest.trim_start();
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let number = digits.parse().unwrap_or(next);
    let rest = rest[digits.len()..].trim_start();
    let rest = rest.strip_prefix("- ").unwrap_or(rest);
    let (description, directive) = split_directive(rest);
    let description = description.trim().replace("\\#", "#");
    let id = if description.is_empty() {
        format!("test {number}")
    } else {
        description
    };
    let (outcome, message) = match directive {
        Some((Directive::Skip, reason)) => (Outcome::Skipped, reason),
        Some((Directive::Todo, reason)) if !passed => (Outcome::Skipped, reason),
        _ if passed => (Outcome::Passed, String::new()),
        _ => (Outcome::Failed, String::new()),
    };
    let mut test = case(id, outcome);
    test.message = bounded_message(&message);
    Some((number, test))
}

#[derive(Debug, PartialEq)]
enum Directive {
    Skip,
    Todo,
}

/// Splits `description # DIRECTIVE reason` at the first unescaped `#`
/// that starts a SKIP or TODO directive.
fn split_directive(text: &str) -> (&str, Option<(Directive, String)>) {
    let bytes = text.as_bytes();
    for (i, _) in text.match_indices('#') {
        if i > 0 && bytes[i - 1] == b'\\' {
            continue;
        }
        let after = text[i + 1..].trim_start();
        let word: String = after
            .chars()
            .take_while(|c| c.is_ascii_alphabetic())
            .collect::<String>()
            .to_ascii_lowercase();
        let directive = if word.starts_with("skip") {
            Directive::Skip
        } else if word == "todo" {
            Directive::Todo
        } else {
            continue;
        };
        let reason = after[word.len()..]
            .trim_start_matches([':', ' ', '\t'])
            .trim()
            .to_owned();
        return (&text[..i], Some((directive, reason)));
    }
    (text, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::outcomes;

    fn parse(log: &str) -> TestReport {
        super::parse(log, &Bounds::default()).unwrap()
    }

    #[test]
    fn a_plan_or_an_id_past_the_bounds_is_refused_before_it_is_built() {
        let bounds = Bounds::with_max_tests(1000);
        let err = super::parse("1..4000000000\nok 1 - a\n", &bounds).unwrap_err();
        assert!(matches!(err, ReportError::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains("max_tests (1000)"), "{err}");
        let many: String = (1..=1001).map(|n| format!("ok {n} - t{n}\n")).collect();
        assert!(super::parse(&many, &bounds).is_err());
        let long = format!("ok 1 - {}\n", "x".repeat(5000));
        assert!(super::parse(&long, &bounds)
            .unwrap_err()
            .to_string()
            .contains("test id"));
        assert_eq!(
            super::parse("1..1000\nok 1 - a\n", &bounds)
                .unwrap()
                .cases
                .len(),
            1000
        );
    }

    #[test]
    fn tap13_with_directives_and_yaml() {
        let log = "TAP version 13\n1..6\nok 1 - adds\nnot ok 2 - divides\n  ---\n  message: 'division by zero'\n  severity: fail\n  ...\nok 3 - remote # SKIP no network\nnot ok 4 - unicode # TODO not yet\nok 5 # todo fixed early\nok 6 - hash \\# in name\n";
        let r = parse(log);
        assert_eq!(
            outcomes(&r),
            [
                ("adds", Outcome::Passed),
                ("divides", Outcome::Failed),
                ("remote", Outcome::Skipped),
                ("unicode", Outcome::Skipped),
                ("test 5", Outcome::Passed),
                ("hash # in name", Outcome::Passed),
            ]
        );
        assert!(r.cases[1]
            .message
            .as_deref()
            .unwrap()
            .contains("division by zero"));
        assert_eq!(r.cases[2].message.as_deref(), Some("no network"));
        assert_eq!(r.test_count(), 4);
        assert_eq!(r.failures(), 1);
    }

    #[test]
    fn tap14_subtests_are_summarised_by_the_parent() {
        let log = "TAP version 14\n1..2\n# Subtest: group\n    1..2\n    ok 1 - inner a\n    not ok 2 - inner b\nnot ok 1 - group\nok 2 - other\n";
        let r = parse(log);
        assert_eq!(
            outcomes(&r),
            [("group", Outcome::Failed), ("other", Outcome::Passed)]
        );
    }

    #[test]
    fn bail_out_marks_the_rest_of_the_plan_errored() {
        let r = parse("1..4\nok 1 - a\nnot ok 2 - b\nBail out! database gone\nok 3 - c\n");
        assert_eq!(
            outcomes(&r),
            [
                ("a", Outcome::Passed),
                ("b", Outcome::Failed),
                ("test 3", Outcome::Errored),
                ("test 4", Outcome::Errored),
            ]
        );
        assert_eq!(
            r.cases[2].message.as_deref(),
            Some("not run: Bail out! database gone")
        );
    }

    #[test]
    fn a_suite_that_dies_before_its_plan_is_done_cannot_look_green() {
        let r = parse("1..3\nok 1 - a\nSegmentation fault (core dumped)\n");
        assert_eq!(r.failures(), 2);
        let r = parse("ok 1 - a\nBail out!\n");
        assert_eq!(r.failures(), 1);
    }

    #[test]
    fn trailing_plan_and_skip_plan_and_noise() {
        let r =
            parse("noise\nok 1 first\nokay this is prose\nnot okay either\nok 2 second\n1..2\n");
        assert_eq!(
            outcomes(&r),
            [("first", Outcome::Passed), ("second", Outcome::Passed)]
        );
        let r = parse("1..0 # SKIP nothing to do here\n");
        assert!(r.cases.is_empty());
    }

    #[test]
    fn case_insensitive_skip_words_and_repeated_descriptions() {
        let r = parse("ok 1 - a # Skipped: later\nok 2 - a\nok 3 - a # not a directive\n");
        assert_eq!(
            outcomes(&r),
            [
                ("a", Outcome::Skipped),
                ("a#2", Outcome::Passed),
                ("a # not a directive", Outcome::Passed),
            ]
        );
    }

    #[test]
    fn crlf_logs_parse() {
        let r = parse("1..1\r\nnot ok 1 - windows\r\n");
        assert_eq!(outcomes(&r), [("windows", Outcome::Failed)]);
    }
}
