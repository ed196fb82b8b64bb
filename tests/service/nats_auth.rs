//! `[nats]` authentication and TLS against a real nats-server that this
//! test configures (users, a token, TLS with a CA made here by `openssl`):
//! `genesis serve` serves through the right credentials, and stops with
//! exit 1 and a message naming the refusal on wrong ones, never echoing a
//! secret; `genesis doctor` names the refusal too.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::support::nats::NatsServer;
use crate::support::*;

const USER: &str = "genesis";
const PASSWORD: &str = "pw-9c41-right";
const WRONG_PASSWORD: &str = "pw-77d0-wrong";
const TOKEN: &str = "tok-5be2-right";
const WRONG_TOKEN: &str = "tok-e013-wrong";

/// A serve home whose `[nats]` table also holds `nats_lines`.
fn home_with_nats(nats_lines: &str) -> TestHome {
    let config = serve_config(1, false).replacen("[nats]\n", &format!("[nats]\n{nats_lines}\n"), 1);
    serve_home_with(&config)
}

/// Sends one request through an already authenticated client and waits
/// for its answer on `completed.{id}`.
async fn round_trip(client: &async_nats::Client, id: &str) {
    let mut answers = client
        .subscribe(format!("agent.events.experiment.*.{id}"))
        .await
        .unwrap();
    client.flush().await.unwrap();
    let body = request(id, "low", &[], "").to_string();
    client
        .publish("agent.events.experiment.request.test-instance", body.into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(120), answers.next())
            .await
            .expect("an answer within 120 s")
            .expect("subscription open");
        let subject = msg.subject.to_string();
        if subject.contains(".progress.") {
            continue;
        }
        let body: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
        assert_eq!(
            subject,
            format!("agent.events.experiment.completed.{id}"),
            "{body}"
        );
        return;
    }
}

/// Waits for `serve` to exit on its own; returns its exit code and log.
fn wait_for_exit(serve: &mut ServeProcess, within: Duration) -> (i32, String) {
    let deadline = Instant::now() + within;
    while serve.is_running() {
        assert!(
            Instant::now() < deadline,
            "genesis serve still running after {within:?}; log:\n{}",
            drain(serve)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = serve.wait();
    // The reader thread ends with the pipe; give it a moment to hand over the rest.
    std::thread::sleep(Duration::from_millis(100));
    (status.code().unwrap_or(-1), drain(serve))
}

fn drain(serve: &ServeProcess) -> String {
    let mut log = serve.history.lock().unwrap().clone();
    log.extend(serve.lines.try_iter());
    log.join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password_serve_and_a_wrong_password_stops_serve() {
    let server = NatsServer::start_with(&format!(
        "authorization {{ user: \"{USER}\", password: \"{PASSWORD}\" }}\n"
    ));
    let home = home_with_nats(&format!("user = \"{USER}\""));

    let serve =
        ServeProcess::spawn_with_env(&home, &server.url(), &[("GENESIS_NATS_PASSWORD", PASSWORD)]);
    serve.wait_for_line("genesis ready", Duration::from_secs(60));
    let client = async_nats::ConnectOptions::with_user_and_password(USER.into(), PASSWORD.into())
        .connect(server.url())
        .await
        .unwrap();
    round_trip(&client, "auth-user-1").await;
    drop(serve);

    let mut serve = ServeProcess::spawn_with_env(
        &home,
        &server.url(),
        &[("GENESIS_NATS_PASSWORD", WRONG_PASSWORD)],
    );
    let (code, log) = wait_for_exit(&mut serve, Duration::from_secs(10));
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("authorization violation"), "{log}");
    assert!(!log.contains(WRONG_PASSWORD), "the password leaked:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_serves_and_a_wrong_token_stops_serve_and_fails_doctor() {
    let server = NatsServer::start_with(&format!("authorization {{ token: \"{TOKEN}\" }}\n"));
    let home = home_with_nats("");

    let serve =
        ServeProcess::spawn_with_env(&home, &server.url(), &[("GENESIS_NATS_TOKEN", TOKEN)]);
    serve.wait_for_line("genesis ready", Duration::from_secs(60));
    drop(serve);

    let mut serve =
        ServeProcess::spawn_with_env(&home, &server.url(), &[("GENESIS_NATS_TOKEN", WRONG_TOKEN)]);
    let (code, log) = wait_for_exit(&mut serve, Duration::from_secs(10));
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("authorization violation"), "{log}");
    assert!(!log.contains(WRONG_TOKEN), "the token leaked:\n{log}");

    let doctor = home
        .command()
        .env("GENESIS_NATS_URL", server.url())
        .env("GENESIS_NATS_TOKEN", WRONG_TOKEN)
        .arg("doctor")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&doctor.stdout);
    let nats_line = out
        .lines()
        .skip_while(|l| !l.contains(" nats "))
        .take(2)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(nats_line.starts_with('✗'), "{out}");
    assert!(nats_line.contains("authorization violation"), "{out}");
    assert!(nats_line.contains("fix:"), "{out}");
    assert!(!out.contains(WRONG_TOKEN), "the token leaked:\n{out}");
}

/// `openssl ARGS` in `dir`; panics with its stderr if it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, and a server certificate it signed for 127.0.0.1, in `dir`.
fn make_certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=genesis test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    issue_certificate(
        dir,
        "server",
        "/CN=127.0.0.1",
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    );
}

/// `NAME.key` and `NAME.pem` in `dir`: a key, and a certificate for
/// `subject` with the extensions `ext` that the test CA signed.
fn issue_certificate(dir: &Path, name: &str, subject: &str, ext: &str) {
    let (key, csr, pem, ext_file) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.ext"),
    );
    openssl(
        dir,
        &[
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", subject,
        ],
    );
    std::fs::write(dir.join(&ext_file), ext).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &pem,
            "-extfile",
            &ext_file,
        ],
    );
}

/// TLS and a password together, as production servers run: serves through
/// both; a wrong password over TLS, and no CA, each stop `serve` clearly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_the_test_ca_serves_and_without_it_stops_serve() {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let dir = certs.path().display();
    let server = NatsServer::start_with(&format!(
        "tls {{ cert_file: \"{dir}/server.pem\", key_file: \"{dir}/server.key\" }}\n\
         authorization {{ user: \"{USER}\", password: \"{PASSWORD}\" }}\n"
    ));
    let url = format!("tls://127.0.0.1:{}", server.port);

    let home = home_with_nats(&format!(
        "tls_ca_file = \"{dir}/ca.pem\"\nuser = \"{USER}\""
    ));
    let serve = ServeProcess::spawn_with_env(&home, &url, &[("GENESIS_NATS_PASSWORD", PASSWORD)]);
    serve.wait_for_line("genesis ready", Duration::from_secs(60));
    let client = async_nats::ConnectOptions::with_user_and_password(USER.into(), PASSWORD.into())
        .add_root_certificates(certs.path().join("ca.pem"))
        .connect(url.as_str())
        .await
        .unwrap();
    round_trip(&client, "auth-tls-1").await;
    drop(serve);

    let mut serve =
        ServeProcess::spawn_with_env(&home, &url, &[("GENESIS_NATS_PASSWORD", WRONG_PASSWORD)]);
    let (code, log) = wait_for_exit(&mut serve, Duration::from_secs(10));
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("authorization violation"), "{log}");
    assert!(!log.contains(WRONG_PASSWORD), "the password leaked:\n{log}");

    let without_ca = home_with_nats(&format!("user = \"{USER}\""));
    let mut serve =
        ServeProcess::spawn_with_env(&without_ca, &url, &[("GENESIS_NATS_PASSWORD", PASSWORD)]);
    let (code, log) = wait_for_exit(&mut serve, Duration::from_secs(10));
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("TLS"), "{log}");
    assert!(log.contains("tls_ca_file"), "the fix is named:\n{log}");
}

/// A client certificate the test CA signed, for servers that verify clients.
fn make_client_certificate(dir: &Path) {
    issue_certificate(
        dir,
        "client",
        "/CN=genesis",
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_verifying_clients_serves_with_the_client_certificate_and_stops_without() {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    make_client_certificate(certs.path());
    let dir = certs.path().display();
    let server = NatsServer::start_with(&format!(
        "tls {{ cert_file: \"{dir}/server.pem\", key_file: \"{dir}/server.key\", ca_file: \"{dir}/ca.pem\", verify: true }}\n"
    ));
    let url = format!("tls://127.0.0.1:{}", server.port);

    let home = home_with_nats(&format!(
        "tls_ca_file = \"{dir}/ca.pem\"\ntls_cert_file = \"{dir}/client.pem\"\ntls_key_file = \"{dir}/client.key\""
    ));
    let serve = ServeProcess::spawn_with_env(&home, &url, &[]);
    serve.wait_for_line("genesis ready", Duration::from_secs(60));
    let client = async_nats::ConnectOptions::new()
        .add_root_certificates(certs.path().join("ca.pem"))
        .add_client_certificate(
            certs.path().join("client.pem"),
            certs.path().join("client.key"),
        )
        .connect(url.as_str())
        .await
        .unwrap();
    round_trip(&client, "auth-mtls-1").await;
    drop(serve);

    let without_cert = home_with_nats(&format!("tls_ca_file = \"{dir}/ca.pem\""));
    let mut serve = ServeProcess::spawn_with_env(&without_cert, &url, &[]);
    let (code, log) = wait_for_exit(&mut serve, Duration::from_secs(10));
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("TLS"), "{log}");
    assert!(log.contains("tls_cert_file"), "the fix is named:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nkey_seed_file_serves_and_another_seed_stops_serve() {
    let user = nkeys::KeyPair::new_user();
    let server = NatsServer::start_with(&format!(
        "authorization {{ users = [ {{ nkey: \"{}\" }} ] }}\n",
        user.public_key()
    ));
    let seeds = tempfile::tempdir().unwrap();
    let seed_file = seeds.path().join("genesis.nk");
    std::fs::write(&seed_file, format!("{}\n", user.seed().unwrap())).unwrap();
    let home = home_with_nats(&format!("nkey_seed_file = \"{}\"", seed_file.display()));
    let serve = ServeProcess::spawn_with_env(&home, &server.url(), &[]);
    serve.wait_for_line("genesis ready", Duration::from_secs(60));
    let client = async_nats::ConnectOptions::with_nkey(user.seed().unwrap())
        .connect(server.url())
        .await
        .unwrap();
    round_trip(&client, "auth-nkey-1").await;
    drop(serve);

    let stranger = nkeys::KeyPair::new_user().seed().unwrap();
    std::fs::write(&seed_file, &stranger).unwrap();
    let mut serve = ServeProcess::spawn_with_env(&home, &server.url(), &[]);
    let (code, log) = wait_for_exit(&mut serve, Duration::from_secs(10));
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("authorization violation"), "{log}");
    assert!(!log.contains(&stranger), "the seed leaked:\n{log}");
}

/// A signed NATS JWT (`ed25519-nkey`) with these claims, issued by `issuer`.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    use base64::Engine as _;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = serde_json::json!({
        "jti": format!("{subject}-{name}"),
        "iat": chrono::Utc::now().timestamp(),
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let body = format!("{header}.{}", b64(claims.to_string().as_bytes()));
    let signature = issuer.sign(body.as_bytes()).unwrap();
    format!("{body}.{}", b64(&signature))
}

/// The `.creds` file a NATS operator hands a user: its JWT and its seed.
fn creds(user_jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )
}

/// Operator mode as production NATS runs it: an operator signs an account,
/// the account signs the user whose JWT and seed make the `.creds` file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creds_file_serves_in_operator_mode_and_a_stranger_account_stops_serve() {
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        "test-operator",
        serde_json::json!({"type": "operator", "version": 2}),
    );
    let unlimited = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1
    });
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        "test-account",
        serde_json::json!({"type": "account", "version": 2, "limits": unlimited}),
    );
    let user_creds = |signer: &nkeys::KeyPair| {
        let user = nkeys::KeyPair::new_user();
        let user_jwt = jwt(
            signer,
            &user.public_key(),
            "genesis",
            serde_json::json!({"type": "user", "version": 2, "subs": -1, "data": -1, "payload": -1}),
        );
        creds(&user_jwt, &user.seed().unwrap())
    };
    let server = NatsServer::start_with(&format!(
        "operator: {operator_jwt}\nresolver: MEMORY\nresolver_preload: {{ {}: {account_jwt} }}\n",
        account.public_key()
    ));
    let dir = tempfile::tempdir().unwrap();
    let creds_file = dir.path().join("genesis.creds");
    std::fs::write(&creds_file, user_creds(&account)).unwrap();
    let home = home_with_nats(&format!("creds_file = \"{}\"", creds_file.display()));
    let serve = ServeProcess::spawn_with_env(&home, &server.url(), &[]);
    serve.wait_for_line("genesis ready", Duration::from_secs(60));
    let client = async_nats::ConnectOptions::with_credentials(&user_creds(&account))
        .unwrap()
        .connect(server.url())
        .await
        .unwrap();
    round_trip(&client, "auth-creds-1").await;
    drop(serve);

    // A user signed by an account this operator never signed.
    std::fs::write(&creds_file, user_creds(&nkeys::KeyPair::new_account())).unwrap();
    let mut serve = ServeProcess::spawn_with_env(&home, &server.url(), &[]);
    let (code, log) = wait_for_exit(&mut serve, Duration::from_secs(10));
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("authorization violation"), "{log}");
}
