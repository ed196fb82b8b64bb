use super::*;
use crate::contract::RiskLevel;
use crate::errors::Result;
use std::path::PathBuf;

fn load(text: &str) -> Result<Config> {
    Config::from_layers(
        PathBuf::from("/tmp/gh"),
        Some((PathBuf::from("/etc/genesis.toml"), text.into())),
        &Env::default(),
    )
}

#[test]
fn defaults_load_and_match_the_contract() {
    let c = Config::from_layers(PathBuf::from("/h"), None, &Env::default()).unwrap();
    assert_eq!(c.max_concurrent, 5);
    assert_eq!(c.nats.url, "nats://127.0.0.1:4222");
    let high = c.limits_for(RiskLevel::High);
    assert_eq!((high.cpus, high.memory_mb, high.pids), (1.0, 512, 256));
    let t = c.thresholds.for_risk(RiskLevel::High);
    assert_eq!(t.rollback_regression, 0.05);
    assert_eq!(t.merge_success_rate, 0.95);
}

#[test]
fn user_file_overrides_single_keys_and_env_wins() {
    let env = Env {
        nats_url: Some("nats://127.0.0.1:9999".into()),
        ..Env::default()
    };
    let c = Config::from_layers(
        PathBuf::from("/h"),
        Some((
            PathBuf::from("/etc/g.toml"),
            "max_concurrent = 2\n[nats]\nurl = \"nats://x:1\"\n[limits.high]\ncpus = 0.5\n".into(),
        )),
        &env,
    )
    .unwrap();
    assert_eq!(c.max_concurrent, 2);
    assert_eq!(c.nats.url, "nats://127.0.0.1:9999");
    assert_eq!(c.limits_for(RiskLevel::High).cpus, 0.5);
    assert_eq!(c.limits_for(RiskLevel::High).memory_mb, 512);
}

#[test]
fn errors_name_file_key_and_expectation() {
    let err = load("[limits.high]\ncpus = \"lots\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("/etc/genesis.toml"), "{err}");
    assert!(err.contains("limits.high.cpus"), "{err}");
    assert!(err.contains("f64") || err.contains("float"), "{err}");

    let err = load("max_concurent = 3\n").unwrap_err().to_string();
    assert!(err.contains("max_concurent"), "{err}");

    let err = load("default_repo = \"nope\"\n").unwrap_err().to_string();
    assert!(
        err.contains("default_repo") && err.contains("nope"),
        "{err}"
    );

    let err = load("[schedule]\ncleanup = \"0 */6 * * *\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("schedule.cleanup"), "{err}");

    let err = load("this is not toml").unwrap_err().to_string();
    assert!(err.contains("not valid TOML"), "{err}");

    // Globs and coverage specs are parsed as the file is read, naming the key.
    let repo = "[repos.app]\npath = \"/r\"\nimage = \"i\"\n";
    let err = load(&format!(
        "{repo}install_command = \"x\"\ninstall_inputs = [\"[\"]\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("repos.app.install_inputs"), "{err}");
    let err = load(&format!("{repo}coverage = \"gcov:x\"\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("repos.app.coverage"), "{err}");
    let ok = load(&format!("{repo}coverage = \"lcov:lcov.info\"\n")).unwrap();
    assert!(ok.repos["app"].coverage.is_some());

    // The sandbox user is parsed with the file too, so its error names it.
    let err = load("[sandbox]\nuser = \"genesis\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/etc/genesis.toml")
            && err.contains("sandbox.user")
            && err.contains("uid:gid"),
        "{err}"
    );
}

#[test]
fn repos_resolve_relative_to_the_config_file() {
    let c = load(
        "default_repo = \"app\"\n[repos.app]\npath = \"repo\"\nimage = \"i\"\ntest_command = \"t\"\n",
    )
    .unwrap();
    let (name, repo) = c.repo(None).unwrap();
    assert_eq!(name, "app");
    assert_eq!(repo.path, PathBuf::from("/etc/repo"));
    // Empty: the report comes with a detected framework, else `auto`.
    assert_eq!(repo.report, "");
    assert!(c.repo(Some("other")).is_err());
}

#[test]
fn strict_policy_and_per_risk_overrides() {
    let c = load("policy = \"strict\"\n[thresholds.low]\nmerge_success_rate = 0.5\n").unwrap();
    assert_eq!(
        c.thresholds.for_risk(RiskLevel::High).rollback_regression,
        0.0
    );
    assert_eq!(
        c.thresholds.for_risk(RiskLevel::Low).merge_success_rate,
        0.5
    );
    assert_eq!(
        c.thresholds.for_risk(RiskLevel::High).merge_success_rate,
        0.98
    );
    assert!(load("policy = \"lenient\"\n").is_err());
}

#[test]
fn host_name_defaults_to_the_machine_and_is_checked() {
    let c = Config::from_layers(PathBuf::from("/h"), None, &Env::default()).unwrap();
    assert_eq!(c.host, host::machine_hostname());
    assert!(!c.host.is_empty());
    assert_eq!(load("[host]\nname = \"host-a\"\n").unwrap().host, "host-a");
    let err = load("[host]\nname = \"a b'\"\n").unwrap_err().to_string();
    assert!(err.contains("host.name"), "{err}");
    assert!(err.contains("' '"), "{err}");
}

#[test]
fn operations_are_off_by_default_and_bad_http_settings_are_named() {
    let c = Config::from_layers(PathBuf::from("/h"), None, &Env::default()).unwrap();
    assert_eq!(c.http.listen, "");
    assert_eq!(c.nats.metrics_subject, "");
    assert_eq!(c.framework.nats_subject, "");
    assert!(load("[http]\nlisten = \"127.0.0.1:9464\"\n").is_ok());
    let err = load("[http]\nlisten = \"localhost\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("http.listen"), "{err}");
    let err = load("[http]\nrun_seconds_buckets = [5, 1]\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("http.run_seconds_buckets"), "{err}");
    let err = load("[framework]\nsubject = \"x\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("framework"), "{err}");
}

#[test]
fn nats_credentials_are_checked_at_load_and_never_shown() {
    let err = load("[nats]\nuser = \"u\"\n").unwrap_err().to_string();
    assert!(err.contains("nats.password"), "{err}");
    let err = load("[nats]\ntoken = \"t\"\nuser = \"u\"\npassword = \"p\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nats.user") && err.contains("nats.token"),
        "{err}"
    );
    let err = load("[nats]\ntls_ca_file = \"/nonexistent/ca.pem\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("nats.tls_ca_file"), "{err}");

    let env = Env {
        nats_password: Some("from-env-secret".into()),
        ..Env::default()
    };
    let c = Config::from_layers(
        PathBuf::from("/h"),
        Some((
            PathBuf::from("/etc/g.toml"),
            "[nats]\nuser = \"u\"\npassword = \"in-file\"\n".into(),
        )),
        &env,
    )
    .unwrap();
    assert_eq!(c.nats.password.expose(), "from-env-secret");
    assert!(!format!("{c:?}").contains("from-env-secret"));
}
