//! Durations in the config: written as integer milliseconds under keys
//! that end in `_ms` (the contract's names), read once into a `Duration`
//! so no caller converts them again.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    Ok(Duration::from_millis(u64::deserialize(d)?))
}

/// As milliseconds, so a serialised value (a cache key) stays what the
/// config file says.
pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(value.as_millis()).unwrap_or(u64::MAX))
}
