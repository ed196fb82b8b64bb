//! `genesis export` loaded into a real PostgreSQL (a throwaway cluster of
//! this test's own): the SQL file twice and a newer one on top, the CSV
//! files with `\copy`, two hosts' exports into one database, an export over
//! a database loaded before the host column, and every column of every row
//! compared with what the stores hold, including a row whose text holds
//! every character COPY and CSV treat specially.

use std::path::Path;

use serde_json::{json, Value};

use genesis::contract::{ErrorKind, Metrics, Recommendation, Request};
use genesis::export::{write_csv, write_sql, ExportCounts};
use genesis::store::{
    BaselineFigures, ExperimentRecord, MetricsRow, SandboxOperation, Status, Store,
};

use crate::support::pg::PgCluster;

/// Everything a test log or a description might hold.
const NASTY: &str = "tab\there, newline\nthere, cr\rthere, backslash \\ and \\\\, literal \\N, \
                     quotes ' \" `, comma, semicolon; NUL\0gone, unicode ü 日本 😀 \u{2028}, \\.\n\\.";

fn without_nul(s: &str) -> String {
    s.replace('\0', "")
}

fn request(id: &str, description: &str, patch: &str) -> Request {
    let doc = json!({
        "experiment_id": id,
        "instance_id": "inst-1",
        "experiment_type": "refactor",
        "description": description,
        "risk_level": "medium",
        "estimated_impact": 0.3,
        "changes": {"files": ["src/a.py"], "description": description, "patch": patch},
        "rollback_plan": description,
        "timeout_ms": 60000
    });
    Request::parse(doc.to_string().as_bytes()).unwrap()
}

fn metrics_row(id: &str, inserted_at: i64) -> MetricsRow {
    MetricsRow {
        experiment_id: id.into(),
        host: String::new(),
        metrics: Metrics {
            success_rate: 11.0 / 13.0,
            llm_reduction: 0.5,
            regression: 2.0 / 13.0,
            runtime_ms: 41_250,
            test_count: 13,
            failures: 2,
            memory_peak_mb: 412.123_456_789,
            cpu_usage_percent: 1e-300,
            io_operations: 1834,
            performance_delta: -0.04,
            code_coverage_percent: None,
            complexity_change: Some(1.5e300),
        },
        baseline: BaselineFigures {
            test_count: 13,
            failures: 0,
            runtime_ms: 43_000,
        },
        regressions: vec![format!("tests::{NASTY}"), "plain".into()],
        flaky: vec![],
        inserted_at,
    }
}

/// A store with a plain record, a nasty one, a failed one, metrics and history.
fn populate(store: &Store) {
    populate_as(store, "exp")
}

/// As [`populate`], the experiment ids starting with `prefix`.
fn populate_as(store: &Store, prefix: &str) {
    let t0 = 1_764_000_000_123; // 2025-11-24T16:00:00.123Z
    let id = |name: &str| format!("{prefix}-{name}");
    let mut plain = ExperimentRecord::new(
        &request(&id("plain"), "simple", "p"),
        Status::Completed,
        "h:1",
        t0,
    );
    plain.recommendation = Some(Recommendation::Merge);
    plain.result_json = Some(
        json!({
            "status": "success",
            "n": 1,
            "llm": {
                "source": "observed",
                "calls": {"before": 9, "after": 4},
                "tokens": {"before": 12_345, "after": 6_789},
                "by_api": {"openai.chat": {"before": 9, "after": 4}}
            }
        })
        .to_string(),
    );
    let mut nasty = ExperimentRecord::new(
        &request(&id("nasty"), NASTY, NASTY),
        Status::Completed,
        "h:1",
        t0 + 1,
    );
    nasty.recommendation = Some(Recommendation::Rollback);
    nasty.error = Some(NASTY.into());
    let mut failed = ExperimentRecord::new(
        &request(&id("failed"), "", ""),
        Status::Failed,
        "h:1",
        t0 + 2,
    );
    failed.error = Some("timed out".into());
    failed.error_kind = Some(ErrorKind::Timeout);
    failed.timeout_ms = None;
    store
        .write_final(&plain, Some(&metrics_row(&id("plain"), t0)), None)
        .unwrap();
    store
        .write_final(&nasty, Some(&metrics_row(&id("nasty"), t0 + 1)), None)
        .unwrap();
    store.write_final(&failed, None, None).unwrap();
    store
        .add_history(
            &id("nasty"),
            SandboxOperation::Create,
            &format!("/home/x/sandboxes/{}", id("nasty")),
            42,
            NASTY,
        )
        .unwrap();
    store
        .add_history(
            &id("plain"),
            SandboxOperation::Archive,
            &format!("/home/x/archives/{}.tar.gz", id("plain")),
            u64::MAX,
            "",
        )
        .unwrap();
}

fn ms(v: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap_or_else(|e| panic!("{v}: {e}"))
        .timestamp_millis()
}

fn opt_text(v: &Option<String>) -> Value {
    v.as_deref()
        .map_or(Value::Null, |s| Value::String(without_nul(s)))
}

/// jsonb cannot hold NUL: the export drops it from every string.
fn json_without_nul(text: &str) -> Value {
    serde_json::from_str(&without_nul(&text.replace("\\u0000", ""))).unwrap()
}

/// Compares every column PostgreSQL holds with the store.
fn assert_matches_store(pg: &PgCluster, db: &str, store: &Store) {
    assert_matches_stores(pg, db, &[store])
}

/// Compares every column PostgreSQL holds with what the stores hold together.
fn assert_matches_stores(pg: &PgCluster, db: &str, stores: &[&Store]) {
    let mut records = Vec::new();
    for store in stores {
        store
            .for_each_record(None, |r| {
                records.push(r);
                Ok(())
            })
            .unwrap();
    }
    records.sort_by(|a, b| a.experiment_id.cmp(&b.experiment_id));
    let rows = pg.rows(db, "experiment_records", "experiment_id");
    assert_eq!(rows.len(), records.len(), "{rows:?}");
    for (row, r) in rows.iter().zip(&records) {
        let expect_text = |col: &str, value: &str| {
            assert_eq!(
                row[col],
                Value::String(without_nul(value)),
                "{col} of {}",
                r.experiment_id
            )
        };
        expect_text("experiment_id", &r.experiment_id);
        expect_text("host", &r.host);
        expect_text("instance_id", &r.instance_id);
        expect_text("experiment_type", &r.experiment_type);
        expect_text("description", &r.description);
        expect_text("risk_level", r.risk_level.as_str());
        expect_text("rollback_plan", &r.rollback_plan);
        expect_text("status", r.status.as_str());
        assert_eq!(row["estimated_impact"].as_f64(), Some(r.estimated_impact));
        assert_eq!(row["changes"], json_without_nul(&r.changes_json));
        assert_eq!(row["timeout_ms"].as_u64(), r.timeout_ms);
        assert_eq!(
            row["recommendation"],
            opt_text(&r.recommendation.map(|v| v.as_str().to_owned()))
        );
        assert_eq!(row["error"], opt_text(&r.error));
        assert_eq!(
            row["error_kind"],
            opt_text(&r.error_kind.map(|v| v.as_str().to_owned()))
        );
        match &r.result_json {
            Some(j) => assert_eq!(row["result"], json_without_nul(j)),
            None => assert_eq!(row["result"], Value::Null),
        }
        assert_eq!(ms(&row["inserted_at"]), r.inserted_at);
        assert_eq!(ms(&row["updated_at"]), r.updated_at);
    }

    // Each metrics row with the `llm` of its experiment's result.
    let mut metrics = Vec::new();
    for store in stores {
        store
            .for_each_metrics(|m| {
                let llm = store.get(&m.experiment_id)?.and_then(|r| r.llm());
                metrics.push((m, llm));
                Ok(())
            })
            .unwrap();
    }
    metrics.sort_by(|a, b| a.0.experiment_id.cmp(&b.0.experiment_id));
    let rows = pg.rows(db, "experiment_metrics", "experiment_id");
    assert_eq!(rows.len(), metrics.len());
    for (row, (m, llm)) in rows.iter().zip(&metrics) {
        let x = &m.metrics;
        let f = |col: &str| row[col].as_f64();
        let u = |col: &str| row[col].as_u64();
        assert_eq!(row["experiment_id"], Value::String(m.experiment_id.clone()));
        assert_eq!(row["host"], Value::String(m.host.clone()));
        assert_eq!(f("success_rate"), Some(x.success_rate));
        assert_eq!(f("llm_reduction"), Some(x.llm_reduction));
        assert_eq!(f("regression"), Some(x.regression));
        assert_eq!(u("runtime_ms"), Some(x.runtime_ms));
        assert_eq!(u("test_count"), Some(x.test_count));
        assert_eq!(u("failures"), Some(x.failures));
        assert_eq!(f("memory_peak_mb"), Some(x.memory_peak_mb));
        assert_eq!(f("cpu_usage_percent"), Some(x.cpu_usage_percent));
        assert_eq!(u("io_operations"), Some(x.io_operations));
        assert_eq!(f("performance_delta"), Some(x.performance_delta));
        assert_eq!(f("code_coverage_percent"), x.code_coverage_percent);
        assert_eq!(f("complexity_change"), x.complexity_change);
        assert_eq!(u("baseline_test_count"), Some(m.baseline.test_count));
        assert_eq!(u("baseline_failures"), Some(m.baseline.failures));
        assert_eq!(u("baseline_runtime_ms"), Some(m.baseline.runtime_ms));
        let regressions: Vec<Value> = m
            .regressions
            .iter()
            .map(|s| Value::String(without_nul(s)))
            .collect();
        assert_eq!(row["regressions"], Value::Array(regressions));
        assert_eq!(row["flaky"], json!(m.flaky));
        assert_eq!(ms(&row["inserted_at"]), m.inserted_at);
        assert_eq!(row["llm_source"], json!(llm.as_ref().map(|l| l.source)));
        assert_eq!(u("llm_calls_before"), llm.as_ref().map(|l| l.calls.before));
        assert_eq!(u("llm_calls_after"), llm.as_ref().map(|l| l.calls.after));
        assert_eq!(
            u("llm_tokens_before"),
            llm.as_ref().map(|l| l.tokens.before)
        );
        assert_eq!(u("llm_tokens_after"), llm.as_ref().map(|l| l.tokens.after));
    }
    // The fixture's values, so a store-side mistake cannot hide: the plain
    // experiment observed 9 → 4 calls; the nasty one has no result.
    for row in &rows {
        let picked = (
            row["llm_source"].clone(),
            row["llm_calls_before"].clone(),
            row["llm_tokens_after"].clone(),
        );
        if row["experiment_id"].as_str().unwrap().ends_with("-plain") {
            assert_eq!(picked, (json!("observed"), json!(9), json!(6789)));
        } else {
            assert_eq!(picked, (Value::Null, Value::Null, Value::Null));
        }
    }

    let mut history = Vec::new();
    for store in stores {
        store
            .for_each_history(|h| {
                history.push(h);
                Ok(())
            })
            .unwrap();
    }
    history.sort_by(|a, b| (&a.host, a.id).cmp(&(&b.host, b.id)));
    let rows = pg.rows(db, "sandbox_history", "host, id");
    assert_eq!(rows.len(), history.len());
    for (row, h) in rows.iter().zip(&history) {
        assert_eq!(row["host"], Value::String(h.host.clone()));
        assert_eq!(row["id"].as_u64(), Some(h.id));
        assert_eq!(row["experiment_id"], Value::String(h.experiment_id.clone()));
        assert_eq!(row["operation"], Value::String(h.operation.as_str().into()));
        assert_eq!(row["path"], Value::String(h.path.clone()));
        // bigint is signed: the export clamps the (unreal) u64 extreme.
        assert_eq!(
            row["size_bytes"].as_u64(),
            Some(h.size_bytes.min(i64::MAX as u64))
        );
        assert_eq!(row["detail"], Value::String(without_nul(&h.detail)));
        assert_eq!(ms(&row["inserted_at"]), h.inserted_at);
    }
}

fn sql_export(store: &Store, path: &Path) -> ExportCounts {
    let file = std::fs::File::create(path).unwrap();
    write_sql(store, file, None).unwrap()
}

fn assert_loads(pg: &PgCluster, db: &str, file: &Path) {
    let out = pg.load_file(db, file);
    assert!(
        out.status.success(),
        "psql -f {} failed:\n{}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sql_export_loads_twice_and_a_newer_one_on_top_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("genesis.redb")).unwrap();
    populate(&store);
    let pg = PgCluster::start();
    pg.exec("postgres", "CREATE DATABASE genesis");

    let first = dir.path().join("first.sql");
    let counts = sql_export(&store, &first);
    assert_eq!(
        counts,
        ExportCounts {
            records: 3,
            metrics: 2,
            history: 2
        }
    );
    assert_loads(&pg, "genesis", &first);
    assert_matches_store(&pg, "genesis", &store);
    assert_loads(&pg, "genesis", &first);
    assert_matches_store(&pg, "genesis", &store);

    // The store moves on: one record changes, one is added; the newer
    // export replaces and adds, and the older one can no longer roll it back.
    let mut changed = store.get("exp-failed").unwrap().unwrap();
    changed.error = Some("interrupted by restart\tagain".into());
    changed.updated_at += 60_000;
    store.put_record(&changed).unwrap();
    let extra = ExperimentRecord::new(&request("exp-new", "new", "p"), Status::Queued, "h:1", 1);
    store.put_record(&extra).unwrap();
    let second = dir.path().join("second.sql");
    sql_export(&store, &second);
    assert_loads(&pg, "genesis", &second);
    assert_matches_store(&pg, "genesis", &store);
    assert_loads(&pg, "genesis", &first);
    assert_matches_store(&pg, "genesis", &store);
}

#[test]
fn csv_export_loads_with_copy_csv_header() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("genesis.redb")).unwrap();
    populate(&store);
    let out = dir.path().join("csv");
    let counts = write_csv(&store, &out, None).unwrap();
    assert_eq!(counts.records, 3);

    let pg = PgCluster::start();
    pg.exec("postgres", "CREATE DATABASE genesis");
    assert_loads(&pg, "genesis", &out.join("schema.sql"));
    for table in [
        "experiment_records",
        "experiment_metrics",
        "sandbox_history",
    ] {
        let file = out.join(format!("{table}.csv"));
        pg.exec(
            "genesis",
            &format!("\\copy {table} FROM '{}' csv header", file.display()),
        );
    }
    assert_matches_store(&pg, "genesis", &store);
}

#[test]
fn since_keeps_only_rows_at_or_after_the_instant() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("genesis.redb")).unwrap();
    populate(&store);
    let mut out = Vec::new();
    // exp-failed was updated 2 ms after exp-plain; metrics of exp-nasty 1 ms after.
    let counts = write_sql(&store, &mut out, Some(1_764_000_000_124)).unwrap();
    assert_eq!((counts.records, counts.metrics), (2, 1));
    let text = String::from_utf8(out).unwrap();
    assert!(
        !text.lines().any(|l| l.starts_with("exp-plain\t")),
        "{text}"
    );
}

/// Two hosts, each with its own store (so their history ids are both 1 and
/// 2), load into one database: nothing collides, reloading adds nothing.
#[test]
fn exports_of_two_hosts_load_into_one_database() {
    let dir = tempfile::tempdir().unwrap();
    let cache = genesis::store::DEFAULT_CACHE_BYTES;
    let a = Store::open_with(&dir.path().join("a.redb"), cache, "host-a").unwrap();
    let b = Store::open_with(&dir.path().join("b.redb"), cache, "host-b").unwrap();
    populate_as(&a, "a");
    populate_as(&b, "b");
    let pg = PgCluster::start();
    pg.exec("postgres", "CREATE DATABASE genesis");
    let (file_a, file_b) = (dir.path().join("a.sql"), dir.path().join("b.sql"));
    sql_export(&a, &file_a);
    sql_export(&b, &file_b);
    for file in [&file_a, &file_b, &file_a, &file_b] {
        assert_loads(&pg, "genesis", file);
    }
    assert_matches_stores(&pg, "genesis", &[&a, &b]);
    let hosts = pg.rows(
        "genesis",
        "(SELECT host, count(*) AS n FROM sandbox_history GROUP BY host)",
        "host",
    );
    assert_eq!(
        hosts,
        [
            json!({"host": "host-a", "n": 2}),
            json!({"host": "host-b", "n": 2})
        ]
    );
}

/// The tables as the exports before hosts created them: no `host` column,
/// `sandbox_history` keyed by `id` alone.
const SCHEMA_BEFORE_HOSTS: &str = "
CREATE TABLE experiment_records (experiment_id text NOT NULL, instance_id text, experiment_type text,
    description text, risk_level text, estimated_impact double precision, changes jsonb,
    rollback_plan text, timeout_ms bigint, status text, recommendation text, error text,
    error_kind text, result jsonb, inserted_at timestamptz, updated_at timestamptz,
    PRIMARY KEY (experiment_id));
CREATE TABLE experiment_metrics (experiment_id text NOT NULL, success_rate double precision,
    llm_reduction double precision, regression double precision, runtime_ms bigint,
    test_count bigint, failures bigint, memory_peak_mb double precision,
    cpu_usage_percent double precision, io_operations bigint, performance_delta double precision,
    code_coverage_percent double precision, complexity_change double precision,
    baseline_test_count bigint, baseline_failures bigint, baseline_runtime_ms bigint,
    regressions jsonb, flaky jsonb, inserted_at timestamptz, PRIMARY KEY (experiment_id));
CREATE TABLE sandbox_history (id bigint NOT NULL, experiment_id text, operation text, path text,
    size_bytes bigint, detail text, inserted_at timestamptz, PRIMARY KEY (id));
INSERT INTO experiment_records (experiment_id, status, updated_at)
    VALUES ('exp-plain', 'queued', '2025-01-01 00:00:00+00');
INSERT INTO experiment_metrics (experiment_id, test_count) VALUES ('exp-plain', 1);
INSERT INTO sandbox_history (id, experiment_id, operation) VALUES (1, 'exp-nasty', 'create'),
    (2, 'exp-plain', 'archive');
";

/// A database loaded before hosts were recorded: the first newer export
/// names its host on the old rows and re-keys `sandbox_history`, so the
/// same history loaded again updates those rows instead of doubling them.
#[test]
fn an_export_loads_over_a_database_from_before_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let cache = genesis::store::DEFAULT_CACHE_BYTES;
    let store = Store::open_with(&dir.path().join("g.redb"), cache, "host-a").unwrap();
    populate(&store);
    let pg = PgCluster::start();
    pg.exec("postgres", "CREATE DATABASE genesis");
    pg.exec("genesis", SCHEMA_BEFORE_HOSTS);
    let file = dir.path().join("g.sql");
    sql_export(&store, &file);
    assert_loads(&pg, "genesis", &file);
    assert_loads(&pg, "genesis", &file);
    assert_matches_store(&pg, "genesis", &store);
    let key = pg.rows(
        "genesis",
        "(SELECT pg_get_constraintdef(oid) AS def FROM pg_constraint \
          WHERE conrelid = 'sandbox_history'::regclass AND contype = 'p')",
        "def",
    );
    assert_eq!(key, [json!({"def": "PRIMARY KEY (host, id)"})]);
}
