//! The endpoint's answers (contract §2b): the repo's `llm_answers` JSONL,
//! one `{"match": "text", "answer": "text"}` per line, read once per
//! experiment from the base commit, so the baseline and the candidate get
//! the same answer for the same prompt whatever the patch does to the file.

use serde::Deserialize;

/// Answers by substring of the last user message; first match wins.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Answers {
    rules: Vec<(String, String)>,
    fallback: String,
}

#[derive(Deserialize)]
struct Line {
    #[serde(rename = "match")]
    pattern: String,
    answer: String,
}

impl Answers {
    /// Only the fallback (no `llm_answers`, or the file is absent).
    pub fn fixed(fallback: &str) -> Answers {
        Answers {
            rules: Vec::new(),
            fallback: fallback.to_owned(),
        }
    }

    /// Parses the JSONL text; blank lines are skipped, and a line that is
    /// not `{"match", "answer"}` is an error naming its number.
    pub fn parse(text: &str, fallback: &str) -> Result<Answers, String> {
        let mut rules = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let parsed: Line = serde_json::from_str(line).map_err(|e| {
                format!(
                    "line {}: expected {{\"match\": \"…\", \"answer\": \"…\"}}: {e}",
                    n + 1
                )
            })?;
            rules.push((parsed.pattern, parsed.answer));
        }
        Ok(Answers {
            rules,
            fallback: fallback.to_owned(),
        })
    }

    pub fn answer_for(&self, last_user_message: &str) -> &str {
        self.rules
            .iter()
            .find(|(pattern, _)| last_user_message.contains(pattern.as_str()))
            .map_or(self.fallback.as_str(), |(_, answer)| answer.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_line_wins_else_the_fallback() {
        let a = Answers::parse(
            "{\"match\": \"capital\", \"answer\": \"Paris\"}\n\n{\"match\": \"capital of Italy\", \"answer\": \"Rome\"}\n",
            "none",
        )
        .unwrap();
        assert_eq!(a.answer_for("What is the capital of Italy?"), "Paris");
        assert_eq!(a.answer_for("hello"), "none");
        let err = Answers::parse("{\"match\": 1}", "x").unwrap_err();
        assert!(err.starts_with("line 1:"), "{err}");
    }
}
