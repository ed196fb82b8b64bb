//! Counting LLM call sites in a source tree, for the `llm_reduction` metric
//! (`(before - after) / before`).
//!
//! # Why lex before matching
//!
//! Matching call patterns against raw text counts every mention: the call shown
//! in a doc comment, the one quoted in a prompt string, the one commented out.
//! In real code those mentions are common (docs explain which client is used,
//! prompts name the tools), which made a raw-regex counter wrong about 40% of the
//! time. So each file first goes through a small per-language lexer
//! ([`strip_comments_and_strings`]) that replaces comments and string literals
//! with spaces, and only then are the patterns matched. A full parser is not
//! needed: to know where comments and literals start and end, a lexer that
//! understands quotes, escapes, comment markers and a few special forms (sigils,
//! raw strings, lifetimes, template literals) is enough. What each lexer
//! handles, and what it deliberately simplifies, is documented on [`Lexer`]
//! and in `lexer.rs`.
//!
//! Blanking keeps byte offsets and line breaks, so a pattern may span lines (a
//! call split as `client.chat.completions.create(\n`) and a match offset maps
//! back to the original file.
//!
//! # Where the patterns come from
//!
//! Patterns are data, not code: `policies/llm_patterns.toml` maps each language
//! to its file extensions and to regexes (see [`LlmPatterns`]). The language's
//! table name also picks its lexer ([`Lexer::for_language`]).
//!
//! # What counts as one call site
//!
//! Every match of every pattern is a call site, except that matches which
//! overlap are one site: `LLM.Service.call` matches both a specific and a
//! generic pattern but is a single call. Zero-length matches never count.

mod lexer;

use std::collections::{BTreeMap, HashMap};

use regex::{Regex, RegexBuilder};

pub use lexer::{strip_comments_and_strings, Lexer};

/// The contents of `llm_patterns.toml`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmPatterns {
    /// Keyed by language name, which also selects the lexer.
    pub languages: BTreeMap<String, LanguagePatterns>,
}

/// One language's table in `llm_patterns.toml`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LanguagePatterns {
    /// File extensions, without the dot (a leading dot is tolerated);
    /// compared case-insensitively.
    pub extensions: Vec<String>,
    /// Regexes (Rust `regex` syntax, multi-line mode) matched against code
    /// whose comments and string literals are blanked.
    pub patterns: Vec<String>,
}

/// A pattern file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PatternError {
    #[error("language `{language}`: invalid pattern `{pattern}`: {cause}")]
    Invalid {
        language: String,
        pattern: String,
        cause: Box<regex::Error>,
    },
    #[error(
        "language `{language}`: pattern `{pattern}` matches the empty string, \
         so it would count call sites everywhere"
    )]
    MatchesEmpty { language: String, pattern: String },
    #[error("extension `{extension}` is listed by both `{first}` and `{second}`")]
    DuplicateExtension {
        extension: String,
        first: String,
        second: String,
    },
}

/// Compiled form of [`LlmPatterns`]; build once, reuse (it is `Send + Sync`).
#[derive(Debug)]
pub struct LlmCounter {
    languages: Vec<CompiledLanguage>,
    /// Lower-case extension → index into `languages`.
    by_extension: HashMap<String, usize>,
}

#[derive(Debug)]
struct CompiledLanguage {
    name: String,
    lexer: Lexer,
    patterns: Vec<Regex>,
}

impl LlmCounter {
    /// Compiles every pattern.
    ///
    /// # Errors
    ///
    /// On the first regex that does not compile or matches the empty string
    /// (naming its language and the regex), and on an extension claimed by two
    /// languages (which one should count the file would otherwise be arbitrary).
    pub fn new(p: &LlmPatterns) -> Result<Self, PatternError> {
        let mut counter = LlmCounter {
            languages: Vec::with_capacity(p.languages.len()),
            by_extension: HashMap::new(),
        };
        for (name, language) in &p.languages {
            let index = counter.languages.len();
            counter.languages.push(compile_language(name, language)?);
            for extension in &language.extensions {
                counter.claim_extension(extension, name, index)?;
            }
        }
        Ok(counter)
    }

    /// Counts call sites in one file; `None` if its extension is not configured.
    #[must_use]
    pub fn count_file(&self, path: &str, source: &str) -> Option<usize> {
        let language = self.language_for(path)?;
        let code = strip_comments_and_strings(language.lexer, source);
        Some(language.count(&code))
    }

    /// Whether [`count_file`](Self::count_file) would look at `path`, so callers
    /// can skip reading files that cannot contain counted calls.
    #[must_use]
    pub fn handles(&self, path: &str) -> bool {
        self.language_for(path).is_some()
    }

    /// Sums [`count_file`](Self::count_file) over `(path, content)` pairs;
    /// files in unconfigured languages count zero.
    #[must_use]
    pub fn count_tree<'a>(&self, files: impl IntoIterator<Item = (&'a str, &'a str)>) -> usize {
        files
            .into_iter()
            .filter_map(|(path, source)| self.count_file(path, source))
            .sum()
    }

    fn claim_extension(
        &mut self,
        extension: &str,
        language: &str,
        index: usize,
    ) -> Result<(), PatternError> {
        let key = normalize_extension(extension);
        match self.by_extension.get(&key) {
            Some(&other) if other != index => Err(PatternError::DuplicateExtension {
                extension: key,
                first: self
                    .languages
                    .get(other)
                    .map(|l| l.name.clone())
                    .unwrap_or_default(),
                second: language.to_owned(),
            }),
            _ => {
                self.by_extension.insert(key, index);
                Ok(())
            }
        }
    }

    fn language_for(&self, path: &str) -> Option<&CompiledLanguage> {
        let index = self.by_extension.get(&extension_of(path)?)?;
        self.languages.get(*index)
    }
}

impl CompiledLanguage {
    /// Call sites in code that has already been stripped.
    fn count(&self, code: &str) -> usize {
        let spans = self
            .patterns
            .iter()
            .flat_map(|re| re.find_iter(code))
            .filter(|m| !m.is_empty())
            .map(|m| (m.start(), m.end()))
            .collect();
        count_disjoint(spans)
    }
}

fn compile_language(
    name: &str,
    language: &LanguagePatterns,
) -> Result<CompiledLanguage, PatternError> {
    let patterns = language
        .patterns
        .iter()
        .map(|pattern| compile_pattern(name, pattern))
        .collect::<Result<_, _>>()?;
    Ok(CompiledLanguage {
        name: name.to_owned(),
        lexer: Lexer::for_language(name),
        patterns,
    })
}

/// Multi-line mode, so that `^`/`$` anchor at line starts and ends, which is
/// what a pattern author looking at source code means by them.
fn compile_pattern(language: &str, pattern: &str) -> Result<Regex, PatternError> {
    let re = RegexBuilder::new(pattern)
        .multi_line(true)
        .build()
        .map_err(|cause| PatternError::Invalid {
            language: language.to_owned(),
            pattern: pattern.to_owned(),
            cause: Box::new(cause),
        })?;
    if re.is_match("") {
        return Err(PatternError::MatchesEmpty {
            language: language.to_owned(),
            pattern: pattern.to_owned(),
        });
    }
    Ok(re)
}

/// Number of groups of overlapping `(start, end)` spans.
fn count_disjoint(mut spans: Vec<(usize, usize)>) -> usize {
    spans.sort_unstable();
    let mut count = 0;
    let mut reach = 0;
    for (start, end) in spans {
        if count == 0 || start >= reach {
            count += 1;
            reach = end;
        } else {
            reach = reach.max(end);
        }
    }
    count
}

fn normalize_extension(extension: &str) -> String {
    extension.trim_start_matches('.').to_ascii_lowercase()
}

/// The lower-case extension of the file name in `path` (either separator);
/// `None` for names without one, including dotfiles like `.bashrc`.
fn extension_of(path: &str) -> Option<String> {
    let name = path.rsplit(['/', '\\']).next()?;
    let (stem, extension) = name.rsplit_once('.')?;
    (!stem.is_empty() && !extension.is_empty()).then(|| extension.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/policies/llm_patterns.toml"
    ));

    fn fixture(name: &str) -> &'static str {
        match name {
            "sparc.ex" => include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/llm/sparc.ex"
            )),
            "agent.py" => include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/llm/agent.py"
            )),
            "client.rs" => include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/llm/client.rs"
            )),
            "chat.ts" => include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/llm/chat.ts"
            )),
            _ => "",
        }
    }

    fn policy_counter() -> LlmCounter {
        let patterns: LlmPatterns = toml::from_str(POLICY).expect("policy parses");
        LlmCounter::new(&patterns).expect("policy compiles")
    }

    fn counter(toml_text: &str) -> Result<LlmCounter, PatternError> {
        LlmCounter::new(&toml::from_str(toml_text).expect("test TOML parses"))
    }

    #[test]
    fn real_policy_file_loads_and_covers_the_four_languages() {
        let c = policy_counter();
        for path in [
            "a.ex", "a.exs", "a.py", "a.rs", "a.ts", "a.tsx", "a.js", "a.jsx", "a.mjs", "a.cjs",
        ] {
            assert!(c.handles(path), "{path} not configured");
        }
        let langs: Vec<_> = c
            .languages
            .iter()
            .map(|l| (l.name.as_str(), l.lexer))
            .collect();
        assert!(langs.contains(&("elixir", Lexer::Elixir)));
        assert!(langs.contains(&("python", Lexer::Python)));
        assert!(langs.contains(&("rust", Lexer::Rust)));
        assert!(langs.contains(&("typescript", Lexer::CLike)));
    }

    // Fixture counts. Each fixture marks its real calls with a `call N` comment;
    // everything else that looks like a call is a decoy in a comment, doc,
    // string, heredoc, sigil, raw string, template text or regex literal.

    #[test]
    fn elixir_fixture_counts_exactly() {
        // 7 real calls: LLM.Service.call in run_phase (2), the LLM.Provider.stream
        // pipe, LLM.Service.call in summarize, the one inside the `#{…}`
        // interpolation in critique, the one after the `?#` char literal, and
        // OpenAI.Chat.create. Decoys: @moduledoc/@doc heredocs (""" and '''),
        // ~S""" heredoc, # comments, strings, a charlist, and ~s ~S ~w ~r sigils
        // with ( [ { < " ' | / delimiters.
        assert_eq!(
            policy_counter().count_file("lib/sparc.ex", fixture("sparc.ex")),
            Some(7)
        );
    }

    #[test]
    fn python_fixture_counts_exactly() {
        // 5 real calls: chat.completions.create, anthropic messages.create,
        // litellm.completion, llm.call, llm.invoke (which two patterns match,
        // counted once). Decoys: module/class/function docstrings, # comments,
        // '…' "…" '''…''' strings with escapes, r/b/rb/f/rf prefixes, and an
        // f-string field holding a call.
        assert_eq!(
            policy_counter().count_file("agent/agent.py", fixture("agent.py")),
            Some(5)
        );
    }

    #[test]
    fn rust_fixture_counts_exactly() {
        // 4 real calls: client.chat().create, llm.call, llm.complete (right after
        // a '"' char literal) and client.chat().create_stream (after lifetimes
        // and a loop label). Decoys: //! /// // comments, a nested /* */
        // comment, a rustdoc code block, "…" with escapes, r#"…"# and r##"…"##
        // raw strings, a byte string.
        assert_eq!(
            policy_counter().count_file("src/client.rs", fixture("client.rs")),
            Some(4)
        );
    }

    #[test]
    fn typescript_fixture_counts_exactly() {
        // 7 real calls: openai chat.completions.create, anthropic messages.create,
        // generateText, llm.complete inside a template `${…}`, llm.chat on a line
        // with two divisions, streamText, chain.invoke. Decoys: JSDoc, // and /* */
        // comments, '…' and "…" strings, template text, regex literals, and
        // the import of generateText/streamText (no call).
        assert_eq!(
            policy_counter().count_file("web/chat.ts", fixture("chat.ts")),
            Some(7)
        );
    }

    /// The fixtures' decoys are real: matching the raw text, as the old counter
    /// did, finds 28/22/14/15 call sites where there are 7/5/4/7.
    #[test]
    fn without_lexing_the_decoys_would_be_counted() {
        let c = policy_counter();
        for (name, raw) in [
            ("sparc.ex", 28),
            ("agent.py", 22),
            ("client.rs", 14),
            ("chat.ts", 15),
        ] {
            let counted = c.language_for(name).map(|l| l.count(fixture(name)));
            assert_eq!(counted, Some(raw), "{name}");
        }
    }

    #[test]
    fn count_tree_sums_and_skips_unconfigured_files() {
        let files = [
            ("lib/sparc.ex", fixture("sparc.ex")),
            ("agent.py", fixture("agent.py")),
            ("src/client.rs", fixture("client.rs")),
            ("web/chat.ts", fixture("chat.ts")),
            ("README.md", "llm.call(x) LLM.Service.call(y)"),
        ];
        assert_eq!(policy_counter().count_tree(files), 7 + 5 + 4 + 7);
    }

    #[test]
    fn unconfigured_extension_is_none() {
        let c = policy_counter();
        assert_eq!(c.count_file("README.md", "llm.call(x)"), None);
        assert_eq!(c.count_file("Makefile", "llm.call(x)"), None);
        assert_eq!(c.count_file(".py", "llm.call(x)"), None);
    }

    #[test]
    fn extensions_match_case_insensitively_and_ignore_directories() {
        let c = counter("[languages.python]\nextensions = ['.PY']\npatterns = ['llm\\.call\\(']")
            .unwrap();
        assert_eq!(c.count_file("dir.rs/Agent.py", "llm.call(1)"), Some(1));
        assert_eq!(c.count_file("dir.py\\agent.txt", "llm.call(1)"), None);
    }

    #[test]
    fn overlapping_matches_are_one_call_site() {
        let c = counter(
            "[languages.elixir]\nextensions = ['ex']\n\
             patterns = ['\\bLLM\\.Service\\.call\\b', '\\bLLM\\.\\w+\\.call\\b', 'Service']",
        )
        .unwrap();
        assert_eq!(
            c.count_file("a.ex", "LLM.Service.call(a)\nLLM.Service.call(b)"),
            Some(2)
        );
    }

    #[test]
    fn invalid_pattern_error_names_language_and_regex() {
        let err =
            counter("[languages.rust]\nextensions = ['rs']\npatterns = ['ok', 'llm\\.call(']")
                .unwrap_err();
        assert!(matches!(err, PatternError::Invalid { .. }));
        let message = err.to_string();
        assert!(message.contains("`rust`"), "{message}");
        assert!(message.contains("llm\\.call("), "{message}");
    }

    #[test]
    fn pattern_matching_empty_string_is_rejected() {
        let err = counter("[languages.go]\nextensions = ['go']\npatterns = ['x*']").unwrap_err();
        assert!(matches!(err, PatternError::MatchesEmpty { .. }), "{err}");
    }

    #[test]
    fn extension_claimed_twice_is_rejected() {
        let err = counter(
            "[languages.typescript]\nextensions = ['js']\npatterns = []\n\
             [languages.javascript]\nextensions = ['JS']\npatterns = []",
        )
        .unwrap_err();
        assert!(
            matches!(err, PatternError::DuplicateExtension { .. }),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_rejected_to_catch_typos() {
        let parsed =
            toml::from_str::<LlmPatterns>("[languages.go]\nextensions = ['go']\npattern = ['x']");
        assert!(parsed.is_err());
    }

    #[test]
    fn unknown_language_uses_clike_lexer() {
        let c =
            counter("[languages.go]\nextensions = ['go']\npatterns = ['llm\\.Call\\(']").unwrap();
        let src = "// llm.Call(x)\ns := \"llm.Call(y)\"\nr, err := llm.Call(ctx)";
        assert_eq!(c.count_file("main.go", src), Some(1));
    }

    #[test]
    fn patterns_are_multi_line() {
        let c =
            counter("[languages.python]\nextensions = ['py']\npatterns = ['^\\s*ask\\(']").unwrap();
        assert_eq!(
            c.count_file("a.py", "x = 1\nask(1)\n  ask(2)\nz.ask(3)"),
            Some(2)
        );
    }

    #[test]
    fn counter_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<LlmCounter>();
    }
}
