//! Schedules of the `[schedule]` table: cron expressions with a seconds field.
//!
//! Parsed when the config is loaded (a bad expression is refused naming
//! its key), so the scheduler in `jobs` only consumes parsed ones.

use std::str::FromStr;

use crate::errors::{GenesisError, Result};

/// One `[schedule]` entry: the parsed schedule (its `Display` is the
/// expression as written).
pub fn deserialize<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<cron::Schedule, D::Error> {
    let expr = <String as serde::Deserialize>::deserialize(d)?;
    parse_schedule(&expr).map_err(serde::de::Error::custom)
}

/// Parses a 6-field cron expression (seconds first), with a message that
/// says what shape is expected.
pub fn parse_schedule(expr: &str) -> Result<cron::Schedule> {
    cron::Schedule::from_str(expr).map_err(|e| {
        GenesisError::InvalidRequest(format!(
            "{expr:?} is not a cron expression with a seconds field (sec min hour day month weekday, e.g. \"0 0 */6 * * *\"): {e}"
        ))
    })
}
