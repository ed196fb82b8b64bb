//! Line coverage of a candidate run, read from the coverage report it leaves under `/genesis/out`.
//!
//! [`line_coverage`] is `covered lines * 100 / coverable lines` (in that order: 7 of 9 lines is
//! `77.77777777777777`), or `None` when the report has no coverable lines.
//!
//! - **Cobertura XML** (coverage.py, pytest-cov, cargo-llvm-cov, istanbul): each `<line number=N
//!   hits=H>` counts once per (`filename` of its `<class>`, N), covered if any copy has hits > 0
//!   (tools repeat lines under `<methods>` and across classes). The rounded root `line-rate` is
//!   ignored; root `lines-covered`/`lines-valid` are used only if there is no `<line>` at all.
//! - **LCOV** (lcov, coverage.py `coverage lcov`, c8, grcov, cargo-llvm-cov): each `DA:LINE,HITS`
//!   counts once per (`SF:` path, LINE), across all records of a file (one per `TN:`). A file
//!   without any `DA:` gives its `LF:`/`LH:` (from its record with the largest `LH:`). CRLF, blank
//!   lines, a missing last `end_of_record` and unknown tags (lcov 2's `VER`, `FNL`…) are fine.
//!   Hand-parsed (~60 lines): the `lcov` crate (0.8) rejects tags it doesn't know (lcov 2's
//!   included) and non-UTF-8 lines, and the dedupe and fallback would still be needed.
//! - **JaCoCo XML**: the `<counter type="LINE" missed=M covered=C/>` directly under `<report>`
//!   (the total over all groups and packages; JaCoCo omits zero counters, so none means `None`).
//!   Its `<!DOCTYPE … "report.dtd">` is never loaded: quick-xml doesn't resolve DTDs.
//!
//! XML must be UTF-8 (a BOM is fine). Attribute values are used raw; numbers have no entities.
//! Errors name the format and the problem (and the line, for LCOV). No input causes a panic.

use quick_xml::{events::BytesStart, events::Event, name::QName, Reader};
use std::str::FromStr;
use std::{collections::HashMap, collections::HashSet, fmt, path::Component, path::Path};

/// `cobertura:PATH`, `lcov:PATH` or `jacoco:PATH` (PATH under /genesis/out).
///
/// PATH is relative (the caller resolves it against `/genesis/out`) or absolute inside
/// `/genesis/out`, and has no `..` component. The format name is matched case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoverageSpec {
    pub format: CoverageFormat,
    pub path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoverageFormat {
    Cobertura,
    Lcov,
    Jacoco,
}

impl fmt::Display for CoverageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(["Cobertura", "LCOV", "JaCoCo"][*self as usize])
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CoverageError {
    #[error("coverage spec {spec:?}: {reason}; expected cobertura:PATH, lcov:PATH or jacoco:PATH")]
    Spec { spec: String, reason: &'static str },
    #[error("{0} coverage report: {1}")]
    Report(CoverageFormat, String),
    #[error("LCOV coverage report, line {line}: {message}")]
    Lcov { line: usize, message: String },
}

type Res<T> = Result<T, CoverageError>;

macro_rules! bad {
    ($format:expr, $($arg:tt)+) => {
        CoverageError::Report($format, format!($($arg)+))
    };
}

impl FromStr for CoverageSpec {
    type Err = CoverageError;

    fn from_str(s: &str) -> Res<Self> {
        let (name, raw) = s.split_once(':').unwrap_or((s, ""));
        let (spec, path, p) = (s.to_owned(), raw.to_owned(), Path::new(raw));
        let format = match name.to_ascii_lowercase().as_str() {
            "cobertura" => Some(CoverageFormat::Cobertura),
            "lcov" => Some(CoverageFormat::Lcov),
            "jacoco" => Some(CoverageFormat::Jacoco),
            _ => None,
        };
        let reason = match format {
            None => "unknown or missing FORMAT",
            _ if raw.trim().is_empty() => "empty PATH",
            _ if raw.contains('\0') => "PATH contains a NUL byte",
            _ if p.components().any(|c| c == Component::ParentDir) => "PATH contains `..`",
            _ if p.is_absolute() && !p.starts_with("/genesis/out") => "PATH outside /genesis/out",
            Some(format) => return Ok(CoverageSpec { format, path }),
        };
        Err(CoverageError::Spec { spec, reason })
    }
}

/// The report's bytes among a run's `/genesis/out` files (names relative
/// to `/genesis/out`); None when the suite did not write it.
pub fn find_report<'a>(
    spec: &CoverageSpec,
    out_files: &'a [(String, Vec<u8>)],
) -> Option<&'a [u8]> {
    let wanted = spec
        .path
        .strip_prefix("/genesis/out/")
        .unwrap_or(&spec.path)
        .trim_start_matches("./");
    out_files
        .iter()
        .find(|(name, _)| name == wanted)
        .map(|(_, bytes)| bytes.as_slice())
}

/// Line coverage in percent: covered lines / coverable lines × 100; None when there are no coverable lines.
pub fn line_coverage(spec: &CoverageSpec, bytes: &[u8]) -> Result<Option<f64>, CoverageError> {
    let (covered, total) = match spec.format {
        CoverageFormat::Cobertura => cobertura(bytes)?,
        CoverageFormat::Lcov => lcov(bytes)?,
        CoverageFormat::Jacoco => jacoco(bytes)?,
    };
    if covered > total {
        return Err(bad!(spec.format, "{covered} covered lines out of {total}"));
    }
    Ok((total > 0).then(|| covered as f64 * 100.0 / total as f64))
}

/// Quotes untrusted input for an error message: lossy UTF-8, at most 60 bytes.
fn show(bytes: impl AsRef<[u8]>) -> String {
    let b = bytes.as_ref();
    format!("{:?}", String::from_utf8_lossy(&b[..b.len().min(60)]))
}

/// Hit count → covered? Accepts integers of any size, negatives (buggy gcov) and decimals.
fn parse_hits(s: &str) -> Option<bool> {
    let v: f64 = s.trim().parse().ok()?;
    v.is_finite().then_some(v > 0.0)
}

fn int(s: &str) -> Option<u64> {
    s.trim().parse().ok()
}

/// (covered, coverable) from deduplicated lines.
fn tally<K>(lines: &HashMap<K, bool>) -> (u64, u64) {
    let covered = lines.values().filter(|&&c| c).count();
    (covered as u64, lines.len() as u64)
}

/// Walks a whole XML document whose root must be `<root>`, calling `visit(depth, element)` for
/// every start or empty element (the root has depth 0). Fails on malformed or truncated XML.
fn walk_xml<'a>(
    f: CoverageFormat,
    bytes: &'a [u8],
    root: &str,
    mut visit: impl FnMut(usize, &BytesStart<'a>) -> Res<()>,
) -> Res<()> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes);
    let text = text.map_err(|e| bad!(f, "not UTF-8 (bad byte at {})", e.valid_up_to()))?;
    let mut reader = Reader::from_str(text);
    let (mut depth, mut seen_root, top) = (0usize, false, QName(root));
    loop {
        let event = reader.read_event();
        let at = reader.error_position();
        match &event.map_err(|e| bad!(f, "malformed XML at byte {at}: {e}"))? {
            Event::Start(e) | Event::Empty(e) if depth == 0 && (seen_root || e.name() != top) => {
                let name = show(e.name().as_ref());
                return Err(bad!(f, "root element is {name}, expected one <{root}>"));
            }
            event @ (Event::Start(e) | Event::Empty(e)) => {
                seen_root = true;
                visit(depth, e)?;
                depth += usize::from(matches!(event, Event::Start(_)));
            }
            Event::End(_) => depth = depth.saturating_sub(1),
            Event::Eof if depth > 0 || !seen_root => return Err(bad!(f, "empty or truncated XML")),
            Event::Eof => return Ok(()),
            _ => {}
        }
    }
}

/// Raw value of attribute `name` of `e`, if present.
fn attr(f: CoverageFormat, e: &BytesStart, name: &str) -> Res<Option<String>> {
    let a = e.try_get_attribute(name);
    let a = a.map_err(|err| bad!(f, "bad attributes on {}: {err}", show(e.name().as_ref())))?;
    Ok(a.map(|a| a.value.into_owned()))
}

/// Required attribute `name` of `e`, parsed by `p`.
fn req<T>(f: CoverageFormat, e: &BytesStart, name: &str, p: fn(&str) -> Option<T>) -> Res<T> {
    let tag = show(e.name().as_ref());
    let v = attr(f, e, name)?.ok_or_else(|| bad!(f, "{tag} has no {name} attribute"))?;
    p(&v).ok_or_else(|| bad!(f, "{tag} has invalid {name}={}", show(&v)))
}

/// (covered, coverable) lines of a Cobertura report.
fn cobertura(bytes: &[u8]) -> Res<(u64, u64)> {
    const F: CoverageFormat = CoverageFormat::Cobertura;
    let mut lines: HashMap<(String, u64), bool> = HashMap::new();
    let mut class: Option<(usize, String)> = None; // depth and filename of the open <class>
    let mut root_totals = None;
    walk_xml(F, bytes, "coverage", |depth, e| {
        if class.as_ref().is_some_and(|(d, _)| depth <= *d) {
            class = None; // an element at or above the class's depth: the class has ended
        }
        match e.name().as_ref() {
            "coverage" if depth == 0 => {
                let covered = attr(F, e, "lines-covered")?.as_deref().and_then(int);
                let valid = attr(F, e, "lines-valid")?.as_deref().and_then(int);
                root_totals = covered.zip(valid);
            }
            "class" => class = Some((depth, attr(F, e, "filename")?.unwrap_or_default())),
            "line" => {
                let (number, covered) = (req(F, e, "number", int)?, req(F, e, "hits", parse_hits)?);
                let file = class.as_ref().map(|(_, f)| f.clone()).unwrap_or_default();
                *lines.entry((file, number)).or_default() |= covered;
            }
            _ => {}
        }
        Ok(())
    })?;
    let fallback = root_totals.filter(|_| lines.is_empty());
    Ok(fallback.unwrap_or_else(|| tally(&lines)))
}

/// (covered, coverable) lines of an LCOV tracefile.
fn lcov(bytes: &[u8]) -> Res<(u64, u64)> {
    let mut lines: HashMap<(&[u8], u64), bool> = HashMap::new();
    let mut records: Vec<(&[u8], Option<u64>, Option<u64>)> = Vec::new(); // SF, LF, LH
    let mut open = false; // between an SF: and its end_of_record
    for (line, raw) in (1..).zip(bytes.split(|&b| b == b'\n')) {
        let err = |message| CoverageError::Lcov { line, message };
        let row = raw.trim_ascii();
        if row.is_empty() || row == b"end_of_record" {
            open = open && row.is_empty(); // a blank line does not end the record
            continue;
        }
        let colon = row.iter().position(|&b| b == b':').unwrap_or(0);
        let (tag, value) = (&row[..colon], &row[colon + 1..]);
        if colon == 0 || !tag.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(err(format!("not an LCOV TAG:VALUE record: {}", show(row))));
        } else if tag == b"SF" {
            records.push((value, None, None));
            open = true;
            continue;
        } else if !matches!(tag, b"DA" | b"LF" | b"LH") {
            continue; // TN, FN*, BR*, VER, ... do not matter for line coverage
        }
        let tag_name = String::from_utf8_lossy(tag);
        let Some(rec) = records.last_mut().filter(|_| open) else {
            return Err(err(format!("{tag_name}: record outside an SF: record")));
        };
        let text = std::str::from_utf8(value).unwrap_or("?");
        if tag == b"DA" {
            let mut parts = text.split(',');
            let (num, hits) = (parts.next().and_then(int), parts.next());
            let Some((num, covered)) = num.zip(hits.and_then(parse_hits)) else {
                return Err(err(format!("expected DA:LINE,HITS: {}", show(row))));
            };
            *lines.entry((rec.0, num)).or_default() |= covered;
            continue;
        }
        let count = int(text).ok_or_else(|| format!("{tag_name}:{} is not a count", show(value)));
        *(if tag == b"LF" { &mut rec.1 } else { &mut rec.2 }) = Some(count.map_err(err)?);
        if rec.1.zip(rec.2).is_some_and(|(lf, lh)| lh > lf) {
            return Err(err("LH: exceeds LF:".to_owned()));
        }
    }
    // Files without any DA: their LF/LH, from the record with the largest LH per file.
    let da_files: HashSet<&[u8]> = lines.keys().map(|k| k.0).collect();
    let mut best: HashMap<&[u8], (u64, u64)> = HashMap::new(); // file -> (LH, LF)
    for (file, lf, lh) in records.into_iter().filter(|r| !da_files.contains(r.0)) {
        let b = best.entry(file).or_default();
        *b = (*b).max((lh.unwrap_or(0), lf.unwrap_or(0)));
    }
    Ok(best.values().fold(tally(&lines), |(c, t), &(lh, lf)| {
        (c.saturating_add(lh), t.saturating_add(lf))
    }))
}

/// (covered, coverable) lines of a JaCoCo XML report.
fn jacoco(bytes: &[u8]) -> Res<(u64, u64)> {
    const F: CoverageFormat = CoverageFormat::Jacoco;
    let mut found = None;
    walk_xml(F, bytes, "report", |depth, e| {
        let counter = depth == 1 && e.name().as_ref() == "counter";
        if !counter || attr(F, e, "type")?.as_deref() != Some("LINE") {
            return Ok(());
        }
        let (missed, covered) = (req(F, e, "missed", int)?, req(F, e, "covered", int)?);
        let total = covered.checked_add(missed);
        let total = total.ok_or_else(|| bad!(F, "LINE counter overflows"))?;
        match found.replace((covered, total)) {
            Some(_) => Err(bad!(F, "more than one report-level LINE counter")),
            None => Ok(()),
        }
    })?;
    Ok(found.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::CoverageFormat::{Cobertura as C, Jacoco as J, Lcov as L};
    use super::*;

    macro_rules! fixture {
        ($path:literal) => {
            include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), $path))
        };
    }
    /// coverage.py 7.17.5 `coverage xml`: 11 of 17 lines (its root line-rate is rounded: 0.6471).
    const COBERTURA: &[u8] = fixture!("/tests/fixtures/coverage/cobertura-coveragepy.xml");
    /// coverage.py 7.17.5 `coverage lcov` of the same run: 11 of 17 lines.
    const LCOV: &[u8] = fixture!("/tests/fixtures/coverage/lcov-coveragepy.info");
    /// Hand-written JaCoCo report: report-level LINE missed=4 covered=5 (packages: 3/5 and 2/4).
    const JACOCO: &[u8] = fixture!("/tests/fixtures/coverage/jacoco.xml");
    /// a.rs:1-3 (repeated under <methods> and in a second class) and b.rs:1-2; 2 of 5 covered.
    const DEDUPE: &[u8] = br#"<coverage line-rate="0.1" lines-covered="1" lines-valid="9"><packages><package><classes>
        <class filename="a.rs"><methods><method><lines><line number="1" hits="0"/><line number="2" hits="3"/></lines></method></methods><lines><line number="1" hits="0"/><line number="2" hits="3"/><line number="3" hits="0"/></lines></class>
        <class filename="a.rs"><lines><line number="3" hits="1" branch="true"><conditions/></line></lines></class><class filename="b.rs"><lines><line number="1" hits="0"/><line number="2" hits="0"/></lines></class></classes></package></packages></coverage>"#;
    /// Only the LINE counter directly under <report> counts (7 of 9); the DTD URL is never fetched.
    const NESTED: &[u8] = br#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><!DOCTYPE report PUBLIC "-//JACOCO//DTD Report 1.1//EN" "http://127.0.0.1:9/report.dtd"><report name="r"><group name="g"><package name="p"><class name="p/C"><method name="m" desc="()V"><counter type="LINE" missed="0" covered="1"/></method><counter type="LINE" missed="0" covered="1"/></class><counter type="LINE" missed="0" covered="1"/></package><counter type="LINE" missed="0" covered="1"/></group><counter type="INSTRUCTION" missed="5" covered="1"/><counter type="LINE" missed="2" covered="7"/></report>"#;

    fn run(format: CoverageFormat, input: &[u8]) -> Res<Option<f64>> {
        let path = "x".to_owned();
        line_coverage(&CoverageSpec { format, path }, input)
    }

    #[test]
    fn exact_percentages() {
        #[rustfmt::skip]
        let cases: &[(CoverageFormat, &[u8], Option<f64>)] = &[
            (C, COBERTURA, Some(64.70588235294117)), // 100 * 11 / 17
            (L, LCOV, Some(64.70588235294117)),
            (J, JACOCO, Some(55.55555555555556)), // 100 * 5 / 9
            (L, b"SF:a\nDA:1,1\nDA:2,1\nDA:3,1\nDA:4,1\nDA:5,1\nDA:6,1\nDA:7,1\nDA:8,0\nDA:9,0", Some(77.77777777777777)),
            (C, DEDUPE, Some(40.0)),
            (C, br#"<coverage lines-covered="2" lines-valid="3"><packages/></coverage>"#, Some(66.66666666666667)),
            (C, b"\xEF\xBB\xBF<coverage lines-covered=\"0\" lines-valid=\"0\"/>", None),
            // Covered: a.c:1 (with checksum), a.c:2 (in the 2nd record); not: a.c:3 (-1), b.c:1.
            (L, b"VER:2\r\nTN:t1\r\n\r\nSF:a.c\r\nFNL:0,1,2\r\nDA:1,5,Zm9v\r\nDA:2,0\r\nDA:3,-1\r\nend_of_record\r\nTN:t2\nSF:a.c\nDA:2,1\n \nSF:b.c\nDA:1,0", Some(50.0)),
            // a has no DA: best LF/LH is 4/3; b has DA (1 of 1), so its LF/LH are ignored.
            (L, b"SF:a\nLF:4\nLH:1\nend_of_record\nSF:a\nLF:4\nLH:3\nSF:b\nDA:1,1\nLF:9\nLH:9\nSF:b\nLF:2\n", Some(80.0)),
            (L, b"SF:\xff\xfe\nDA:1,1\n", Some(100.0)),
            (L, b"TN:\nSF:x\nend_of_record\n", None),
            (J, NESTED, Some(77.77777777777777)),
            (J, br#"<report name="e"><sessioninfo id="x" start="1" dump="2"/></report>"#, None),
        ];
        for (i, &(format, input, want)) in cases.iter().enumerate() {
            assert_eq!(run(format, input).unwrap(), want, "case {i}");
        }
    }

    #[test]
    fn errors_name_the_format_and_the_problem() {
        #[rustfmt::skip]
        let cases: &[(CoverageFormat, &[u8], &str)] = &[
            (C, b"<report/>", "root element is \"report\", expected one <coverage>"),
            (C, br#"<coverage><line number="1" hits="1"/>"#, "empty or truncated XML"),
            (C, br#"<coverage><line number="x" hits="1"/></coverage>"#, "\"line\" has invalid number=\"x\""),
            (C, br#"<coverage><line number="1"/></coverage>"#, "\"line\" has no hits attribute"),
            (C, b"<coverage><a></b></coverage>", "malformed XML at byte 13: ill-formed document"),
            (C, b"<coverage>\xff</coverage>", "not UTF-8 (bad byte at 10)"),
            (C, br#"<coverage lines-covered="4" lines-valid="3"/>"#, "4 covered lines out of 3"),
            (L, b"SF:a\r\nDA:1\r\n", "line 2: expected DA:LINE,HITS: \"DA:1\""),
            (L, b"DA:1,1\n", "line 1: DA: record outside an SF: record"),
            (L, b"SF:a\nend_of_record\nLF:1\n", "line 3: LF: record outside an SF: record"),
            (L, b"SF:a\n\nLF:x\n", "line 3: LF:\"x\" is not a count"),
            (L, b"SF:a\nLF:1\nLH:2\n", "line 3: LH: exceeds LF:"),
            (L, b"<?xml version=\"1.0\" ?>\n", "line 1: not an LCOV TAG:VALUE record"),
            (J, br#"<report><counter type="LINE" missed="1"/></report>"#, "\"counter\" has no covered attribute"),
            (J, br#"<report><counter type="LINE" missed="-1" covered="1"/></report>"#, "invalid missed=\"-1\""),
            (J, br#"<report><counter type="LINE" missed="18446744073709551615" covered="1"/></report>"#, "LINE counter overflows"),
            (J, br#"<report><counter type="LINE" missed="1" covered="1"/><counter type="LINE" missed="1" covered="1"/></report>"#, "more than one report-level LINE counter"),
        ];
        for &(format, input, want) in cases {
            let e = run(format, input).unwrap_err().to_string();
            let prefix = format!("{format} coverage report");
            assert!(e.starts_with(&prefix) && e.contains(want), "{e}");
        }
    }

    #[test]
    fn spec_parsing() {
        #[rustfmt::skip]
        let cases = [
            ("lcov:cov/lcov.info", Some((L, "cov/lcov.info"))),
            ("Cobertura:/genesis/out/c.xml", Some((C, "/genesis/out/c.xml"))),
            ("jacoco:a:b.xml", Some((J, "a:b.xml"))),
            ("", None), ("lcov", None), ("xml:c.xml", None), ("lcov:", None), ("lcov: ", None),
            ("lcov:a/../../x", None), ("jacoco:/etc/x", None), ("lcov:/genesis/outside", None),
        ];
        let expected = "expected cobertura:PATH, lcov:PATH or jacoco:PATH";
        for (input, want) in cases {
            match (input.parse::<CoverageSpec>(), want) {
                (Ok(s), Some(want)) => assert_eq!((s.format, s.path.as_str()), want),
                (Err(e), None) => assert!(e.to_string().contains(expected), "{e}"),
                (got, _) => panic!("{input:?} gave {got:?}"),
            }
        }
    }

    #[test]
    fn truncated_and_mangled_inputs_never_panic() {
        for fixture in [COBERTURA, LCOV, JACOCO, DEDUPE, NESTED] {
            for i in 0..fixture.len() {
                let mut mangled = fixture.to_vec();
                mangled[i] = [0xFF, b'<', b'"', b'\n', b':', b',', 0][i % 7];
                for format in [C, L, J] {
                    let _ = (run(format, &fixture[..i]), run(format, &mangled));
                }
            }
        }
        for end in 0..JACOCO.len() - 1 {
            let result = run(J, &JACOCO[..end]);
            assert!(result.is_err(), "{end}-byte prefix gave {result:?}");
        }
    }
}
