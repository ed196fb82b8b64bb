//! `[sandbox] user`: the numeric `uid:gid` that owns every snapshot file and
//! runs every suite, parsed once when the config loads.

use std::fmt;
use std::str::FromStr;

/// Owner of every file in a snapshot and the user of every run: the sandbox
/// user, so tests can write their tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u64,
    pub gid: u64,
}

impl FromStr for Owner {
    type Err = String;

    fn from_str(text: &str) -> Result<Owner, String> {
        let bad = || format!("expected numeric uid:gid, got {text:?}");
        let (uid, gid) = text.split_once(':').ok_or_else(bad)?;
        Ok(Owner {
            uid: uid.parse().map_err(|_| bad())?,
            gid: gid.parse().map_err(|_| bad())?,
        })
    }
}

/// `uid:gid`, as Docker's `User` takes it and the config spells it.
impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}

impl<'de> serde::Deserialize<'de> for Owner {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Owner, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// As the config spells it, so a key that holds it (the baseline cache
/// key) has the bytes it had when the field was a string.
impl serde::Serialize for Owner {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_is_numeric_uid_colon_gid() {
        assert_eq!(
            "10:20".parse::<Owner>().unwrap(),
            Owner { uid: 10, gid: 20 }
        );
        assert_eq!(Owner { uid: 10, gid: 20 }.to_string(), "10:20");
        for bad in ["genesis", "10", "10:x", ":20"] {
            assert!(bad.parse::<Owner>().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&Owner { uid: 1, gid: 2 }).unwrap();
        assert_eq!(json, "\"1:2\"");
    }
}
