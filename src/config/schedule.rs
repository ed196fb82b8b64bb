//! Schedules of the `[schedule]` table: cron expressions with a seconds field.
//!
//! Lives with the config so a bad expression is refused when the config is
//! loaded, naming the key; the scheduler in `jobs` only consumes parsed ones.

use std::str::FromStr;

use crate::errors::{GenesisError, Result};

/// Parses a 6-field cron expression (seconds first), with a message that
/// says what shape is expected.
pub fn parse_schedule(expr: &str) -> Result<cron::Schedule> {
    cron::Schedule::from_str(expr).map_err(|e| {
        GenesisError::InvalidRequest(format!(
            "{expr:?} is not a cron expression with a seconds field (sec min hour day month weekday, e.g. \"0 0 */6 * * *\"): {e}"
        ))
    })
}
