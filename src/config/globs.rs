//! `install_inputs` globs: which files of a repo key its environment.
//!
//! Matched against repo-relative paths with `/` separators. `*` and `?` do
//! not cross a `/` (so `requirements*.txt` means the top-level files only)
//! and `**` does (`**/package.json` is every package.json). Parsed when the
//! config is loaded, so a bad glob is refused naming its key.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::errors::{GenesisError, Result};

/// A compiled set of `install_inputs` globs (read from the config as the
/// list of patterns, compiled once).
#[derive(Debug, Clone, Default)]
pub struct InputGlobs {
    patterns: Vec<String>,
    set: GlobSet,
}

impl PartialEq for InputGlobs {
    fn eq(&self, other: &Self) -> bool {
        self.patterns == other.patterns
    }
}

impl<'de> serde::Deserialize<'de> for InputGlobs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let patterns = Vec::<String>::deserialize(d)?;
        InputGlobs::new(&patterns).map_err(serde::de::Error::custom)
    }
}

impl InputGlobs {
    pub fn new(patterns: &[String]) -> Result<InputGlobs> {
        let mut builder = GlobSetBuilder::new();
        for pattern in patterns {
            let glob = GlobBuilder::new(pattern)
                .literal_separator(true)
                .build()
                .map_err(|e| GenesisError::InvalidRequest(format!("glob {pattern:?}: {e}")))?;
            builder.add(glob);
        }
        let set = builder
            .build()
            .map_err(|e| GenesisError::InvalidRequest(format!("install_inputs: {e}")))?;
        Ok(InputGlobs {
            patterns: patterns.to_vec(),
            set,
        })
    }

    pub fn matches(&self, path: &str) -> bool {
        self.set.is_match(path)
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// The patterns as configured.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn globs(p: &[&str]) -> InputGlobs {
        InputGlobs::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn star_stays_in_its_directory_and_double_star_crosses() {
        let g = globs(&["requirements*.txt", "**/package.json"]);
        assert!(g.matches("requirements.txt"));
        assert!(g.matches("requirements-dev.txt"));
        assert!(!g.matches("docs/requirements.txt"));
        assert!(g.matches("package.json"));
        assert!(g.matches("web/app/package.json"));
        assert!(!g.matches("package.json.bak"));
    }

    #[test]
    fn a_bad_glob_is_named() {
        let err = InputGlobs::new(&["[".to_string()]).unwrap_err().to_string();
        assert!(err.contains("\"[\""), "{err}");
    }
}
