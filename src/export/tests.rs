use super::*;

fn copy(field: Field) -> String {
    let mut s = String::new();
    push_copy_field(&mut s, &field);
    s
}

fn csv(field: Field) -> String {
    let mut s = String::new();
    push_csv_field(&mut s, &field);
    s
}

#[test]
fn copy_text_escapes_what_copy_reads_specially() {
    assert_eq!(copy(Field::Text("a\tb\nc\rd\\e")), "a\\tb\\nc\\rd\\\\e");
    assert_eq!(copy(Field::Text("\\N")), "\\\\N");
    assert_eq!(copy(Field::Null), "\\N");
    assert_eq!(copy(Field::Text("nul\0byte")), "nulbyte");
    assert_eq!(copy(Field::Text("ü 😀 'q' \"d\"")), "ü 😀 'q' \"d\"");
}

#[test]
fn jsonb_gets_copy_escaping_on_top_of_json_and_loses_nul() {
    let json = serde_json::json!({"a\u{0}b": "x\u{0}y\n\\"}).to_string();
    assert_eq!(copy(Field::Json(Cow::Owned(json))), r#"{"ab":"xy\\n\\\\"}"#);
}

#[test]
fn numbers_and_times_are_exact_and_carry_an_offset() {
    assert_eq!(copy(Field::Float(0.1)), "0.1");
    assert_eq!(copy(Field::Float(f64::NAN)), "NaN");
    assert_eq!(copy(Field::Float(f64::NEG_INFINITY)), "-Infinity");
    assert_eq!(copy(Field::Int(u64::MAX)), i64::MAX.to_string());
    assert_eq!(
        copy(Field::Time(1_764_000_000_123)),
        "2025-11-24 16:00:00.123+00"
    );
}

#[test]
fn csv_quotes_text_so_empty_is_not_null() {
    assert_eq!(csv(Field::Text("")), "\"\"");
    assert_eq!(csv(Field::Null), "");
    assert_eq!(csv(Field::Text("a,\"b\"\r\nc")), "\"a,\"\"b\"\"\r\nc\"");
    assert_eq!(csv(Field::Int(3)), "3");
}

#[test]
fn upsert_moves_records_forward_only() {
    let sql = upsert(&RECORDS, "t");
    assert!(sql.contains(
        "ON CONFLICT (experiment_id) DO UPDATE SET host = EXCLUDED.host, instance_id = EXCLUDED.instance_id"
    ));
    assert!(sql.ends_with("WHERE experiment_records.updated_at <= EXCLUDED.updated_at;"));
    assert!(!sql.contains("experiment_id = EXCLUDED.experiment_id"));
}

#[test]
fn every_row_has_one_field_per_column() {
    let request = crate::contract::Request::parse(
        br#"{"experiment_id":"e","instance_id":"i","experiment_type":"t","risk_level":"low","changes":{"files":[],"patch":""}}"#,
    )
    .unwrap();
    let r = ExperimentRecord::new(&request, crate::store::Status::Queued, "h:1", 0);
    assert_eq!(record_fields(&r).len(), RECORDS.columns.len());
    let h = SandboxEvent {
        id: 1,
        host: "h".into(),
        experiment_id: "e".into(),
        operation: crate::store::SandboxOperation::Create,
        path: "/p".into(),
        size_bytes: 0,
        detail: String::new(),
        inserted_at: 0,
    };
    assert_eq!(history_fields(&h).len(), HISTORY.columns.len());
    let m = crate::store::MetricsRow {
        experiment_id: "e".into(),
        host: "h".into(),
        metrics: Default::default(),
        baseline: Default::default(),
        regressions: vec![],
        flaky: vec![],
        inserted_at: 0,
    };
    assert_eq!(metrics_fields(&m, None).len(), METRICS.columns.len());
}

#[test]
fn metrics_rows_carry_the_observed_calls_or_null() {
    use crate::contract::{BeforeAfter, LlmSource};
    let m = crate::store::MetricsRow {
        experiment_id: "e".into(),
        host: "h".into(),
        metrics: Default::default(),
        baseline: Default::default(),
        regressions: vec![],
        flaky: vec![],
        inserted_at: 0,
    };
    let llm = LlmSummary {
        source: LlmSource::Observed,
        calls: BeforeAfter {
            before: 7,
            after: 3,
        },
        tokens: BeforeAfter {
            before: 700,
            after: 310,
        },
        by_api: Default::default(),
        refused: BeforeAfter::default(),
        unavailable: None,
    };
    let names: Vec<&str> = METRICS.columns.iter().map(|c| c.name).collect();
    let tail = &names[names.len() - 6..];
    assert_eq!(
        tail,
        [
            "inserted_at",
            "llm_source",
            "llm_calls_before",
            "llm_calls_after",
            "llm_tokens_before",
            "llm_tokens_after"
        ],
        "new columns go last (CSV loads by position)"
    );
    let fields = metrics_fields(&m, Some(&llm));
    let n = fields.len();
    assert_eq!(
        fields[n - 5..],
        [
            Field::Text("observed"),
            Field::Int(7),
            Field::Int(3),
            Field::Int(700),
            Field::Int(310)
        ]
    );
    let old = metrics_fields(&m, None);
    assert!(old[n - 5..].iter().all(|f| *f == Field::Null));
    assert!(ddl(&METRICS).contains(
        "ALTER TABLE experiment_metrics ADD COLUMN IF NOT EXISTS llm_calls_before bigint;"
    ));
}

#[test]
fn every_table_has_a_host_and_history_is_keyed_by_it() {
    for table in TABLES {
        assert!(
            table.columns.iter().any(|c| c.name == "host"),
            "{}",
            table.name
        );
    }
    let sql = upsert(&HISTORY, "t");
    assert!(
        sql.contains("ON CONFLICT (host, id) DO UPDATE SET experiment_id"),
        "{sql}"
    );
    assert!(!sql.contains("host = EXCLUDED.host"), "{sql}");
    assert!(ddl(&HISTORY).contains("PRIMARY KEY (host, id)"));
    assert!(upgrade_from_hostless("o'brien").contains("SET host = 'o''brien' WHERE host IS NULL"));
}
