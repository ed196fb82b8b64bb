//! LLM call shapes as data: the schema of `policies/llm_patterns.toml`, its
//! validation, and matching a call's callee chain against it.
//!
//! # The policy file
//!
//! ```toml
//! [extensions]            # optional: adds to / overrides the built-in map
//! pyw = "python"
//!
//! [python]                # also [javascript] (JS, TS, TSX), [rust], [go], [elixir]
//! calls = ["*.chat.completions.create|parse|stream", "litellm.completion"]
//! ```
//!
//! Unknown keys are rejected (a typo such as `call =` is an error, not an
//! empty table), and every shape is validated when the policy is loaded.
//!
//! # Shape syntax
//!
//! A shape is the *tail* of a callee's attribute chain, written with dots:
//!
//! * segments are names; `a|b|c` in one segment is an alternative;
//! * a leading `*` means "some receiver must come before the tail" (any
//!   expression: a name, `self.client`, `get_client()`, `await x`, ...);
//!   without it the tail may also be the whole callee (a bare name such as
//!   `generateText`, or a module-rooted path such as `litellm.completion`);
//! * a non-final segment ending in `()` must be a method *call* in the chain
//!   (`*.chat().create` matches Rust `client.chat().create(req)`); segments
//!   without `()` must be plain attributes/fields/path segments. The final
//!   segment is the call being looked at and never carries `()`.
//!
//! A call matches when its chain *ends with* the shape's segments. Rust paths
//! (`a::b`), Elixir aliases (`LangChain.Chains.LLMChain`) and Go package
//! selectors are split into segments like attributes, so `LLMChain.run` also
//! matches `LangChain.Chains.LLMChain.run(...)`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;

use super::language::ShapeTable;
use super::{AnalysisError, Language};

const BUILTIN_POLICY: &str = include_str!("../../policies/llm_patterns.toml");

/// The deserialized shapes policy; see the module docs for the format.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shapes {
    /// Extension (no dot, case-insensitive) → language; overrides the
    /// built-in map of [`Language::default_extensions`].
    #[serde(default)]
    pub extensions: BTreeMap<String, Language>,
    #[serde(default)]
    pub python: LanguageShapes,
    /// Used for JavaScript, TypeScript and TSX.
    #[serde(default)]
    pub javascript: LanguageShapes,
    #[serde(default)]
    pub rust: LanguageShapes,
    #[serde(default)]
    pub go: LanguageShapes,
    #[serde(default)]
    pub elixir: LanguageShapes,
    /// Where the policy came from, for error messages.
    #[serde(skip)]
    origin: String,
}

/// One language table of the policy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LanguageShapes {
    /// Shapes in the syntax of the module docs.
    #[serde(default)]
    pub calls: Vec<String>,
}

impl Shapes {
    /// Parses and validates a policy. `origin` names it in errors (a path).
    ///
    /// # Errors
    ///
    /// [`AnalysisError::Policy`] for TOML/schema problems (unknown keys,
    /// unknown language names), [`AnalysisError::Pattern`] for a shape that
    /// does not parse, [`AnalysisError::Extension`] for an empty extension.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Shapes, AnalysisError> {
        let mut shapes: Shapes = toml::from_str(text).map_err(|cause| AnalysisError::Policy {
            origin: origin.to_owned(),
            cause: Box::new(cause),
        })?;
        shapes.origin = origin.to_owned();
        shapes.validate()?;
        Ok(shapes)
    }

    /// Reads and parses a policy file.
    ///
    /// # Errors
    ///
    /// [`AnalysisError::Io`] when it cannot be read, else as
    /// [`from_toml_str`](Self::from_toml_str).
    pub fn from_path(path: &Path) -> Result<Shapes, AnalysisError> {
        let text = std::fs::read_to_string(path).map_err(|cause| AnalysisError::Io {
            path: path.display().to_string(),
            cause,
        })?;
        Shapes::from_toml_str(&text, &path.display().to_string())
    }

    /// The defaults of CONTRACT §5a (the `policies/llm_patterns.toml` shipped
    /// with the source, embedded at compile time).
    #[must_use]
    pub fn builtin() -> Shapes {
        Shapes::from_toml_str(BUILTIN_POLICY, "<built-in policies/llm_patterns.toml>")
            .expect("the built-in policy is valid (checked by the tests)")
    }

    /// Checks every shape and extension; called by the constructors, public
    /// for callers that build a `Shapes` by hand.
    ///
    /// # Errors
    ///
    /// The first invalid shape or extension.
    pub fn validate(&self) -> Result<(), AnalysisError> {
        self.compile().map(|_| ())
    }

    fn table(&self, table: ShapeTable) -> &LanguageShapes {
        match table {
            ShapeTable::Python => &self.python,
            ShapeTable::JavaScript => &self.javascript,
            ShapeTable::Rust => &self.rust,
            ShapeTable::Go => &self.go,
            ShapeTable::Elixir => &self.elixir,
        }
    }

    fn origin(&self) -> &str {
        if self.origin.is_empty() {
            "<in memory>"
        } else {
            &self.origin
        }
    }

    /// Compiles all tables and the extension map.
    pub(crate) fn compile(&self) -> Result<Compiled, AnalysisError> {
        let mut extensions: HashMap<String, Language> = Language::default_extensions()
            .iter()
            .map(|(e, l)| ((*e).to_owned(), *l))
            .collect();
        for (extension, language) in &self.extensions {
            let key = extension.trim_start_matches('.').to_ascii_lowercase();
            if key.is_empty() || key.contains(['/', '\\']) {
                return Err(AnalysisError::Extension {
                    origin: self.origin().to_owned(),
                    extension: extension.clone(),
                    reason: "an extension is a non-empty file-name suffix without a dot, like `py`"
                        .to_owned(),
                });
            }
            extensions.insert(key, *language);
        }
        let mut tables = HashMap::new();
        for table in [
            ShapeTable::Python,
            ShapeTable::JavaScript,
            ShapeTable::Rust,
            ShapeTable::Go,
            ShapeTable::Elixir,
        ] {
            let mut set = ShapeSet::default();
            for text in &self.table(table).calls {
                let shape = Shape::parse(text).map_err(|reason| AnalysisError::Pattern {
                    origin: self.origin().to_owned(),
                    table: table.name().to_owned(),
                    pattern: text.clone(),
                    reason,
                })?;
                set.push(shape);
            }
            tables.insert(table, set);
        }
        Ok(Compiled { extensions, tables })
    }
}

/// The validated, indexed form of [`Shapes`].
#[derive(Debug)]
pub(crate) struct Compiled {
    pub(crate) extensions: HashMap<String, Language>,
    pub(crate) tables: HashMap<ShapeTable, ShapeSet>,
}

/// One element of a callee chain, root first: `self.client.chat().create`
/// is `self`, `client`, `chat()`, `create`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Link {
    /// `None` for an expression that is not a name (a literal, `await x`,
    /// a subscript, a parenthesized expression...).
    pub(crate) name: Option<String>,
    /// The element is a call (`chat()` above, or `get_client()` as a root).
    pub(crate) called: bool,
}

impl Link {
    pub(crate) fn name(name: &str) -> Link {
        Link {
            name: Some(name.to_owned()),
            called: false,
        }
    }
    pub(crate) fn opaque() -> Link {
        Link {
            name: None,
            called: false,
        }
    }
}

#[derive(Debug, Clone)]
struct Segment {
    names: Vec<String>,
    called: bool,
}

/// One parsed shape.
#[derive(Debug, Clone)]
pub(crate) struct Shape {
    any_receiver: bool,
    segments: Vec<Segment>,
}

impl Shape {
    fn parse(text: &str) -> Result<Shape, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("empty shape".to_owned());
        }
        let (any_receiver, rest) = match text.strip_prefix('*') {
            Some(rest) => match rest.strip_prefix('.') {
                Some(rest) => (true, rest),
                None => {
                    return Err(
                        "`*` must be followed by `.` and a name, as in `*.invoke`".to_owned()
                    )
                }
            },
            None => (false, text),
        };
        let mut segments = Vec::new();
        let parts: Vec<&str> = rest.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let (body, called) = match part.strip_suffix("()") {
                Some(body) => (body, true),
                None => (*part, false),
            };
            if called && last {
                return Err(format!(
                    "the last segment `{part}` is the call itself: write it without `()`"
                ));
            }
            if body.contains('*') {
                return Err("`*` may only start a shape (`*.name`)".to_owned());
            }
            let names: Vec<String> = body.split('|').map(str::to_owned).collect();
            for name in &names {
                if !is_name(name) {
                    return Err(if name.is_empty() {
                        format!("empty name in segment `{part}`")
                    } else {
                        format!(
                            "`{name}` is not a name (letters, digits, `_`, optional final `?`/`!`)"
                        )
                    });
                }
            }
            segments.push(Segment { names, called });
        }
        Ok(Shape {
            any_receiver,
            segments,
        })
    }

    /// Whether `chain` (root first, the examined call last) ends with this shape.
    fn matches(&self, chain: &[Link]) -> bool {
        let n = self.segments.len();
        let needed = n + usize::from(self.any_receiver);
        if chain.len() < needed {
            return false;
        }
        let tail = &chain[chain.len() - n..];
        self.segments
            .iter()
            .zip(tail)
            .enumerate()
            .all(|(i, (seg, link))| {
                let name_ok = link
                    .name
                    .as_deref()
                    .is_some_and(|name| seg.names.iter().any(|n| n == name));
                // The final link is the call under test: its `called` flag is moot.
                name_ok && (i + 1 == n || seg.called == link.called)
            })
    }

    fn last_names(&self) -> &[String] {
        &self
            .segments
            .last()
            .expect("a parsed shape has a segment")
            .names
    }
}

fn is_name(s: &str) -> bool {
    let core = s.strip_suffix(['?', '!']).unwrap_or(s);
    let mut chars = core.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The shapes of one table, indexed by the name of their final segment.
#[derive(Debug, Default)]
pub(crate) struct ShapeSet {
    shapes: Vec<Shape>,
    by_last: HashMap<String, Vec<usize>>,
}

impl ShapeSet {
    fn push(&mut self, shape: Shape) {
        let index = self.shapes.len();
        for name in shape.last_names() {
            self.by_last.entry(name.clone()).or_default().push(index);
        }
        self.shapes.push(shape);
    }

    /// Whether any shape matches the chain.
    pub(crate) fn matches(&self, chain: &[Link]) -> bool {
        let Some(Some(last)) = chain.last().map(|l| l.name.as_deref()) else {
            return false;
        };
        self.by_last
            .get(last)
            .is_some_and(|ids| ids.iter().any(|&i| self.shapes[i].matches(chain)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(spec: &str) -> Vec<Link> {
        spec.split('.')
            .map(|p| match p.strip_suffix("()") {
                Some(n) => Link {
                    name: Some(n.to_owned()),
                    called: true,
                },
                None if p == "?" => Link::opaque(),
                None => Link::name(p),
            })
            .collect()
    }

    fn set(shapes: &[&str]) -> ShapeSet {
        let mut s = ShapeSet::default();
        for t in shapes {
            s.push(Shape::parse(t).unwrap());
        }
        s
    }

    #[test]
    fn suffix_and_receiver_rules() {
        let s = set(&[
            "*.invoke",
            "litellm.completion",
            "generateText",
            "*.chat().create|create_stream",
        ]);
        assert!(s.matches(&chain("chain.invoke")));
        assert!(s.matches(&chain("?.invoke")));
        assert!(!s.matches(&chain("invoke")), "`*` needs a receiver");
        assert!(s.matches(&chain("litellm.completion")));
        assert!(s.matches(&chain("x.litellm.completion")));
        assert!(!s.matches(&chain("completion")));
        assert!(s.matches(&chain("generateText")));
        assert!(s.matches(&chain("ai.generateText")));
        assert!(s.matches(&chain("self.client.chat().create")));
        assert!(s.matches(&chain("c.chat().create_stream")));
        assert!(
            !s.matches(&chain("c.chat.create")),
            "`()` segment must be a call"
        );
    }

    #[test]
    fn bad_shapes_are_rejected_with_a_reason() {
        for (text, needle) in [
            ("", "empty"),
            ("*", "`*`"),
            ("a.*.b", "`*` may only"),
            ("a.b()", "last segment"),
            ("a||b", "empty name"),
            ("a b", "not a name"),
            ("a.", "empty name"),
        ] {
            let err = Shape::parse(text).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn elixir_names_may_end_in_question_or_bang() {
        assert!(Shape::parse("Mod.run!").is_ok());
        assert!(Shape::parse("Mod.ok?").is_ok());
    }
}
