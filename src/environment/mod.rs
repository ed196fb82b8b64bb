//! Environments (contract §2a): a repo's dependencies installed once, then
//! reused by every run whose inputs are the same, with tests always offline.
//!
//! Owns: the environment key, building an environment (an install container
//! committed as an image), the single flight that makes concurrent
//! experiments wait for one build, and the records behind `env list`,
//! `env prune` and the cleanup job. Must not: judge, store experiments or
//! know about NATS; it is told which tree to install from and returns an
//! image to run the suites in.
//!
//! Design:
//! - **Key.** `sha256(genesis home, base image id, install command, (path,
//!   blob id) of every file matching install_inputs)`: a git blob id is the
//!   hash of the file's contents, so commits that leave those files alone
//!   share one key and a rebuilt base image gets new environments. The home
//!   is part of it because records and pruning are per home: two homes on
//!   one engine never share (and never remove) each other's images. The image is
//!   `genesis-env/NAME:KEY` (first 32 hex digits).
//! - **Build** (`build.rs`): the same sandbox as a test run (limits, pids,
//!   no-new-privileges, all capabilities dropped but `[environments]
//!   cap_add`), except that it runs as root with network on and its own time
//!   limit, with the host's CA bundle copied in (proxies that re-sign TLS)
//!   and only the `pass_env` variables of the host. The snapshot is uploaded
//!   to `/workspace/NAME`, the install runs there, then the snapshot's own
//!   files are removed again (the tests upload the tree of the commit they
//!   test; what the install generated, such as `node_modules` or `deps/`,
//!   stays), the workspace is handed to the sandbox user and the tool homes
//!   the image names in `GENESIS_TOOL_HOMES` are made readable and
//!   writable for it, so the non-root, offline test step can use them.
//!   Its network reaches public addresses only (`guard`), what it writes
//!   into the layer is capped (`watch`), and the `pass_env` values are
//!   redacted from everything made of its output.
//! - **Private environments.** An install runs the tree's own code as root
//!   (setup scripts, build hooks). The baseline's tree is the repo's own, so
//!   its environment is shared; a candidate whose patch changes install
//!   inputs is the agent's code, so its environment's key also holds the
//!   experiment id (no other experiment can ever reuse what that code left
//!   in the image) and the runner discards it when the experiment's runs
//!   are done.
//! - **Single flight.** One build per key at a time in this process; the
//!   others wait for it and then reuse it. Across processes the image's
//!   existence is the truth: a finished environment is never built twice.
//! - **Records** (`GENESIS_HOME/environments/NAME.KEY.json` and `.log`):
//!   repo, image, when built, how long it took, when last used. Kept beside
//!   the images rather than in the store so this stage stays before the
//!   store in the flow; `env list`, `env prune` and cleanup read them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bollard::Docker;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, OnceCell};

use crate::config::{Config, RepoConfig};
use crate::contract::{hex_digest, stage, EnvironmentRef, Stage};
use crate::errors::{GenesisError, Result};
use crate::snapshot::{Owner, TreeSnapshot};

mod build;
pub mod guard;
mod prune;
mod watch;
pub use prune::*;

/// Repository part of every environment image.
pub const IMAGE_REPO: &str = "genesis-env";
/// Labels on environment images.
pub const LABEL_ENV_REPO: &str = "genesis.env.repo";
pub const LABEL_ENV_KEY: &str = "genesis.env.key";
/// The experiment a private environment belongs to.
pub const LABEL_ENV_PRIVATE: &str = "genesis.env.private";

/// What one environment is built from.
pub struct EnvRequest<'a> {
    /// The repo's name: its directory under `/workspace`.
    pub repo_name: &'a str,
    pub repo: &'a RepoConfig,
    /// `install_inputs` files of the tree, as (path, blob id).
    pub inputs: &'a [(String, String)],
    /// The tree the install runs in.
    pub snapshot: &'a TreeSnapshot,
    /// The experiment that asked (names and labels the install container).
    pub experiment_id: &'a str,
    /// Set for a tree whose install inputs the candidate changed: the
    /// candidate's own code ran as root in that install, so its
    /// environment belongs to this experiment alone (its key includes the
    /// experiment id, so no other experiment can reuse it) and is removed
    /// with [`Environments::discard`] once the experiment's runs are done.
    pub private: bool,
}

/// Stored beside each environment image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvRecord {
    pub repo: String,
    pub image: String,
    pub key: String,
    /// The image it was built from, as configured.
    pub base_image: String,
    pub built_at_ms: i64,
    pub build_ms: u64,
    pub last_used_ms: i64,
    /// The one experiment that may use it (see [`EnvRequest::private`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_to: Option<String>,
}

type BuildSlot = Arc<OnceCell<std::result::Result<EnvironmentRef, (bool, String)>>>;

/// Builds and hands out environments; one per process, shared by experiments.
pub struct Environments {
    docker: Docker,
    config: Arc<Config>,
    owner: Owner,
    home_label: String,
    /// Builds in progress by key: the single flight.
    building: Mutex<HashMap<String, BuildSlot>>,
}

/// Progress callback: (stage, detail).
pub type Say<'a> = &'a (dyn Fn(Stage, &str) + Sync);

impl Environments {
    pub fn new(docker: Docker, config: Arc<Config>, owner: Owner, home_label: String) -> Self {
        Environments {
            docker,
            config,
            owner,
            home_label,
            building: Mutex::new(HashMap::new()),
        }
    }

    /// The environment of `request`'s tree: the existing image, the one a
    /// concurrent experiment is building, or a new build.
    pub async fn ensure(&self, request: &EnvRequest<'_>, say: Say<'_>) -> Result<EnvironmentRef> {
        let private_to = request.private.then_some(request.experiment_id);
        let key = self.key(request.repo, request.inputs, private_to).await?;
        let image = image_name(request.repo_name, &key);
        if self.docker.inspect_image(&image).await.is_ok() {
            self.touch(request.repo_name, &key);
            say(stage::ENVIRONMENT_READY, &format!("{image} (reused)"));
            return Ok(EnvironmentRef {
                image,
                key,
                reused: true,
                build_ms: 0,
            });
        }
        let slot = {
            let mut building = self.building.lock().await;
            building.entry(key.clone()).or_default().clone()
        };
        let mut built_here = false;
        let outcome = slot
            .get_or_init(|| async {
                built_here = true;
                say(
                    stage::ENVIRONMENT_BUILDING,
                    &format!("{image}: {}", request.repo.install_command),
                );
                build::build(self, request, &key, &image)
                    .await
                    .map_err(|e| {
                        (
                            matches!(e, GenesisError::EnvironmentFailed(_)),
                            e.to_string(),
                        )
                    })
            })
            .await
            .clone();
        self.building.lock().await.remove(&key);
        match outcome {
            Ok(mut env) => {
                if !built_here {
                    env.reused = true;
                    env.build_ms = 0;
                }
                self.touch(request.repo_name, &key);
                say(
                    stage::ENVIRONMENT_READY,
                    &format!("{image} (built in {} ms)", env.build_ms),
                );
                Ok(env)
            }
            Err((true, message)) => Err(GenesisError::EnvironmentFailed(message)),
            Err((false, message)) => Err(GenesisError::sandbox("building an environment", message)),
        }
    }

    /// The environment key of a repo's tree (see the module doc); a
    /// private environment's key also holds its experiment's id.
    pub async fn key(
        &self,
        repo: &RepoConfig,
        inputs: &[(String, String)],
        private_to: Option<&str>,
    ) -> Result<String> {
        let limit = self.config.sandbox.docker_timeout;
        let inspect = async {
            self.docker
                .inspect_image(&repo.image)
                .await
                .map_err(|e| GenesisError::image(format!("looking up image {}", repo.image), e))
        };
        let base = crate::sandbox::within(limit, "looking up the image", inspect).await?;
        Ok(environment_key(
            &self.home_label,
            base.id.as_deref().unwrap_or_default(),
            &repo.install_command,
            inputs,
            private_to,
        ))
    }

    /// Removes a private environment (image and records) once its
    /// experiment no longer needs it. Best effort: what cannot be removed
    /// now is logged, and `env prune` or the cleanup job removes it later.
    pub async fn discard(&self, repo_name: &str, env: &EnvironmentRef) {
        if let Err(e) = self
            .docker
            .remove_image(
                &env.image,
                None::<bollard::query_parameters::RemoveImageOptions>,
                None,
            )
            .await
        {
            tracing::warn!(image = %env.image, error = %e, "a private environment was not removed");
            return;
        }
        let record = record_path(&self.records_dir(), repo_name, &env.key);
        let _ = std::fs::remove_file(record.with_extension("log"));
        let _ = std::fs::remove_file(record);
    }

    fn records_dir(&self) -> PathBuf {
        records_dir(&self.config.home)
    }

    /// Marks an environment used now (for keep_days and the disk budget).
    fn touch(&self, repo: &str, key: &str) {
        let path = record_path(&self.records_dir(), repo, key);
        if let Some(mut record) = read_record(&path) {
            record.last_used_ms = chrono::Utc::now().timestamp_millis();
            let _ = write_record(&path, &record);
        }
    }
}

/// How an environment image is laid out; part of the key, so images of an
/// older layout are rebuilt rather than misread. 2: the install's
/// workspace files live in `/genesis/workspace`.
const LAYOUT: &str = "layout-2";

/// The key of an environment: see the module doc.
pub fn environment_key(
    home_label: &str,
    base_image_id: &str,
    install_command: &str,
    inputs: &[(String, String)],
    private_to: Option<&str>,
) -> String {
    let mut material = format!("{LAYOUT}\0{home_label}\0{base_image_id}\0{install_command}\0");
    for (path, blob) in inputs {
        material.push_str(&format!("{path}\0{blob}\0"));
    }
    if let Some(experiment) = private_to {
        material.push_str(&format!("private\0{experiment}\0"));
    }
    let digest = <sha2::Sha256 as sha2::Digest>::digest(material.as_bytes());
    hex_digest(&digest)[..32].to_owned()
}

/// `genesis-env/NAME:KEY`, NAME lowered and reduced to what image names allow.
pub fn image_name(repo: &str, key: &str) -> String {
    format!("{IMAGE_REPO}/{}:{key}", image_component(repo))
}

fn image_component(repo: &str) -> String {
    let cleaned: String = repo
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if trimmed.is_empty() {
        "repo".into()
    } else {
        trimmed.into()
    }
}

pub fn records_dir(home: &Path) -> PathBuf {
    crate::home::Home::of(home).environments()
}

fn record_path(dir: &Path, repo: &str, key: &str) -> PathBuf {
    dir.join(format!("{}.{key}.json", image_component(repo)))
}

fn read_record(path: &Path) -> Option<EnvRecord> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Written to a temporary name and renamed, so a reader never sees half a record.
fn write_record(path: &Path, record: &EnvRecord) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let json = serde_json::to_vec_pretty(record)
        .map_err(|e| GenesisError::Internal(format!("encoding an environment record: {e}")))?;
    std::fs::write(&tmp, json)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| GenesisError::io(format!("writing {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn the_key_changes_with_each_input_and_only_with_them() {
        let key = |home, image, command, files: &[(&str, &str)]| {
            environment_key(home, image, command, &inputs(files), None)
        };
        let base = key("h", "sha256:1", "pip install -r r.txt", &[("r.txt", "aa")]);
        assert_eq!(
            base,
            key("h", "sha256:1", "pip install -r r.txt", &[("r.txt", "aa")])
        );
        for other in [
            key("h2", "sha256:1", "pip install -r r.txt", &[("r.txt", "aa")]),
            key("h", "sha256:2", "pip install -r r.txt", &[("r.txt", "aa")]),
            key("h", "sha256:1", "pip install -r r2.txt", &[("r.txt", "aa")]),
            key("h", "sha256:1", "pip install -r r.txt", &[("r.txt", "ab")]),
            key("h", "sha256:1", "pip install -r r.txt", &[("s.txt", "aa")]),
        ] {
            assert_ne!(base, other);
        }
        assert_eq!(base.len(), 32);
        let files = inputs(&[("r.txt", "aa")]);
        let private = |id| environment_key("h", "sha256:1", "pip install -r r.txt", &files, id);
        assert_ne!(private(Some("exp-1")), base);
        assert_ne!(private(Some("exp-1")), private(Some("exp-2")));
        assert_eq!(private(Some("exp-1")), private(Some("exp-1")));
    }

    #[test]
    fn image_names_are_valid_docker_references() {
        assert_eq!(image_name("App", "k"), "genesis-env/app:k");
        assert_eq!(image_name("my repo!", "k"), "genesis-env/my-repo:k");
        assert_eq!(image_name("***", "k"), "genesis-env/repo:k");
    }
}
