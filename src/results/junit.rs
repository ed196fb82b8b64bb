//! JUnit XML, as the common producers write it.
//!
//! There is no single JUnit schema; what we accept is the intersection that
//! pytest, cargo-nextest, ExUnit's `JUnitFormatter`, jest-junit and Maven
//! surefire agree on:
//! * `<testsuites>` (optional, possibly nested) holding `<testsuite>`s
//!   holding `<testcase classname=".." name=".." time="..">`;
//! * a testcase's children decide its outcome: `<error>` (errored) beats
//!   `<failure>` (failed) beats `<skipped>` (skipped); none means passed.
//!   nextest's `<flakyFailure>`/`<rerunFailure>` and `<system-out>`,
//!   `<properties>` and anything unknown are ignored;
//! * the message is the `message` attribute, else the element's text.
//!
//! The identity is `classname::name`; when a producer leaves `classname`
//! empty the enclosing suite's name stands in for it.
//!
//! quick-xml reads the document as a stream of events, so a large report
//! costs no more memory than its largest test's message.

use quick_xml::events::{BytesEnd, BytesRef, BytesStart, Event};
use quick_xml::{Reader, XmlVersion};

use super::{bounded_message, with_unique_ids, Bounds, Outcome, ReportError, TestCase, TestReport};

/// Parses one or more JUnit files (e.g. one per test module) into one report.
/// At most `bounds.max_tests` cases are built, whatever the files hold.
pub fn parse_files(files: &[(&str, &[u8])], bounds: &Bounds) -> Result<TestReport, ReportError> {
    let mut cases = Vec::new();
    for (name, bytes) in files {
        parse_cases(name, bytes, bounds, &mut cases)?;
    }
    Ok(with_unique_ids("junit", cases))
}

/// A testcase while its children are being read.
struct OpenCase {
    case: TestCase,
    /// Whether `message` came from an attribute (then text is not needed).
    message_from_attribute: bool,
    /// Whether the reader is inside the verdict element, whose text is the
    /// message; text of `<system-out>` and the like must not leak into it.
    inside_verdict: bool,
    text: String,
}

/// Parses one JUnit file onto `cases`, refusing past the bounds.
pub fn parse_cases(
    file: &str,
    bytes: &[u8],
    bounds: &Bounds,
    cases: &mut Vec<TestCase>,
) -> Result<(), ReportError> {
    let text = String::from_utf8_lossy(bytes);
    let mut reader = Reader::from_str(&text);
    let malformed = |reader: &Reader<&[u8]>, detail: String| ReportError::Malformed {
        format: "junit",
        file: file.to_owned(),
        detail: format!("{detail} (at byte {})", reader.error_position()),
    };
    let mut state = CaseReader {
        bounds,
        cases,
        suites: Vec::new(),
        open: None,
    };
    loop {
        let event = reader
            .read_event()
            .map_err(|e| malformed(&reader, e.to_string()))?;
        match event {
            Event::Start(e) => state.start(&e),
            Event::Empty(e) => state.empty(&e)?,
            Event::End(e) => state.end(&e)?,
            Event::Text(t) => state.text(&t.xml10_content()),
            Event::CData(t) => state.text(&t.xml10_content()),
            Event::GeneralRef(r) => state.text(&resolve_reference(&r)),
            Event::Eof => break,
            _ => {}
        }
    }
    if state.open.is_some() {
        return Err(malformed(&reader, "a <testcase> is never closed".into()));
    }
    Ok(())
}

/// One file's reading so far: the events arrive one at a time, and a
/// testcase's outcome and message are only known at its end.
struct CaseReader<'a> {
    bounds: &'a Bounds,
    cases: &'a mut Vec<TestCase>,
    /// Names of the enclosing `<testsuite>`s, innermost last: they stand
    /// in for an empty `classname`.
    suites: Vec<String>,
    open: Option<OpenCase>,
}

impl CaseReader<'_> {
    fn start(&mut self, e: &BytesStart) {
        let tag = local_name(e);
        match tag.as_str() {
            "testsuite" => self.suites.push(attribute(e, "name").unwrap_or_default()),
            "testcase" => self.open = Some(open_case(e, &self.suites)),
            other => {
                if let Some(case) = self.open.as_mut() {
                    case.inside_verdict = apply_child(case, other, e);
                }
            }
        }
    }

    /// A self-closing element: a testcase without children is complete at
    /// once, and a verdict without text has no text to collect.
    fn empty(&mut self, e: &BytesStart) -> Result<(), ReportError> {
        let tag = local_name(e);
        match tag.as_str() {
            "testsuite" => {}
            "testcase" => self.push(open_case(e, &self.suites).case)?,
            other => {
                if let Some(case) = self.open.as_mut() {
                    apply_child(case, other, e);
                    case.inside_verdict = false;
                }
            }
        }
        Ok(())
    }

    fn end(&mut self, e: &BytesEnd) -> Result<(), ReportError> {
        let name = e.local_name();
        match name.as_ref() {
            "testsuite" => {
                self.suites.pop();
            }
            "testcase" => {
                if let Some(done) = self.open.take() {
                    self.push(close_case(done))?;
                }
            }
            "failure" | "error" | "skipped" => {
                if let Some(case) = self.open.as_mut() {
                    case.inside_verdict = false;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Adds a finished case, refusing one past `max_tests` or with an
    /// oversized id before it is kept.
    fn push(&mut self, case: TestCase) -> Result<(), ReportError> {
        self.bounds
            .count("junit", self.cases.len() as u64 + 1, "the cases it lists")?;
        self.bounds.id("junit", &case.id)?;
        self.cases.push(case);
        Ok(())
    }

    /// Text inside the open case's verdict, the message when no attribute
    /// gave one; collected up to twice the message cap, as it is cut later.
    fn text(&mut self, text: &str) {
        if let Some(case) = self.open.as_mut() {
            if case.inside_verdict
                && !case.message_from_attribute
                && case.text.len() < super::MAX_MESSAGE * 2
            {
                case.text.push_str(text);
            }
        }
    }
}

fn open_case(e: &BytesStart, suites: &[String]) -> OpenCase {
    let name = attribute(e, "name").unwrap_or_default();
    let classname = attribute(e, "classname")
        .filter(|c| !c.is_empty())
        .or_else(|| suites.last().cloned())
        .unwrap_or_default();
    let id = if classname.is_empty() {
        name
    } else {
        format!("{classname}::{name}")
    };
    let duration_ms = attribute(e, "time")
        .and_then(|t| t.trim().replace(',', "").parse::<f64>().ok())
        .filter(|t| t.is_finite() && *t >= 0.0)
        .map(|seconds| seconds * 1000.0);
    OpenCase {
        case: TestCase {
            id,
            outcome: Outcome::Passed,
            duration_ms,
            message: None,
        },
        message_from_attribute: false,
        inside_verdict: false,
        text: String::new(),
    }
}

/// Applies a child element of a testcase: only the verdict elements count.
/// Returns whether this element now decides the outcome.
fn apply_child(open: &mut OpenCase, tag: &str, e: &BytesStart) -> bool {
    let outcome = match tag {
        "error" => Outcome::Errored,
        "failure" => Outcome::Failed,
        "skipped" => Outcome::Skipped,
        _ => return false,
    };
    // A case starts as passed, which every verdict outranks.
    if rank(outcome) <= rank(open.case.outcome) {
        return false;
    }
    open.case.outcome = outcome;
    open.text.clear();
    let message = attribute(e, "message").and_then(|m| bounded_message(&m));
    open.message_from_attribute = message.is_some();
    open.case.message = message;
    true
}

/// Which verdict wins when a testcase has several.
fn rank(outcome: Outcome) -> u8 {
    match outcome {
        Outcome::Passed => 0,
        Outcome::Skipped => 1,
        Outcome::Failed => 2,
        Outcome::Errored => 3,
    }
}

fn close_case(mut open: OpenCase) -> TestCase {
    if open.case.message.is_none() {
        open.case.message = bounded_message(&open.text);
    }
    open.case
}

fn local_name(e: &BytesStart) -> String {
    e.local_name().as_ref().to_owned()
}

fn attribute(e: &BytesStart, name: &str) -> Option<String> {
    let attr = e.try_get_attribute(name).ok().flatten()?;
    match attr.normalized_value(XmlVersion::Implicit1_0) {
        Ok(v) => Some(v.into_owned()),
        Err(_) => Some(attr.value.clone().into_owned()),
    }
}

/// `&amp;` and `&#x1B;` arrive as separate events in quick-xml; unknown
/// entities are kept literally rather than failing the whole report.
fn resolve_reference(r: &BytesRef) -> String {
    if let Ok(Some(c)) = r.resolve_char_ref() {
        return c.to_string();
    }
    let name = r.xml10_content();
    match quick_xml::escape::resolve_predefined_entity(&name) {
        Some(s) => s.to_owned(),
        None => format!("&{name};"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::outcomes;

    fn parse(xml: &str) -> TestReport {
        parse_files(&[("r.xml", xml.as_bytes())], &Bounds::default()).unwrap()
    }

    #[test]
    fn a_file_listing_more_than_max_tests_is_refused() {
        let many: String = (0..1001)
            .map(|n| format!("<testcase name=\"t{n}\"/>"))
            .collect();
        let xml = format!("<testsuite name=\"s\">{many}</testsuite>");
        let err =
            parse_files(&[("r.xml", xml.as_bytes())], &Bounds::with_max_tests(1000)).unwrap_err();
        assert!(err.to_string().contains("max_tests (1000)"), "{err}");
    }

    #[test]
    fn failure_error_skipped_and_pass_are_told_apart() {
        let r = parse(
            r#"<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="s">
  <testcase classname="m" name="ok" time="0.25"/>
  <testcase classname="m" name="fails"><failure message="assert 1 == 2">trace</failure></testcase>
  <testcase classname="m" name="errs"><error message="fixture broke"/></testcase>
  <testcase classname="m" name="skips"><skipped message="not on linux"/></testcase>
  <testcase classname="m" name="both"><failure/><error message="teardown"/></testcase>
</testsuite></testsuites>"#,
        );
        assert_eq!(
            outcomes(&r),
            [
                ("m::ok", Outcome::Passed),
                ("m::fails", Outcome::Failed),
                ("m::errs", Outcome::Errored),
                ("m::skips", Outcome::Skipped),
                ("m::both", Outcome::Errored),
            ]
        );
        assert_eq!(r.cases[0].duration_ms, Some(250.0));
        assert_eq!(r.cases[1].message.as_deref(), Some("assert 1 == 2"));
        assert_eq!(r.cases[3].message.as_deref(), Some("not on linux"));
        assert_eq!(r.cases[4].message.as_deref(), Some("teardown"));
    }

    #[test]
    fn message_falls_back_to_element_text_with_entities_and_cdata() {
        let r = parse(
            "<testsuite><testcase classname=\"c\" name=\"n\">\
             <failure>a &lt; b &amp;&amp; &#x263A; <![CDATA[<raw> & \"q\"]]></failure>\
             <system-out>noise</system-out></testcase></testsuite>",
        );
        assert_eq!(
            r.cases[0].message.as_deref(),
            Some("a < b && \u{263A} <raw> & \"q\"")
        );
    }

    #[test]
    fn odd_characters_in_names_and_attributes_survive() {
        let r = parse(
            "<testsuite><testcase classname=\"t.m\" name=\"test_x[a&amp;b-&#9;tab-ü-\u{1F600}]\"/></testsuite>",
        );
        assert_eq!(r.cases[0].id, "t.m::test_x[a&b-\ttab-ü-\u{1F600}]");
    }

    #[test]
    fn nested_suites_lend_their_name_when_classname_is_missing() {
        let r = parse(
            r#"<testsuites><testsuite name="outer"><testsuite name="inner">
                 <testcase name="a"/></testsuite><testcase name="b"/></testsuite>
                 <testsuite name="other"><testcase name="c" classname=""/></testsuite></testsuites>"#,
        );
        let ids: Vec<&str> = r.cases.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["inner::a", "outer::b", "other::c"]);
    }

    #[test]
    fn nextest_flaky_and_rerun_elements_do_not_change_a_pass() {
        let r = parse(
            r#"<testsuites name="nextest-run"><testsuite name="crate::bin">
               <testcase name="t::flaky" classname="crate::bin" timestamp="2026-01-01T00:00:00Z" time="0.01">
                 <flakyFailure type="test failure" message="first try failed"><system-out>x</system-out></flakyFailure>
               </testcase></testsuite></testsuites>"#,
        );
        assert_eq!(outcomes(&r), [("crate::bin::t::flaky", Outcome::Passed)]);
        assert_eq!(r.cases[0].message, None);
    }

    #[test]
    fn malformed_xml_is_named_with_its_file() {
        let e = parse_files(
            &[("bad.xml", b"<testsuite><testcase name=\"a\"></testsuite>")],
            &Bounds::default(),
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("bad.xml"), "{text}");
        let e = parse_files(
            &[("cut.xml", b"<testsuite><testcase name=\"a\">")],
            &Bounds::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("cut.xml"), "{e}");
    }

    #[test]
    fn invalid_utf8_does_not_fail_the_report() {
        let r = parse_files(
            &[(
                "latin1.xml",
                b"<testsuite><testcase classname=\"c\" name=\"caf\xe9\"/></testsuite>",
            )],
            &Bounds::default(),
        )
        .unwrap();
        assert_eq!(r.cases[0].id, "c::caf\u{FFFD}");
    }

    #[test]
    fn commas_in_times_and_garbage_times_are_tolerated() {
        let r = parse(
            r#"<testsuite><testcase classname="c" name="a" time="1,234.5"/><testcase classname="c" name="b" time="NaN"/></testsuite>"#,
        );
        assert_eq!(r.cases[0].duration_ms, Some(1_234_500.0));
        assert_eq!(r.cases[1].duration_ms, None);
    }
}
