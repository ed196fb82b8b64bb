//! Enums whose values have one stable name each: the contract's words
//! (`low`, `merge_with_adaptations`, `patch_failed`, ...). The name is what
//! goes into JSON, the store and the export, so a value is parsed from it
//! once, where it is read, and matched as a type everywhere else.

use super::{ErrorKind, Recommendation, RiskLevel};

/// An enum with a fixed set of named values.
pub trait Named: Copy + Sized + 'static {
    /// Every value, in the order they are shown.
    const ALL: &'static [Self];

    /// The value's name (the contract's word for it).
    fn as_str(self) -> &'static str;

    /// The value with this name, if any.
    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.as_str() == name)
    }
}

impl Named for RiskLevel {
    const ALL: &'static [Self] = &RiskLevel::ALL;
    fn as_str(self) -> &'static str {
        RiskLevel::as_str(self)
    }
}

impl Named for Recommendation {
    const ALL: &'static [Self] = &[
        Recommendation::Merge,
        Recommendation::MergeWithAdaptations,
        Recommendation::Rollback,
    ];
    fn as_str(self) -> &'static str {
        Recommendation::as_str(self)
    }
}

impl Named for ErrorKind {
    const ALL: &'static [Self] = &[
        ErrorKind::InvalidRequest,
        ErrorKind::PatchFailed,
        ErrorKind::Timeout,
        ErrorKind::Oom,
        ErrorKind::DiskLimit,
        ErrorKind::SandboxError,
        ErrorKind::NoTests,
        ErrorKind::BadReport,
        ErrorKind::EnvironmentFailed,
        ErrorKind::EnvironmentChanged,
        ErrorKind::Internal,
    ];
    fn as_str(self) -> &'static str {
        ErrorKind::as_str(self)
    }
}

/// Serde by name, for rows whose encoding is not self-describing
/// (bincode): the bytes are those of the name as a string, so a row keeps
/// its meaning if variants are ever reordered, and rows written when these
/// fields were plain strings read unchanged.
pub mod by_name {
    use super::Named;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<T: Named, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(value.as_str())
    }

    pub fn deserialize<'de, T: Named, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
        let name = String::deserialize(d)?;
        T::from_name(&name).ok_or_else(|| D::Error::custom(format!("unknown name {name:?}")))
    }

    /// The same for an optional value (`None` as serde's none).
    pub mod option {
        use super::Named;
        use serde::{de::Error, Deserialize, Deserializer, Serializer};

        pub fn serialize<T: Named, S: Serializer>(
            value: &Option<T>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match value {
                Some(v) => s.serialize_some(v.as_str()),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, T: Named, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<T>, D::Error> {
            match Option::<String>::deserialize(d)? {
                None => Ok(None),
                Some(name) => T::from_name(&name)
                    .map(Some)
                    .ok_or_else(|| D::Error::custom(format!("unknown name {name:?}"))),
            }
        }
    }

    /// The same for `(id, value)` pairs.
    pub mod pairs {
        use super::Named;
        use serde::ser::SerializeSeq;
        use serde::{de::Error, Deserialize, Deserializer, Serializer};

        pub fn serialize<T: Named, S: Serializer>(
            pairs: &[(String, T)],
            s: S,
        ) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(pairs.len()))?;
            for (id, value) in pairs {
                seq.serialize_element(&(id, value.as_str()))?;
            }
            seq.end()
        }

        pub fn deserialize<'de, T: Named, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Vec<(String, T)>, D::Error> {
            Vec::<(String, String)>::deserialize(d)?
                .into_iter()
                .map(|(id, name)| match T::from_name(&name) {
                    Some(v) => Ok((id, v)),
                    None => Err(D::Error::custom(format!("unknown name {name:?}"))),
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back_to_its_value() {
        fn round_trip<T: Named + PartialEq + std::fmt::Debug>() {
            for v in T::ALL {
                assert_eq!(T::from_name(v.as_str()), Some(*v));
            }
            assert_eq!(T::from_name("no such name"), None);
        }
        round_trip::<RiskLevel>();
        round_trip::<Recommendation>();
        round_trip::<ErrorKind>();
    }

    #[test]
    fn by_name_writes_the_bytes_a_string_field_wrote() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct Typed {
            #[serde(with = "by_name")]
            risk: RiskLevel,
            #[serde(with = "by_name::option")]
            kind: Option<ErrorKind>,
        }
        #[derive(serde::Serialize)]
        struct Plain {
            risk: String,
            kind: Option<String>,
        }
        let config = bincode::config::standard();
        let typed = Typed {
            risk: RiskLevel::High,
            kind: Some(ErrorKind::PatchFailed),
        };
        let plain = Plain {
            risk: "high".into(),
            kind: Some("patch_failed".into()),
        };
        let bytes = bincode::serde::encode_to_vec(&typed, config).unwrap();
        assert_eq!(
            bytes,
            bincode::serde::encode_to_vec(&plain, config).unwrap()
        );
        let (back, _): (Typed, usize) = bincode::serde::decode_from_slice(&bytes, config).unwrap();
        assert_eq!(back, typed);
    }
}
