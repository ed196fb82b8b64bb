//! The one error type of the analysis module.
//!
//! Every message names what a person has to look at: the policy file and the
//! TOML problem, the language table and the shape that does not parse, the
//! file that cannot be analysed, or the grammar that cannot be loaded.

use super::Language;

/// Anything that can go wrong while loading shapes or analysing a file.
#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    /// The shapes policy is not valid TOML or does not fit the schema
    /// (unknown keys, wrong types, unknown language names).
    #[error("shapes policy {origin}: {cause}")]
    Policy {
        /// Where the text came from (a path, or `<built-in>`).
        origin: String,
        #[source]
        cause: Box<toml::de::Error>,
    },

    /// A shape in the policy cannot be used.
    #[error("shapes policy {origin}: [{table}] shape `{pattern}`: {reason}")]
    Pattern {
        origin: String,
        /// The policy table holding the shape (`python`, `javascript`, ...).
        table: String,
        pattern: String,
        reason: String,
    },

    /// An entry of the `[extensions]` table cannot be used.
    #[error("shapes policy {origin}: [extensions] `{extension}`: {reason}")]
    Extension {
        origin: String,
        extension: String,
        reason: String,
    },

    /// The shapes policy file cannot be read.
    #[error("shapes policy {path}: cannot read: {cause}")]
    Io {
        path: String,
        #[source]
        cause: std::io::Error,
    },

    /// `analyze` was given no language and the path's extension is not mapped.
    #[error("{path}: no language for this file (extension not mapped; pass a language)")]
    UnknownLanguage { path: String },

    /// The grammar compiled into the binary was refused by the tree-sitter
    /// runtime (ABI version outside the supported range).
    #[error("{language} grammar cannot be loaded: {reason}")]
    Grammar { language: Language, reason: String },

    /// tree-sitter returned no tree (it only does so when cancelled or timed out).
    #[error("{path}: the {language} parser produced no syntax tree")]
    Parse { path: String, language: Language },
}
