use super::*;
use crate::contract::Request;
use crate::contract::{Changes, RiskLevel};

pub(crate) fn request(id: &str) -> Request {
    Request {
        experiment_id: id.into(),
        instance_id: "inst".into(),
        experiment_type: "refactor".into(),
        description: "d".into(),
        risk_level: RiskLevel::Medium,
        estimated_impact: 0.1,
        changes: Changes {
            files: vec![],
            description: String::new(),
            patch: None,
            patches: Default::default(),
        },
        rollback_plan: String::new(),
        timeout_ms: None,
        repo: None,
        base_ref: None,
        test_command: None,
    }
}

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("g.redb")).unwrap();
    (dir, store)
}

#[test]
fn insert_is_idempotent_and_indexes_follow_updates() {
    let (_dir, store) = open();
    let mut rec = ExperimentRecord::new(&request("a"), Status::Queued, "h:1", 10);
    assert_eq!(store.insert_new(&rec).unwrap(), Inserted::New);
    assert!(matches!(
        store.insert_new(&rec).unwrap(),
        Inserted::Existing(_)
    ));
    assert_eq!(store.ids_with_status(Status::Queued).unwrap(), vec!["a"]);
    rec.status = Status::Running;
    store.put_record(&rec).unwrap();
    assert!(store.ids_with_status(Status::Queued).unwrap().is_empty());
    assert_eq!(store.ids_with_status(Status::Running).unwrap(), vec!["a"]);
    assert_eq!(store.get("a").unwrap().unwrap().status, Status::Running);
}

#[test]
fn only_one_of_two_takers_of_a_dead_owners_experiment_wins() {
    let (_dir, store) = open();
    let rec = ExperimentRecord::new(&request("a"), Status::Running, "h:1", 10);
    store.insert_new(&rec).unwrap();
    assert!(store.take_over("a", "h:1", "h:2").unwrap());
    // The second taker saw the same dead owner, but the record moved on.
    assert!(!store.take_over("a", "h:1", "h:3").unwrap());
    assert!(!store.take_over("missing", "h:1", "h:3").unwrap());
    let now = store.get("a").unwrap().unwrap();
    assert_eq!((now.owner.as_str(), now.status), ("h:2", Status::Running));
    assert_eq!(store.ids_with_status(Status::Running).unwrap(), vec!["a"]);
}

#[test]
fn list_is_newest_first_and_filters() {
    let (_dir, store) = open();
    for (i, id) in ["x", "y", "z"].iter().enumerate() {
        let mut rec = ExperimentRecord::new(&request(id), Status::Queued, "h", i as i64);
        if *id == "y" {
            rec.status = Status::Failed;
        }
        store.insert_new(&rec).unwrap();
    }
    let ids: Vec<_> = store
        .list(None, 10)
        .unwrap()
        .into_iter()
        .map(|r| r.experiment_id)
        .collect();
    assert_eq!(ids, ["z", "y", "x"]);
    let failed = store.list(Some(Status::Failed), 10).unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(store.list(None, 2).unwrap().len(), 2);
}

#[test]
fn history_rows_get_increasing_ids() {
    let (_dir, store) = open();
    let a = store
        .add_history("e", SandboxOperation::Create, "/p", 1, "")
        .unwrap();
    let b = store
        .add_history("e", SandboxOperation::Delete, "/p", 0, "")
        .unwrap();
    store
        .add_history("other", SandboxOperation::Create, "/q", 0, "")
        .unwrap();
    assert!(b > a);
    let ops: Vec<_> = store
        .history("e")
        .unwrap()
        .into_iter()
        .map(|e| e.operation)
        .collect();
    assert_eq!(ops, [SandboxOperation::Create, SandboxOperation::Delete]);
}

#[test]
fn values_carry_a_schema_version() {
    let bytes = encode(&42u32).unwrap();
    assert_eq!(&bytes[..4], &SCHEMA_VERSION.to_le_bytes());
    assert_eq!(decode::<u32>(&bytes).unwrap(), 42);
    let mut future = bytes.clone();
    future[0] = 99;
    assert!(decode::<u32>(&future)
        .unwrap_err()
        .to_string()
        .contains("99"));
}

#[test]
fn reopening_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.redb");
    {
        let store = Store::open(&path).unwrap();
        let rec = ExperimentRecord::new(&request("keep"), Status::Completed, "h", 1);
        store.insert_new(&rec).unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(
        store.get("keep").unwrap().unwrap().status,
        Status::Completed
    );
    assert_eq!(store.schema_version().unwrap(), u64::from(SCHEMA_VERSION));
}

/// `value` in the shape `V` with schema version 1's header, as a store
/// written before hosts were recorded holds it.
fn v1_bytes<V, T>(value: &T) -> Vec<u8>
where
    V: serde::Serialize + serde::de::DeserializeOwned,
    T: serde::Serialize,
{
    let mut json = serde_json::to_value(value).unwrap();
    json.as_object_mut().unwrap().remove("host");
    let old: V = serde_json::from_value(json).unwrap();
    let mut out = 1u32.to_le_bytes().to_vec();
    out.extend(bincode::serde::encode_to_vec(&old, bincode::config::standard()).unwrap());
    out
}

/// Writes one experiment's record, metrics and history row as schema
/// version 1 stored them (no hosts), and marks the store as version 1.
fn write_as_schema_v1(
    store: &Store,
    rec: &ExperimentRecord,
    metrics: &MetricsRow,
    event: &SandboxEvent,
) {
    let txn = store.db.get().unwrap().begin_write().unwrap();
    let bytes = v1_bytes::<v1::ExperimentRecord, _>(rec);
    txn.open_table(RECORDS)
        .unwrap()
        .insert(rec.experiment_id.as_str(), bytes.as_slice())
        .unwrap();
    txn.open_table(BY_TIME)
        .unwrap()
        .insert((rec.inserted_at, rec.experiment_id.as_str()), ())
        .unwrap();
    let bytes = v1_bytes::<v1::MetricsRow, _>(metrics);
    txn.open_table(METRICS)
        .unwrap()
        .insert(metrics.experiment_id.as_str(), bytes.as_slice())
        .unwrap();
    let bytes = v1_bytes::<v1::SandboxEvent, _>(event);
    txn.open_table(HISTORY)
        .unwrap()
        .insert(event.id, bytes.as_slice())
        .unwrap();
    txn.open_multimap_table(HISTORY_BY_EXPERIMENT)
        .unwrap()
        .insert(event.experiment_id.as_str(), event.id)
        .unwrap();
    txn.open_table(META)
        .unwrap()
        .insert("schema_version", 1)
        .unwrap();
    txn.commit().unwrap();
}

#[test]
fn rows_written_before_hosts_read_back_with_the_stores_host() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.redb");
    let store = Store::open_with(&path, DEFAULT_CACHE_BYTES, "host-old").unwrap();
    let mut rec = ExperimentRecord::new(&request("old"), Status::Failed, "h:1", 5);
    let failed = crate::contract::ExperimentResult::failed(
        "",
        "old",
        "inst",
        crate::contract::ErrorKind::Internal,
        "x",
    );
    rec.result_json = Some(failed.to_json());
    let metrics = MetricsRow {
        experiment_id: "old".into(),
        host: String::new(),
        metrics: Default::default(),
        baseline: Default::default(),
        regressions: vec![],
        flaky: vec![],
        inserted_at: 5,
    };
    let event = SandboxEvent {
        id: 7,
        host: String::new(),
        experiment_id: "old".into(),
        operation: SandboxOperation::Create,
        path: "/p".into(),
        size_bytes: 1,
        detail: String::new(),
        inserted_at: 5,
    };
    write_as_schema_v1(&store, &rec, &metrics, &event);
    drop(store);
    let store = Store::open_with(&path, DEFAULT_CACHE_BYTES, "host-old").unwrap();
    assert_eq!(store.schema_version().unwrap(), u64::from(SCHEMA_VERSION));
    let got = store.get("old").unwrap().unwrap();
    assert_eq!((got.host.as_str(), got.owner.as_str()), ("host-old", "h:1"));
    assert_eq!(got.result().unwrap().host(), "host-old");
    assert_eq!(store.metrics("old").unwrap().unwrap().host, "host-old");
    assert_eq!(store.history("old").unwrap()[0].host, "host-old");
    let mut listed = Vec::new();
    store
        .for_each_record(None, |r| {
            listed.push(r.host);
            Ok(())
        })
        .unwrap();
    assert_eq!(listed, ["host-old"]);
    // Rewritten, the row is version 2 and keeps its host.
    store.put_record(&got).unwrap();
    assert_eq!(store.get("old").unwrap().unwrap().host, "host-old");
}

#[test]
fn new_rows_carry_the_stores_host_unless_they_name_one() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        Store::open_with(&dir.path().join("g.redb"), DEFAULT_CACHE_BYTES, "host-a").unwrap();
    store
        .insert_new(&ExperimentRecord::new(
            &request("mine"),
            Status::Queued,
            "h:1",
            1,
        ))
        .unwrap();
    let mut theirs = ExperimentRecord::new(&request("theirs"), Status::Queued, "h:1", 2);
    theirs.host = "host-b".into();
    store.insert_new(&theirs).unwrap();
    store
        .add_history("mine", SandboxOperation::Create, "/p", 0, "")
        .unwrap();
    assert_eq!(store.get("mine").unwrap().unwrap().host, "host-a");
    assert_eq!(store.get("theirs").unwrap().unwrap().host, "host-b");
    assert_eq!(store.history("mine").unwrap()[0].host, "host-a");
}
