use super::*;

#[test]
fn path_shapes() {
    assert!(check_path_shape("src/lib.rs").is_ok());
    for bad in [
        "/etc/passwd",
        "../x",
        "a/../../b",
        ".git/config",
        "a//b",
        "./a",
        "",
    ] {
        assert!(check_path_shape(bad).is_err(), "{bad}");
    }
}

#[test]
fn symlink_targets() {
    assert!(symlink_stays_inside("a/link", "../b"));
    assert!(symlink_stays_inside("link", "b/c"));
    assert!(!symlink_stays_inside("link", "../b"));
    assert!(!symlink_stays_inside("a/link", "../../b"));
    assert!(!symlink_stays_inside("a/link", "/etc"));
}

#[test]
fn declared_files_must_match() {
    let t = vec!["a".to_string(), "b".to_string()];
    assert!(check_declared(&t, &t).is_ok());
    let err = check_declared(&["a".into(), "c".into()], &t)
        .unwrap_err()
        .to_string();
    assert!(err.contains("b") && err.contains("c"), "{err}");
}
