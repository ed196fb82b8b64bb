//! Why a verdict was given: the rule of contract §5 that decided and the
//! numbers it compared. On the wire a reason is its text (`"rule 2 merge:
//! success_rate 0.96 > 0.95"`), as contract §4 shows it; in genesis it is a
//! [`Reason`], so nothing has to read the rule back out of the words.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One reason for a verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    /// The rule of contract §5 (1 to 4); 0 for a reason that names none.
    pub rule: u8,
    /// The whole sentence, starting `rule N`, as published.
    pub text: String,
}

impl Reason {
    /// A reason of `rule`, worded `rule N {says}`.
    pub fn of_rule(rule: u8, says: impl fmt::Display) -> Reason {
        Reason {
            rule,
            text: format!("rule {rule} {says}"),
        }
    }

    /// A reason no rule gave (a failed experiment's error, say).
    pub fn unruled(text: impl Into<String>) -> Reason {
        Reason {
            rule: 0,
            text: text.into(),
        }
    }

    /// Reads a published reason: its rule is the number after `rule `.
    pub fn parse(text: &str) -> Reason {
        let rule = text
            .strip_prefix("rule ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        Reason {
            rule,
            text: text.to_owned(),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Reason {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Reason, D::Error> {
        Ok(Reason::parse(&String::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_its_text_on_the_wire_and_keeps_its_rule() {
        let reason = Reason::of_rule(3, "merge_with_adaptations: x");
        let json = serde_json::to_string(&reason).unwrap();
        assert_eq!(json, r#""rule 3 merge_with_adaptations: x""#);
        assert_eq!(serde_json::from_str::<Reason>(&json).unwrap(), reason);
        assert_eq!(Reason::parse("no rule here").rule, 0);
    }
}
