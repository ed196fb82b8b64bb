//! TEMPORARY STUB until the export module lands.
use crate::errors::Result;
use crate::store::Store;
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExportCounts {
    pub records: u64,
    pub metrics: u64,
    pub history: u64,
}
pub fn write_sql<W: std::io::Write>(
    _store: &Store,
    _out: W,
    _since_ms: Option<i64>,
) -> Result<ExportCounts> {
    Err(crate::errors::GenesisError::Internal(
        "export not yet implemented".into(),
    ))
}
pub fn write_csv(
    _store: &Store,
    _dir: &std::path::Path,
    _since_ms: Option<i64>,
) -> Result<ExportCounts> {
    Err(crate::errors::GenesisError::Internal(
        "export not yet implemented".into(),
    ))
}
