//! Static analysis of source files for experiment metrics: LLM call sites
//! (for `llm_reduction`) and McCabe cyclomatic complexity (for
//! `complexity_change`), CONTRACT §5 and §5a, and the data behind
//! `genesis analyze --json`.
//!
//! # Design
//!
//! Files are parsed with tree-sitter (grammars for Python, Rust, JavaScript,
//! TypeScript, TSX, Go and Elixir are compiled in), so comments, docstrings,
//! `@doc`, strings and template text are simply not code: nothing in them is
//! ever a call site. Interpolations (f-string fields, `${}`, `#{}`) are parsed
//! expressions, so calls in them count. One iterative walk over the tree
//! (`engine.rs`) finds call sites and complexity; what a node *means* comes
//! from one small module per language (`python.rs`, `rust.rs`, `js.rs` for
//! JavaScript/TypeScript/TSX, `go.rs`, `elixir.rs`).
//!
//! Which calls are LLM calls is data, not code: [`Shapes`] is the policy
//! `policies/llm_patterns.toml` (shape syntax in [`shapes`]), with the §5a
//! defaults built in ([`Shapes::builtin`]).
//!
//! # What is a call site (rule decisions)
//!
//! * A call expression whose callee chain *ends with* a shape. The chain is
//!   the callee's attributes/fields/path segments, root first, with method
//!   calls along it marked (`self.client.chat().create` is `self`, `client`,
//!   `chat()`, `create`). Any receiver may precede the tail, including calls,
//!   `await` and parenthesized expressions, and a chain split over lines.
//!   Aliases need no tracking: `llm = ChatOpenAI(); llm.invoke(x)` matches
//!   `*.invoke`.
//! * Its line is that of the `(` opening its arguments; an Elixir call
//!   without parentheses (`x |> LLMChain.run`) takes the line of its name.
//!   Two sites on one line are two entries.
//! * Imports are resolved before matching (Python `import`/`from` aliases,
//!   JS/TS named-import aliases, Go package aliases, Elixir `alias`): the
//!   root name of a chain is replaced by what it was imported as, so a bare
//!   imported name reads as `module.name`. Thus
//!   `from litellm import completion as c; c(...)` counts, while
//!   `from openai import OpenAI; OpenAI()` does not (no shape ends in
//!   `openai.OpenAI`). Resolution is file-wide (imports inside functions
//!   included) without scope analysis: a parameter shadowing an imported
//!   name is read as the import. Relative Python imports map nothing.
//! * A call of a call's result (`host.invoke("x")(args)`) is not a second
//!   site: only the inner `host.invoke("x")` is.
//! * The file's own wrappers never count: a call of a function or method the
//!   file itself defines, made bare (`generateText()` where the file defines
//!   `generateText`) or on the object itself (`self.invoke()`, `this.invoke()`,
//!   Rust `self.exec_chat()`, a Go method's receiver). `super().invoke()` is
//!   the parent's implementation and does count.
//! * Never counted: comments, docstrings, `@doc`/`@moduledoc`/`@typedoc`
//!   (including interpolations inside them), strings, template text, imports,
//!   definitions, decorators without a call, references (`f = client.chat.completions.create`,
//!   `functools.partial(llm.invoke, ...)`, Elixir `&LLMChain.run/1`).
//! * Counted once each: awaited, chained, multi-line calls; calls in
//!   comprehensions, lambdas/closures, f-string/`${}`/`#{}` interpolations
//!   (Elixir: also lowercase sigils, which interpolate), in another call's
//!   arguments (both count), piped in Elixir (`x |> LLMChain.run()`), and in
//!   Rust macro arguments (`println!("{}", c.chat().create(r).await?)`; the
//!   token trees of macro calls are scanned for `.name(...)` chains, while
//!   `macro_rules!` bodies are definitions and are not).
//! * Chains that do not end with a shape do not count even if the call is an
//!   LLM request in practice, e.g. openai's
//!   `client.chat.completions.with_raw_response.create(...)`,
//!   `completions = client.chat.completions; completions.create(...)` (`*`
//!   needs a receiver before `completions`), or an ollama `Client().chat(...)`
//!   (only the module functions `ollama.chat|generate` are §5a shapes): add a
//!   shape to the policy. Conversely a shape is syntactic: any `x.invoke(...)`
//!   counts, whatever `x` is.
//! * Elixir: only remote calls (`Mod.fun`, `var.fun`) are matched; local calls
//!   are the module's own functions or imports.
//!
//! # Complexity (rule decisions)
//!
//! McCabe: each function is 1 + its decision points; a file's complexity is
//! the sum over its functions (code outside any function is not counted, as
//! in §5). Decision points, in every language: `if`/`elif`/`else if`/
//! `unless`, each loop (`for`, `while`, `do`, Rust `loop`, comprehension
//! `for`), each `catch`/`except`/`rescue` clause, each short-circuit operator
//! (`&&`, `||`, `and`, `or`, JS `??` and `&&=`/`||=`/`??=`), a ternary /
//! conditional expression, each comprehension filter, Rust `let ... else`.
//! A C-style `switch` adds one per `case` (not `default`); a pattern match
//! (Python `match`, Rust `match`, Elixir `case`/`cond`/`receive`, a
//! multi-clause `fn`, `with`'s `else`) adds one per arm after the first.
//! Elixir `with` adds one per `<-` clause. Not decision points: `else`,
//! `finally`, `?` (Rust), `?.` (optional chaining), `with` statements,
//! `assert`, guards on match arms / `case` clauses (the arm already counts).
//!
//! Nested functions: a *named* nested function (`def` in a `def`, a Rust
//! `fn` item in a `fn`, a JS function declaration) is its own entry named
//! `outer.inner` (Rust `outer::inner`). An anonymous function — lambda,
//! closure, arrow function, `func` literal, Elixir `fn` — belongs to the
//! enclosing function; one bound directly to a name (`const f = () => ...`,
//! `f = lambda: ...`, `f := func() {...}`, a class field or object property)
//! is a named function; an anonymous function outside any function is its
//! own entry named `<anonymous>`. Names are qualified by their classes,
//! impls, traits and modules (`Agent.plan`, `Gateway::ask`,
//! `MyApp.Mod.run/2`); Elixir clauses of one `name/arity` are one entry
//! whose complexity is the sum of the clauses' (so each extra clause adds 1).
//! A function's line is the line of its name (of the `fn`/arrow for
//! anonymous ones).

mod elixir;
mod engine;
mod error;
mod go;
mod js;
mod language;
mod python;
mod rust;
pub mod shapes;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

pub use error::AnalysisError;
pub use language::Language;
pub use shapes::{LanguageShapes, Shapes};

use language::ShapeTable;
use shapes::ShapeSet;

/// One function's complexity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionComplexity {
    /// Qualified name (see the module docs).
    pub name: String,
    /// 1-based line of the name.
    pub line: u32,
    /// 1 + decision points.
    pub complexity: u32,
}

/// What [`Analyzer::analyze`] finds in one file; serializes as one entry of
/// `files` in `genesis analyze --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileAnalysis {
    /// The path as given to [`Analyzer::analyze`].
    pub path: String,
    pub language: Language,
    /// Number of call sites (`llm_call_lines.len()`).
    pub llm_call_sites: u32,
    /// 1-based line of each site's argument `(`, one entry per site, sorted.
    pub llm_call_lines: Vec<u32>,
    /// Sum of the functions' complexity.
    pub complexity: u32,
    pub functions: Vec<FunctionComplexity>,
}

/// Totals over several files, as in `genesis analyze --json`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub files: u32,
    pub llm_call_sites: u32,
    pub complexity: u32,
}

/// The whole `genesis analyze --json` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub files: Vec<FileAnalysis>,
    pub totals: Totals,
}

impl Report {
    /// Wraps per-file results and adds them up.
    #[must_use]
    pub fn new(files: Vec<FileAnalysis>) -> Report {
        let totals = files.iter().fold(Totals::default(), |t, f| Totals {
            files: t.files + 1,
            llm_call_sites: t.llm_call_sites + f.llm_call_sites,
            complexity: t.complexity + f.complexity,
        });
        Report { files, totals }
    }
}

/// Finds LLM call sites and complexity. Build once and share: it is
/// `Send + Sync` (parsers live in thread-locals).
#[derive(Debug)]
pub struct Analyzer {
    extensions: HashMap<String, Language>,
    tables: HashMap<ShapeTable, ShapeSet>,
}

impl Analyzer {
    /// Compiles the shapes and checks that every grammar loads.
    ///
    /// # Errors
    ///
    /// An invalid shape or extension ([`AnalysisError::Pattern`],
    /// [`AnalysisError::Extension`]) or a grammar the tree-sitter runtime
    /// refuses ([`AnalysisError::Grammar`]).
    pub fn new(shapes: Shapes) -> Result<Analyzer, AnalysisError> {
        let compiled = shapes.compile()?;
        for language in Language::ALL {
            language.check_grammar()?;
        }
        Ok(Analyzer {
            extensions: compiled.extensions,
            tables: compiled.tables,
        })
    }

    /// The language of `path` by its extension (case-insensitive; the
    /// policy's `[extensions]` override the built-in map). `None` for
    /// unmapped extensions and names without one (`Makefile`, `.bashrc`).
    #[must_use]
    pub fn language_for(&self, path: &str) -> Option<Language> {
        let name = path.rsplit(['/', '\\']).next()?;
        let (stem, extension) = name.rsplit_once('.')?;
        if stem.is_empty() || extension.is_empty() {
            return None;
        }
        self.extensions
            .get(&extension.to_ascii_lowercase())
            .copied()
    }

    /// Analyses one file. `language` overrides detection by extension.
    ///
    /// # Errors
    ///
    /// [`AnalysisError::UnknownLanguage`] when `language` is `None` and the
    /// extension is not mapped; [`AnalysisError::Parse`] if tree-sitter gives
    /// no tree. Syntax errors in the file are not errors: tree-sitter recovers
    /// and whatever parses as calls and functions is counted.
    pub fn analyze(
        &self,
        path: &str,
        source: &str,
        language: Option<Language>,
    ) -> Result<FileAnalysis, AnalysisError> {
        let language = match language.or_else(|| self.language_for(path)) {
            Some(language) => language,
            None => {
                return Err(AnalysisError::UnknownLanguage {
                    path: path.to_owned(),
                })
            }
        };
        let tree = language.parse(path, source)?;
        let empty = ShapeSet::default();
        let shapes = self.tables.get(&language.shape_table()).unwrap_or(&empty);
        let walk = match language {
            Language::Python => engine::walk(&python::Python, &tree, source, shapes),
            Language::Rust => engine::walk(&rust::Rust, &tree, source, shapes),
            Language::JavaScript | Language::TypeScript | Language::Tsx => {
                engine::walk(&js::Js, &tree, source, shapes)
            }
            Language::Go => engine::walk(&go::Go, &tree, source, shapes),
            Language::Elixir => {
                let mut walk = engine::walk(&elixir::Elixir, &tree, source, shapes);
                walk.functions = elixir::merge_clauses(walk.functions);
                walk
            }
        };
        let complexity = walk.functions.iter().map(|f| f.complexity).sum();
        Ok(FileAnalysis {
            path: path.to_owned(),
            language,
            llm_call_sites: u32::try_from(walk.call_lines.len()).unwrap_or(u32::MAX),
            llm_call_lines: walk.call_lines,
            complexity,
            functions: walk.functions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn analyzer_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Analyzer>();
        assert_send_sync::<FileAnalysis>();
    }

    #[test]
    fn builtin_policy_is_valid_and_every_grammar_loads() {
        Analyzer::new(Shapes::builtin()).unwrap();
    }
}
