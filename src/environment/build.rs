//! One environment build: the install container, from upload to commit.
//! See the parent module for what is kept and why.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::Limits;
use crate::contract::EnvironmentRef;
use crate::errors::{GenesisError, Result};
use crate::sandbox::{tail, CappedLog, Redactor, Role, RunOutcome, Sandbox, SandboxBuilder};

use super::{record_path, write_record, EnvRecord, EnvRequest, Environments, IMAGE_REPO};
use super::{LABEL_ENV_KEY, LABEL_ENV_PRIVATE, LABEL_ENV_REPO};

/// Where the host's CA bundle goes, and the variables that point the usual
/// tools at it (pip and requests, cargo, node, git, curl, hex, OpenSSL).
const CA_PATH: &str = "/etc/ssl/certs/ca-certificates.crt";
const CA_VARIABLES: &[&str] = &[
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "PIP_CERT",
    "CARGO_HTTP_CAINFO",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
    "CURL_CA_BUNDLE",
    "HEX_CACERTS_PATH",
];

/// The snapshot's own files, NUL-separated, relative to `/workspace/NAME`.
const TRACKED_LIST: &str = "/genesis/tracked";

/// Runs the install, then leaves the tree as the tests expect it: the
/// snapshot's files removed (each run uploads its own commit's tree), the
/// workspace and the image's tool homes owned by the sandbox user, and
/// what the install left in the workspace moved to `/genesis/workspace`:
/// a run's `/workspace` may be its own file system (`disk_mb`), so the
/// run copies these files in before its suite.
const INSTALL_SCRIPT: &str = r#"sh -c "$GENESIS_INSTALL" || exit $?
status=0
if [ -s /genesis/tracked ]; then xargs -0 rm -f -- < /genesis/tracked || status=$?; fi
rm -f /genesis/tracked
chown -R "$GENESIS_OWNER" /workspace || status=$?
IFS=:
for d in $GENESIS_TOOL_HOMES; do
  if [ -d "$d" ]; then chown -R "$GENESIS_OWNER" "$d" || status=$?; fi
done
rm -rf /genesis/workspace
mv /workspace /genesis/workspace && mkdir -m 755 /workspace && chown "$GENESIS_OWNER" /workspace || status=$?
exit $status"#;

pub(super) async fn build(
    envs: &Environments,
    request: &EnvRequest<'_>,
    key: &str,
    image: &str,
) -> Result<EnvironmentRef> {
    let config = &envs.config;
    let policy = &config.environments;
    let limits = install_limits(policy);
    let dir = envs.records_dir();
    std::fs::create_dir_all(&dir)
        .map_err(|e| GenesisError::io(format!("creating {}", dir.display()), e))?;
    let record = record_path(&dir, request.repo_name, key);
    let ca = ca_bundle(&policy.ca_bundle);
    let passed = passed_env(&policy.pass_env);
    // Every byte of install output, and every message made from it, goes
    // through this before it is kept anywhere.
    let redactor = Redactor::new(passed.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    let network = super::guard::prepare(&envs.docker, policy, &envs.home_label, &passed).await?;
    let sandbox = SandboxBuilder::from_policy(
        &config.sandbox,
        request.experiment_id,
        Role::Install,
        &request.repo.image,
        limits,
    )
    .user("0:0")
    .cap_add(&policy.cap_add)
    .env(install_env(envs, request, ca.is_some(), &passed))
    .network(network.as_ref().map(|n| n.name.as_str()))
    .home_label(&envs.home_label)
    .command(request.repo_name, "", INSTALL_SCRIPT)
    .create(&envs.docker)
    .await?;
    let started = Instant::now();
    let log = record.with_extension("log");
    let outcome = install(envs, &sandbox, request, ca, &log, redactor.clone()).await;
    let build_ms = started.elapsed().as_millis() as u64;
    let committed = match outcome {
        Ok(run) => keep_if_sound(&sandbox, request, key, &run, &redactor, envs).await,
        Err(e) => Err(e),
    };
    sandbox.remove().await?;
    committed?;
    let now = chrono::Utc::now().timestamp_millis();
    write_record(
        &record,
        &EnvRecord {
            repo: request.repo_name.into(),
            image: image.into(),
            key: key.into(),
            base_image: request.repo.image.clone(),
            built_at_ms: now,
            build_ms,
            last_used_ms: now,
            private_to: request.private.then(|| request.experiment_id.to_owned()),
        },
    )?;
    Ok(EnvironmentRef {
        image: image.into(),
        key: key.into(),
        reused: false,
        build_ms,
    })
}

/// The install's limits: `[environments]`'s, with network on.
fn install_limits(policy: &crate::config::EnvironmentPolicy) -> Limits {
    Limits {
        cpus: policy.cpus,
        memory_mb: policy.memory_mb,
        pids: policy.pids,
        timeout: policy.timeout,
        network: true,
        install_changes: true,
        // The install writes into the image it becomes (site-packages, tool
        // homes), so it runs on the container's writable layer, which
        // `watch` caps at `[environments] disk_mb`, not on a run disk.
        disk_mb: 0,
        // An install applies no patch.
        patch_mb: 0,
    }
}

/// Commits the install container as the environment image, if the install
/// succeeded and its layer is within the disk cap.
async fn keep_if_sound(
    sandbox: &Sandbox,
    request: &EnvRequest<'_>,
    key: &str,
    run: &RunOutcome,
    redactor: &Redactor,
    envs: &Environments,
) -> Result<()> {
    let policy = &envs.config.environments;
    judge_install(request, run, policy.timeout, redactor)?;
    super::watch::layer_within_cap(sandbox, policy.disk_mb)
        .await
        .map_err(|why| {
            GenesisError::EnvironmentFailed(format!(
                "the install command of repo {:?} ({}) {why}",
                request.repo_name, request.repo.install_command
            ))
        })?;
    commit(sandbox, request, key).await.map(|_| ())
}

/// The `pass_env` variables the host has, as (name, value).
fn passed_env(names: &[String]) -> Vec<(String, String)> {
    names
        .iter()
        .filter_map(|name| Some((name.clone(), std::env::var(name).ok()?)))
        .collect()
}

/// The install's variables: the command, the sandbox owner, the CA bundle's
/// variables when one is copied, and the named host variables only.
fn install_env(
    envs: &Environments,
    request: &EnvRequest<'_>,
    with_ca: bool,
    passed: &[(String, String)],
) -> Vec<String> {
    let mut env = vec![
        format!("GENESIS_INSTALL={}", request.repo.install_command),
        format!("GENESIS_OWNER={}:{}", envs.owner.uid, envs.owner.gid),
    ];
    if with_ca {
        env.extend(CA_VARIABLES.iter().map(|v| format!("{v}={CA_PATH}")));
    }
    env.extend(passed.iter().map(|(name, value)| format!("{name}={value}")));
    env
}

fn ca_bundle(path: &str) -> Option<Vec<u8>> {
    if path.is_empty() {
        return None;
    }
    match std::fs::read(path) {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            tracing::warn!(path, error = %e, "no CA bundle copied into the install container");
            None
        }
    }
}

/// Uploads skeleton, snapshot, CA bundle and tracked-file list, then runs.
async fn install(
    envs: &Environments,
    sandbox: &Sandbox,
    request: &EnvRequest<'_>,
    ca: Option<Vec<u8>>,
    log_path: &Path,
    redactor: Redactor,
) -> Result<RunOutcome> {
    sandbox.upload_skeleton(envs.owner).await?;
    let tarball = match &request.snapshot.tarball {
        Some(tarball) => tarball.clone(),
        // Layered runs skip tarballs; an install uploads one.
        None => {
            let snapshotter = crate::snapshot::Snapshotter::new(&envs.config.home, envs.owner);
            let (name, commit) = (
                request.repo_name.to_owned(),
                request.snapshot.commit.clone(),
            );
            tokio::task::spawn_blocking(move || snapshotter.tarball_of(&name, &commit))
                .await
                .map_err(|e| GenesisError::Internal(format!("snapshot task: {e}")))??
        }
    };
    let bytes = tokio::fs::read(&tarball)
        .await
        .map_err(|e| GenesisError::io(format!("reading {}", tarball.display()), e))?;
    let tracked = tracked_files(&bytes, request.repo_name)?;
    sandbox.upload("/workspace", bytes).await?;
    let mut extra: Vec<(&str, Vec<u8>)> = vec![(TRACKED_LIST, tracked)];
    if let Some(ca) = ca {
        extra.push((CA_PATH, ca));
    }
    sandbox.upload("/", files_tar(&extra)?).await?;
    let log = CappedLog::create(log_path, envs.config.sandbox.log_cap_bytes)?.redacting(redactor);
    let policy = &envs.config.environments;
    let disk_cap = super::watch::layer_past_cap(sandbox, policy.disk_mb, policy.disk_check);
    sandbox.run_watched(policy.timeout, log, disk_cap).await
}

/// A failed, killed or timed-out install is `environment_failed`, with the
/// tail (already redacted as it was logged; the whole message is again, in
/// case a value reached it another way, e.g. through the install command).
fn judge_install(
    request: &EnvRequest<'_>,
    run: &RunOutcome,
    timeout: Duration,
    redactor: &Redactor,
) -> Result<()> {
    let why = if let Some(reason) = &run.stopped_by {
        reason.clone()
    } else if run.timed_out {
        format!(
            "ran past its {} ms limit ([environments] timeout_ms) and was killed",
            timeout.as_millis()
        )
    } else if run.oom_killed {
        "ran out of memory ([environments] memory_mb) and was killed".to_string()
    } else if run.exit_code != 0 {
        format!("exited with status {}", run.exit_code)
    } else {
        return Ok(());
    };
    Err(GenesisError::EnvironmentFailed(redactor.text(&format!(
        "the install command of repo {:?} ({}) {why}; install log ({}) tail:\n{}",
        request.repo_name,
        request.repo.install_command,
        run.log.path.display(),
        tail(&run.log.text, 2000)
    ))))
}

async fn commit(sandbox: &Sandbox, request: &EnvRequest<'_>, key: &str) -> Result<String> {
    let repo = super::image_component(request.repo_name);
    let mut labels = HashMap::from([
        (LABEL_ENV_REPO.to_string(), request.repo_name.to_string()),
        (LABEL_ENV_KEY.to_string(), key.to_string()),
    ]);
    if request.private {
        labels.insert(
            LABEL_ENV_PRIVATE.to_string(),
            request.experiment_id.to_string(),
        );
    }
    sandbox
        .commit(&format!("{IMAGE_REPO}/{repo}"), key, labels)
        .await
}

/// Paths of the snapshot's non-directory entries, relative to its repo
/// directory, NUL-separated (for `xargs -0`).
fn tracked_files(tar_gz: &[u8], repo: &str) -> Result<Vec<u8>> {
    let prefix = format!("{repo}/");
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(tar_gz));
    let mut list = Vec::new();
    let entries = archive
        .entries()
        .map_err(|e| GenesisError::io("reading the snapshot for the install", e))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| GenesisError::io("reading the snapshot for the install", e))?;
        if entry.header().entry_type().is_dir() {
            continue;
        }
        let path = entry.path_bytes().into_owned();
        if let Some(rel) = path.strip_prefix(prefix.as_bytes()) {
            list.extend_from_slice(rel);
            list.push(0);
        }
        std::io::copy(&mut entry.by_ref().take(0), &mut std::io::sink())
            .map_err(|e| GenesisError::io("reading the snapshot for the install", e))?;
    }
    Ok(list)
}

/// A tar of root-owned files at absolute paths (leading `/` dropped).
fn files_tar(files: &[(&str, Vec<u8>)]) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(bytes.len() as u64);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        tar.append_data(&mut header, path.trim_start_matches('/'), bytes.as_slice())
            .map_err(|e| GenesisError::io(format!("packing {path} for the install"), e))?;
    }
    tar.into_inner()
        .map_err(|e| GenesisError::io("packing files for the install", e))
}
