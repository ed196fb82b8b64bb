//! `genesis analyze PATH... [--json]`: what the analysis sees in files, so
//! users can check their LLM call shapes (contract §5a). Directories are
//! walked (files of unknown languages in them are skipped); a file named
//! on the command line that cannot be read or parsed makes the exit code 2.

use std::path::{Path, PathBuf};

use crate::analysis::{Analyzer, FileAnalysis, Report};
use crate::config::Config;
use crate::errors::Result;

pub fn run(config: &Config, paths: &[PathBuf], json: bool) -> Result<i32> {
    let analyzer = &config.llm_analyzer;
    let mut files = Vec::new();
    let mut failed = false;
    for path in paths {
        for (file, named) in expand(path) {
            match analyze_file(analyzer, &file) {
                Ok(analysis) => files.push(analysis),
                // Inside a directory, files of other languages are expected.
                Err(Skip::UnknownLanguage) if !named => {}
                Err(skip) => {
                    eprintln!("genesis: {}: {skip}", file.display());
                    failed = true;
                }
            }
        }
    }
    let report = Report::new(files);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print_text(&report);
    }
    Ok(if failed { 2 } else { 0 })
}

/// Why a file has no analysis.
enum Skip {
    Unreadable(std::io::Error),
    NotUtf8,
    UnknownLanguage,
    Analysis(String),
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::Unreadable(e) => write!(f, "cannot be read: {e}"),
            Skip::NotUtf8 => f.write_str("is not UTF-8 text"),
            Skip::UnknownLanguage => f.write_str(
                "unknown language (by extension; map it in the llm_patterns policy's [extensions])",
            ),
            Skip::Analysis(e) => f.write_str(e),
        }
    }
}

fn analyze_file(analyzer: &Analyzer, path: &Path) -> std::result::Result<FileAnalysis, Skip> {
    let shown = path.display().to_string();
    if analyzer.language_for(&shown).is_none() {
        return Err(Skip::UnknownLanguage);
    }
    let bytes = std::fs::read(path).map_err(Skip::Unreadable)?;
    let text = String::from_utf8(bytes).map_err(|_| Skip::NotUtf8)?;
    analyzer
        .analyze(&shown, &text, None)
        .map_err(|e| Skip::Analysis(e.to_string()))
}

/// The files under `path` (itself when a file), each with whether it was
/// named on the command line; links are not followed, order is stable.
fn expand(path: &Path) -> Vec<(PathBuf, bool)> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return vec![(path.to_path_buf(), true)];
    };
    if !meta.is_dir() {
        return vec![(path.to_path_buf(), true)];
    }
    let mut found = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        entries.sort();
        for entry in entries.into_iter().rev() {
            match std::fs::symlink_metadata(&entry) {
                Ok(m) if m.is_dir() => stack.push(entry),
                Ok(m) if m.is_file() => found.push((entry, false)),
                _ => {}
            }
        }
    }
    found.sort();
    found
}

fn print_text(report: &Report) {
    for f in &report.files {
        let lines: Vec<String> = f.llm_call_lines.iter().map(u32::to_string).collect();
        println!(
            "{}  {}  llm call sites {}{}  complexity {} in {} function(s)",
            f.path,
            f.language,
            f.llm_call_sites,
            if lines.is_empty() {
                String::new()
            } else {
                format!(" (lines {})", lines.join(", "))
            },
            f.complexity,
            f.functions.len()
        );
    }
    let t = &report.totals;
    println!(
        "total: {} file(s), {} llm call site(s), complexity {}",
        t.files, t.llm_call_sites, t.complexity
    );
}
