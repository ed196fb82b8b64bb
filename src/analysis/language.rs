//! The languages the analyzer can parse, their grammars and default extensions.
//!
//! The set is closed: each variant needs a tree-sitter grammar compiled in and
//! a syntax module (`python.rs`, `rust.rs`, ...) that knows its node kinds.
//! What *is* configurable is which file extensions map to which language (the
//! `[extensions]` table of the shapes policy, see [`super::Shapes`]).

use std::cell::RefCell;
use std::fmt;

use serde::{Deserialize, Serialize};
use tree_sitter::Parser;

use super::AnalysisError;

/// A language with a compiled-in grammar.
///
/// Serialized in lower case (`"python"`, `"tsx"`, ...), which is also how the
/// `[extensions]` table of the policy names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    Python,
    Rust,
    JavaScript,
    TypeScript,
    /// TypeScript with JSX (`.tsx`): a separate grammar, the JavaScript shapes.
    Tsx,
    Go,
    Elixir,
}

impl Language {
    /// Every language, in a stable order.
    pub const ALL: [Language; 7] = [
        Language::Python,
        Language::Rust,
        Language::JavaScript,
        Language::TypeScript,
        Language::Tsx,
        Language::Go,
        Language::Elixir,
    ];

    /// The lower-case name used in JSON output and in the policy.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::Rust => "rust",
            Language::JavaScript => "javascript",
            Language::TypeScript => "typescript",
            Language::Tsx => "tsx",
            Language::Go => "go",
            Language::Elixir => "elixir",
        }
    }

    /// The policy table whose shapes apply: JavaScript, TypeScript and TSX
    /// share `[javascript]`.
    #[must_use]
    pub(crate) fn shape_table(self) -> ShapeTable {
        match self {
            Language::Python => ShapeTable::Python,
            Language::Rust => ShapeTable::Rust,
            Language::JavaScript | Language::TypeScript | Language::Tsx => ShapeTable::JavaScript,
            Language::Go => ShapeTable::Go,
            Language::Elixir => ShapeTable::Elixir,
        }
    }

    /// Built-in extension map (lower case, no dot). The policy's
    /// `[extensions]` table adds to and overrides it.
    #[must_use]
    pub fn default_extensions() -> &'static [(&'static str, Language)] {
        &[
            ("py", Language::Python),
            ("pyi", Language::Python),
            ("rs", Language::Rust),
            ("js", Language::JavaScript),
            ("jsx", Language::JavaScript),
            ("mjs", Language::JavaScript),
            ("cjs", Language::JavaScript),
            ("ts", Language::TypeScript),
            ("mts", Language::TypeScript),
            ("cts", Language::TypeScript),
            ("tsx", Language::Tsx),
            ("go", Language::Go),
            ("ex", Language::Elixir),
            ("exs", Language::Elixir),
        ]
    }

    fn grammar(self) -> tree_sitter::Language {
        match self {
            Language::Python => tree_sitter_python::LANGUAGE.into(),
            Language::Rust => tree_sitter_rust::LANGUAGE.into(),
            Language::JavaScript => tree_sitter_javascript::LANGUAGE.into(),
            Language::TypeScript => tree_sitter_typescript::LANGUAGE_TYPESCRIPT.into(),
            Language::Tsx => tree_sitter_typescript::LANGUAGE_TSX.into(),
            Language::Go => tree_sitter_go::LANGUAGE.into(),
            Language::Elixir => tree_sitter_elixir::LANGUAGE.into(),
        }
    }

    /// Checks that the runtime accepts the grammar (ABI in range).
    pub(crate) fn check_grammar(self) -> Result<(), AnalysisError> {
        Parser::new()
            .set_language(&self.grammar())
            .map_err(|e| AnalysisError::Grammar {
                language: self,
                reason: e.to_string(),
            })
    }

    /// Parses `source` with a parser cached per thread and per language
    /// (`tree_sitter::Parser` is `Send` but not `Sync`; a thread-local keeps
    /// [`super::Analyzer`] `Sync` without a lock).
    pub(crate) fn parse(
        self,
        path: &str,
        source: &str,
    ) -> Result<tree_sitter::Tree, AnalysisError> {
        thread_local! {
            static PARSERS: RefCell<Vec<(Language, Parser)>> = const { RefCell::new(Vec::new()) };
        }
        PARSERS.with(|cell| {
            let mut parsers = cell.borrow_mut();
            let index = match parsers.iter().position(|(l, _)| *l == self) {
                Some(i) => i,
                None => {
                    let mut parser = Parser::new();
                    parser
                        .set_language(&self.grammar())
                        .map_err(|e| AnalysisError::Grammar {
                            language: self,
                            reason: e.to_string(),
                        })?;
                    parsers.push((self, parser));
                    parsers.len() - 1
                }
            };
            let parser = &mut parsers[index].1;
            parser.reset();
            parser
                .parse(source, None)
                .ok_or_else(|| AnalysisError::Parse {
                    path: path.to_owned(),
                    language: self,
                })
        })
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The tables of the shapes policy (one per family of languages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ShapeTable {
    Python,
    JavaScript,
    Rust,
    Go,
    Elixir,
}

impl ShapeTable {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ShapeTable::Python => "python",
            ShapeTable::JavaScript => "javascript",
            ShapeTable::Rust => "rust",
            ShapeTable::Go => "go",
            ShapeTable::Elixir => "elixir",
        }
    }
}
