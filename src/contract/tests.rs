use super::*;

fn minimal() -> serde_json::Value {
    serde_json::json!({
        "experiment_id": "exp-1",
        "instance_id": "inst",
        "experiment_type": "refactor",
        "risk_level": "low",
        "changes": {"files": [], "patch": ""}
    })
}

#[test]
fn parses_a_minimal_request_with_defaults() {
    let r = Request::parse(minimal().to_string().as_bytes()).unwrap();
    assert_eq!(r.experiment_id, "exp-1");
    assert_eq!(r.risk_level, RiskLevel::Low);
    assert_eq!(r.timeout_ms, None);
    assert!(r.changes.patches.is_empty());
}

#[test]
fn missing_field_is_named() {
    let mut v = minimal();
    v.as_object_mut().unwrap().remove("instance_id");
    let err = Request::parse(v.to_string().as_bytes()).unwrap_err();
    assert!(err.message.contains("instance_id"), "{}", err.message);
    assert_eq!(err.experiment_id.as_deref(), Some("exp-1"));
}

#[test]
fn wrong_type_names_the_field_path() {
    let mut v = minimal();
    v["changes"]["files"] = serde_json::json!("not a list");
    let err = Request::parse(v.to_string().as_bytes()).unwrap_err();
    assert!(err.message.contains("changes.files"), "{}", err.message);
}

#[test]
fn bad_ids_are_refused() {
    for id in ["", "a b", "../x", "a.b", "ü", &"x".repeat(129)] {
        let mut v = minimal();
        v["experiment_id"] = serde_json::json!(id);
        let err = Request::parse(v.to_string().as_bytes()).unwrap_err();
        assert!(
            err.message.contains("experiment_id"),
            "{id}: {}",
            err.message
        );
        assert_eq!(err.experiment_id, None);
    }
    assert!(validate_experiment_id(&"x".repeat(128)).is_ok());
}

#[test]
fn broken_json_is_called_not_json_with_line_and_column() {
    for body in [&b"{x"[..], b"not json", b"{\"experiment_id\": "] {
        let err = Request::parse(body).unwrap_err();
        assert!(
            err.message.starts_with("the request is not JSON: "),
            "{}",
            err.message
        );
        assert!(err.message.contains("line 1 column"), "{}", err.message);
        assert!(!err.message.contains('`'), "{}", err.message);
    }
}

#[test]
fn oversized_body_is_refused_before_parsing() {
    let body = vec![b' '; MAX_REQUEST_BYTES + 1];
    let err = Request::parse(&body).unwrap_err();
    assert!(err.message.contains("limit"));
}

#[test]
fn unknown_fields_are_ignored_and_fingerprint_ignores_them() {
    let a = Request::parse(minimal().to_string().as_bytes()).unwrap();
    let mut v = minimal();
    v["whatever"] = serde_json::json!(1);
    let b = Request::parse(v.to_string().as_bytes()).unwrap();
    assert_eq!(a.fingerprint(), b.fingerprint());
    v["description"] = serde_json::json!("different");
    let c = Request::parse(v.to_string().as_bytes()).unwrap();
    assert_ne!(a.fingerprint(), c.fingerprint());
}

#[test]
fn result_has_contract_shape() {
    let r = ExperimentResult::failed("host-a", "e", "i", ErrorKind::NoTests, "no tests ran");
    let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    assert_eq!(v["status"], "failed");
    assert_eq!(v["host"], "host-a");
    assert_eq!(v["error_kind"], "no_tests");
    assert_eq!(v["recommendation"], "rollback");
    assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    let back: ExperimentResult = serde_json::from_value(v).unwrap();
    assert_eq!(back.experiment_id(), "e");
}

#[test]
fn a_result_stored_before_hosts_reads_back_and_takes_its_stores_host() {
    let mut v: serde_json::Value = serde_json::from_str(
        &ExperimentResult::failed("", "e", "i", ErrorKind::Internal, "x").to_json(),
    )
    .unwrap();
    v.as_object_mut().unwrap().remove("host");
    let old: ExperimentResult = serde_json::from_value(v).unwrap();
    assert_eq!(old.host(), "");
    assert_eq!(old.or_host("host-b").host(), "host-b");
    let named = ExperimentResult::failed("host-a", "e", "i", ErrorKind::Internal, "x");
    assert_eq!(named.or_host("host-b").host(), "host-a");
}
