//! `genesis export`: the store as a PostgreSQL-loadable SQL file or as CSV.
//!
//! The SQL file is one transaction that `psql -v ON_ERROR_STOP=1 -f` loads
//! into an empty database or over an earlier load:
//! 1. `CREATE TABLE IF NOT EXISTS` per table, then `ADD COLUMN IF NOT EXISTS`
//!    per column, so a newer export also loads over an older schema;
//! 2. per table, `COPY` (text format) into a temporary table, then
//!    `INSERT … ON CONFLICT DO UPDATE` into the real one: loading the same
//!    export twice, or a newer one over an older one, never fails and never
//!    duplicates a row. Records only move forward: a row is replaced only
//!    by one with the same or a later `updated_at`.
//!
//! COPY text escaping (the part that must survive anything a test log
//! holds): `\` `\n` `\r` `\t` are backslash-escaped, NULL is `\N` (so a
//! literal `\N` in data becomes `\\N`), NUL bytes are dropped because
//! PostgreSQL text cannot hold them, and jsonb values have NULs removed from
//! their strings before the COPY escaping is applied on top of JSON's.
//! Timestamps are always written with an explicit `+00` offset so the load
//! does not depend on the server's time zone.
//!
//! Streaming: rows go from a redb read transaction straight to a buffered
//! writer, one at a time; memory does not grow with the number of rows.
//!
//! `experiment_metrics` carries, besides the metrics row, the observed LLM
//! calls of the experiment's result (`llm_source`, `llm_calls_*`,
//! `llm_tokens_*`; NULL for a result stored before runs had an LLM
//! endpoint). Columns added after a table's first release go at the end of
//! its list: `ADD COLUMN` appends them there on an older table, and a CSV
//! `\copy` without a column list fills columns by position.
//!
//! `--since` keeps rows whose own time is at or after the instant: a
//! record's `updated_at`, a metrics row's and a history row's `inserted_at`.
//!
//! Several hosts, one database (contract §7): every table has a `host`
//! column (`[host] name`, which the store stamps on its rows), and
//! `sandbox_history`, whose ids are counted per store, is keyed by
//! (`host`, `id`). A database loaded before the host column existed is
//! upgraded once by the first newer export loaded into it: its rows came
//! from one host, and are taken to be the loading export's (so reloading
//! that host's history updates them instead of adding copies), and
//! `sandbox_history`'s key gains `host`.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::contract::LlmSummary;
use crate::errors::{GenesisError, Result};
use crate::store::{ExperimentRecord, MetricsRow, SandboxEvent, Store};

/// How many rows of each table an export wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExportCounts {
    pub records: u64,
    pub metrics: u64,
    pub history: u64,
}

impl ExportCounts {
    fn add(&mut self, source: Source, n: u64) {
        match source {
            Source::Records => self.records += n,
            Source::Metrics => self.metrics += n,
            Source::History => self.history += n,
        }
    }
}

/// Streams one table's rows into `emit`, keeping those at or after `since_ms`
/// (a record's `updated_at`, a metrics or history row's `inserted_at`).
fn stream_rows(
    store: &Store,
    table: &Table,
    since_ms: Option<i64>,
    emit: &mut dyn FnMut(&[Field]) -> Result<()>,
) -> Result<()> {
    let keep = |t: i64| since_ms.is_none_or(|s| t >= s);
    match table.source {
        Source::Records => store.for_each_record(since_ms, |r| emit(&record_fields(&r))),
        Source::Metrics => store.for_each_metrics(|m| match keep(m.inserted_at) {
            true => emit(&metrics_fields(&m, result_llm(store, &m)?.as_ref())),
            false => Ok(()),
        }),
        Source::History => store.for_each_history(|h| match keep(h.inserted_at) {
            true => emit(&history_fields(&h)),
            false => Ok(()),
        }),
    }
}

/// One column of an exported table.
struct Column {
    name: &'static str,
    sql_type: &'static str,
}

const fn col(name: &'static str, sql_type: &'static str) -> Column {
    Column { name, sql_type }
}

/// Which store table an exported table comes from.
#[derive(Clone, Copy)]
enum Source {
    Records,
    Metrics,
    History,
}

/// An exported table: its columns, in the order rows are written.
struct Table {
    source: Source,
    name: &'static str,
    /// The primary key's columns: what the upsert matches on.
    key: &'static [&'static str],
    columns: &'static [Column],
    /// Extra condition on the upsert (records only move forward).
    update_when: Option<&'static str>,
}

const RECORDS: Table = Table {
    source: Source::Records,
    name: "experiment_records",
    key: &["experiment_id"],
    columns: &[
        col("experiment_id", "text NOT NULL"),
        col("host", "text"),
        col("instance_id", "text"),
        col("experiment_type", "text"),
        col("description", "text"),
        col("risk_level", "text"),
        col("estimated_impact", "double precision"),
        col("changes", "jsonb"),
        col("rollback_plan", "text"),
        col("timeout_ms", "bigint"),
        col("status", "text"),
        col("recommendation", "text"),
        col("error", "text"),
        col("error_kind", "text"),
        col("result", "jsonb"),
        col("inserted_at", "timestamptz"),
        col("updated_at", "timestamptz"),
    ],
    update_when: Some("experiment_records.updated_at <= EXCLUDED.updated_at"),
};

const METRICS: Table = Table {
    source: Source::Metrics,
    name: "experiment_metrics",
    key: &["experiment_id"],
    columns: &[
        col("experiment_id", "text NOT NULL"),
        col("host", "text"),
        col("success_rate", "double precision"),
        col("llm_reduction", "double precision"),
        col("regression", "double precision"),
        col("runtime_ms", "bigint"),
        col("test_count", "bigint"),
        col("failures", "bigint"),
        col("memory_peak_mb", "double precision"),
        col("cpu_usage_percent", "double precision"),
        col("io_operations", "bigint"),
        col("performance_delta", "double precision"),
        col("code_coverage_percent", "double precision"),
        col("complexity_change", "double precision"),
        col("baseline_test_count", "bigint"),
        col("baseline_failures", "bigint"),
        col("baseline_runtime_ms", "bigint"),
        col("regressions", "jsonb"),
        col("flaky", "jsonb"),
        col("inserted_at", "timestamptz"),
        col("llm_source", "text"),
        col("llm_calls_before", "bigint"),
        col("llm_calls_after", "bigint"),
        col("llm_tokens_before", "bigint"),
        col("llm_tokens_after", "bigint"),
    ],
    update_when: None,
};

const HISTORY: Table = Table {
    source: Source::History,
    name: "sandbox_history",
    key: &["host", "id"],
    columns: &[
        col("host", "text NOT NULL"),
        col("id", "bigint NOT NULL"),
        col("experiment_id", "text"),
        col("operation", "text"),
        col("path", "text"),
        col("size_bytes", "bigint"),
        col("detail", "text"),
        col("inserted_at", "timestamptz"),
    ],
    update_when: None,
};

const TABLES: [&Table; 3] = [&RECORDS, &METRICS, &HISTORY];

/// One value of a row, before it is encoded for COPY or CSV.
#[derive(Debug, Clone, PartialEq)]
enum Field<'a> {
    Null,
    Text(&'a str),
    /// JSON text, made jsonb-safe (no `\u0000`) when written.
    Json(Cow<'a, str>),
    Int(u64),
    Float(f64),
    /// Unix milliseconds.
    Time(i64),
}

fn record_fields(r: &ExperimentRecord) -> Vec<Field<'_>> {
    use Field::*;
    vec![
        Text(&r.experiment_id),
        Text(&r.host),
        Text(&r.instance_id),
        Text(&r.experiment_type),
        Text(&r.description),
        Text(r.risk_level.as_str()),
        Float(r.estimated_impact),
        Json(Cow::Borrowed(&r.changes_json)),
        Text(&r.rollback_plan),
        r.timeout_ms.map_or(Null, Int),
        Text(r.status.as_str()),
        r.recommendation.map_or(Null, |v| Text(v.as_str())),
        r.error.as_deref().map_or(Null, Text),
        r.error_kind.map_or(Null, |v| Text(v.as_str())),
        r.result_json
            .as_deref()
            .map_or(Null, |j| Json(Cow::Borrowed(j))),
        Time(r.inserted_at),
        Time(r.updated_at),
    ]
}

/// The `llm` of the result a metrics row belongs to (the row itself has
/// only `llm_reduction`); None when the record or its `llm` is absent.
fn result_llm(store: &Store, m: &MetricsRow) -> Result<Option<LlmSummary>> {
    Ok(store.get(&m.experiment_id)?.and_then(|r| r.llm()))
}

/// A metrics row's fields, with `llm` (its result's) in the last columns.
fn metrics_fields<'a>(m: &'a MetricsRow, llm: Option<&LlmSummary>) -> Vec<Field<'a>> {
    use Field::*;
    let x = &m.metrics;
    let count = |pick: fn(&LlmSummary) -> u64| llm.map_or(Null, |l| Int(pick(l)));
    vec![
        Text(&m.experiment_id),
        Text(&m.host),
        Float(x.success_rate),
        Float(x.llm_reduction),
        Float(x.regression),
        Int(x.runtime_ms),
        Int(x.test_count),
        Int(x.failures),
        Float(x.memory_peak_mb),
        Float(x.cpu_usage_percent),
        Int(x.io_operations),
        Float(x.performance_delta),
        x.code_coverage_percent.map_or(Null, Float),
        x.complexity_change.map_or(Null, Float),
        Int(m.baseline.test_count),
        Int(m.baseline.failures),
        Int(m.baseline.runtime_ms),
        Json(Cow::Owned(json_list(&m.regressions))),
        Json(Cow::Owned(json_list(&m.flaky))),
        Time(m.inserted_at),
        llm.map_or(Null, |l| Text(l.source.as_str())),
        count(|l| l.calls.before),
        count(|l| l.calls.after),
        count(|l| l.tokens.before),
        count(|l| l.tokens.after),
    ]
}

fn history_fields(h: &SandboxEvent) -> Vec<Field<'_>> {
    use Field::*;
    vec![
        Text(&h.host),
        Int(h.id),
        Text(&h.experiment_id),
        Text(h.operation.as_str()),
        Text(&h.path),
        Int(h.size_bytes),
        Text(&h.detail),
        Time(h.inserted_at),
    ]
}

fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).expect("a list of strings serializes")
}

/// Writes the whole SQL export to `out`.
pub fn write_sql<W: Write>(store: &Store, out: W, since_ms: Option<i64>) -> Result<ExportCounts> {
    let mut out = BufWriter::with_capacity(1 << 16, out);
    let mut counts = ExportCounts::default();
    let io = |e: std::io::Error| GenesisError::io("writing the SQL export", e);
    writeln!(
        out,
        "-- genesis export (PostgreSQL); load with: psql -v ON_ERROR_STOP=1 -f FILE"
    )
    .map_err(io)?;
    writeln!(out, "SET client_encoding = 'UTF8';\nBEGIN;").map_err(io)?;
    write!(out, "{}", schema(store.host())).map_err(io)?;
    for table in TABLES {
        let n = copy_block(&mut out, table, |emit| {
            stream_rows(store, table, since_ms, emit)
        })?;
        counts.add(table.source, n);
    }
    writeln!(out, "COMMIT;").map_err(io)?;
    out.flush().map_err(io)?;
    Ok(counts)
}

/// Every table's DDL, then the one-time upgrade of a database loaded before
/// the host column; `host` is the exporting store's.
fn schema(host: &str) -> String {
    let mut sql: String = TABLES.iter().map(|t| ddl(t)).collect();
    sql.push_str(&upgrade_from_hostless(host));
    sql
}

/// `CREATE TABLE IF NOT EXISTS` plus `ADD COLUMN IF NOT EXISTS` per column.
fn ddl(table: &Table) -> String {
    let mut sql = format!("CREATE TABLE IF NOT EXISTS {} (\n", table.name);
    for c in table.columns {
        sql.push_str(&format!("    {} {},\n", c.name, c.sql_type));
    }
    sql.push_str(&format!("    PRIMARY KEY ({})\n);\n", table.key.join(", ")));
    for c in table.columns {
        let sql_type = c.sql_type.trim_end_matches(" NOT NULL");
        sql.push_str(&format!(
            "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {sql_type};\n",
            table.name, c.name
        ));
    }
    sql
}

/// Runs once on a database whose `sandbox_history` key lacks `host` (loaded
/// by an export from before hosts): names `host` on every row without one,
/// in all three tables, and re-keys `sandbox_history` on (`host`, `id`).
/// Later loads find the new key and skip it.
fn upgrade_from_hostless(host: &str) -> String {
    let host = sql_literal(host);
    let fill: String = TABLES
        .iter()
        .map(|t| {
            format!(
                "        UPDATE {} SET host = {host} WHERE host IS NULL;\n",
                t.name
            )
        })
        .collect();
    let history = HISTORY.name;
    let key = HISTORY.key.join(", ");
    format!(
        "DO $genesis_upgrade$\nDECLARE pkey name;\nBEGIN\n    \
         SELECT conname INTO pkey FROM pg_constraint WHERE conrelid = '{history}'::regclass AND contype = 'p'\n        \
         AND NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = conrelid AND attnum = ANY (conkey) AND attname = 'host');\n    \
         IF pkey IS NOT NULL THEN\n{fill}        \
         EXECUTE format('ALTER TABLE {history} DROP CONSTRAINT %I', pkey);\n        \
         ALTER TABLE {history} ADD PRIMARY KEY ({key});\n    \
         END IF;\nEND\n$genesis_upgrade$;\n"
    )
}

/// A SQL string literal (host names are checked to hostname characters,
/// so this only matters for a name that slipped past the config).
fn sql_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A COPY into a temporary table, then the upsert into the real one.
/// `rows` calls its argument once per row.
fn copy_block<W: Write>(
    out: &mut W,
    table: &Table,
    rows: impl FnOnce(&mut dyn FnMut(&[Field]) -> Result<()>) -> Result<()>,
) -> Result<u64> {
    let mut count = 0;
    let io = |e: std::io::Error| GenesisError::io("writing the SQL export", e);
    let temp = format!("genesis_import_{}", table.name);
    let names = column_names(table);
    writeln!(
        out,
        "CREATE TEMP TABLE {temp} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP;\nCOPY {temp} ({names}) FROM stdin;",
        table.name
    )
    .map_err(io)?;
    let mut line = String::new();
    rows(&mut |fields| {
        encode_row(&mut line, fields, "\t", push_copy_field, "\n");
        count += 1;
        out.write_all(line.as_bytes()).map_err(io)
    })?;
    writeln!(out, "\\.\n{}", upsert(table, &temp)).map_err(io)?;
    Ok(count)
}

fn column_names(table: &Table) -> String {
    table
        .columns
        .iter()
        .map(|c| c.name)
        .collect::<Vec<_>>()
        .join(", ")
}

fn upsert(table: &Table, temp: &str) -> String {
    let names = column_names(table);
    let updates = table
        .columns
        .iter()
        .filter(|c| !table.key.contains(&c.name))
        .map(|c| format!("{0} = EXCLUDED.{0}", c.name))
        .collect::<Vec<_>>()
        .join(", ");
    let condition = table
        .update_when
        .map(|w| format!(" WHERE {w}"))
        .unwrap_or_default();
    format!(
        "INSERT INTO {} ({names}) SELECT {names} FROM {temp}\n    ON CONFLICT ({}) DO UPDATE SET {updates}{condition};",
        table.name,
        table.key.join(", ")
    )
}

/// Replaces `line` with one row: fields encoded by `push`, joined by
/// `separator`, ended by `end` (COPY: tab and newline; CSV: comma and CRLF).
fn encode_row(
    line: &mut String,
    fields: &[Field],
    separator: &str,
    push: fn(&mut String, &Field),
    end: &str,
) {
    line.clear();
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            line.push_str(separator);
        }
        push(line, field);
    }
    line.push_str(end);
}

/// Appends one field in COPY text format.
fn push_copy_field(line: &mut String, field: &Field) {
    match field {
        Field::Null => line.push_str("\\N"),
        Field::Text(s) => push_copy_escaped(line, s),
        Field::Json(j) => push_copy_escaped(line, &jsonb_safe(j)),
        other => line.push_str(&plain_value(other)),
    }
}

fn push_copy_escaped(line: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            '\t' => line.push_str("\\t"),
            '\0' => {}
            c => line.push(c),
        }
    }
}

/// Numbers and timestamps, the same in COPY and CSV.
fn plain_value(field: &Field) -> String {
    match field {
        // bigint is signed; no real count or duration comes near the limit.
        Field::Int(n) => (*n).min(i64::MAX as u64).to_string(),
        Field::Float(x) => float_text(*x),
        Field::Time(ms) => timestamp_text(*ms),
        Field::Null | Field::Text(_) | Field::Json(_) => unreachable!("not a plain value"),
    }
}

/// Rust prints the shortest text that reads back as the same f64, which
/// PostgreSQL parses exactly; only the non-finite values need its spelling.
fn float_text(x: f64) -> String {
    if x.is_nan() {
        "NaN".into()
    } else if x.is_infinite() {
        if x > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        x.to_string()
    }
}

/// `2026-11-24 11:44:02.123+00`; always with the offset.
fn timestamp_text(ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S%.3f+00").to_string(),
        None => "1970-01-01 00:00:00+00".into(),
    }
}

/// jsonb cannot hold `\u0000`; drop NULs from every string and key.
fn jsonb_safe(json: &str) -> Cow<'_, str> {
    if !json.contains("\\u0000") {
        return Cow::Borrowed(json);
    }
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(mut value) => {
            strip_nul(&mut value);
            Cow::Owned(value.to_string())
        }
        // Not JSON after all (cannot happen for what genesis stores); keep
        // the load going with the text as a JSON string.
        Err(_) => Cow::Owned(serde_json::Value::String(json.replace('\0', "")).to_string()),
    }
}

fn strip_nul(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::String(s) => s.retain(|c| c != '\0'),
        Value::Array(items) => items.iter_mut().for_each(strip_nul),
        Value::Object(map) => {
            let entries = std::mem::take(map);
            for (mut key, mut v) in entries {
                key.retain(|c| c != '\0');
                strip_nul(&mut v);
                map.insert(key, v);
            }
        }
        _ => {}
    }
}

mod csv;
#[cfg(test)]
use csv::push_csv_field;
pub use csv::write_csv;

#[cfg(test)]
mod tests;
