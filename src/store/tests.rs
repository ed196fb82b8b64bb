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
    let a = store.add_history("e", "create", "/p", 1, "").unwrap();
    let b = store.add_history("e", "delete", "/p", 0, "").unwrap();
    store.add_history("other", "create", "/q", 0, "").unwrap();
    assert!(b > a);
    let ops: Vec<_> = store
        .history("e")
        .unwrap()
        .into_iter()
        .map(|e| e.operation)
        .collect();
    assert_eq!(ops, ["create", "delete"]);
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
