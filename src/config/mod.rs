//! Configuration: built-in policy, optional named policy overlay, the user's
//! `genesis.toml`, then environment variables, each layer overriding the last.
//!
//! The layers are merged as TOML tables *before* they are turned into typed
//! values, so a user file only needs the keys it changes. The merged document
//! is then deserialized with unknown keys refused; any error names the file
//! that was being read, the dotted key, and what was expected.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::analysis::{Analyzer, Shapes};
use crate::contract::RiskLevel;
use crate::errors::{GenesisError, Result};
use crate::home::Home;
use crate::results::ReportSpec;

pub mod globs;
pub mod host;
mod millis;
mod nats_keys;
pub mod net_allow;
mod owner;
pub use owner::Owner;
pub mod schedule;
mod sections;
pub use sections::*;

/// The built-in defaults, compiled into the binary so it runs from anywhere.
pub const DEFAULT_POLICY: &str = include_str!("../../policies/default.toml");
/// Named overlays a config may select with `policy = "NAME"`.
pub const NAMED_POLICIES: &[(&str, &str)] =
    &[("strict", include_str!("../../policies/strict.toml"))];

/// A git repository experiments may snapshot (contract §2).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    /// A git repository on this host; only ever read.
    pub path: PathBuf,
    /// Image the tests run in.
    pub image: String,
    /// Run with `sh -c` in `/workspace/NAME`. Empty: detected from the
    /// repo's files (see `snapshot::detect_framework`).
    #[serde(default)]
    pub test_command: String,
    /// Where the per-test results come from; see `results::ReportSpec`.
    /// Empty: detected with the test command, else `auto`.
    #[serde(default)]
    pub report: String,
    /// Runs before the tests in the same container, network off.
    #[serde(default)]
    pub setup_command: String,
    /// Builds the repo's environment (contract §2a): runs once per
    /// environment key as root, network on; empty means no environment.
    #[serde(default)]
    pub install_command: String,
    /// Globs (repo-relative, `*` does not cross `/`, `**` does) of the files
    /// whose contents key the environment, e.g. `["requirements*.txt"]`.
    #[serde(default)]
    pub install_inputs: globs::InputGlobs,
    /// `cobertura:PATH`, `lcov:PATH` or `jacoco:PATH` under /genesis/out:
    /// the line coverage of each run; empty (or absent) for none.
    #[serde(default, deserialize_with = "coverage_spec")]
    pub coverage: Option<crate::results::coverage::CoverageSpec>,
    /// Whether every run gets the LLM endpoint of contract §2b.
    #[serde(default = "yes")]
    pub llm_stub: bool,
    /// A JSONL file in the repo (`{"match", "answer"}` per line) with the
    /// endpoint's answers, read from the base commit; empty for none.
    #[serde(default)]
    pub llm_answers: String,
}

/// Resource profile for one risk level.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub cpus: f64,
    pub memory_mb: u64,
    pub pids: i64,
    #[serde(rename = "timeout_ms", with = "millis")]
    pub timeout: std::time::Duration,
    pub network: bool,
    /// May a candidate whose patch changes an `install_inputs` file get an
    /// environment of its own? Otherwise it fails with `environment_changed`.
    #[serde(default = "yes")]
    pub install_changes: bool,
    /// All writes of one run together (workspace, /tmp, /genesis/out; the
    /// image's own tree is read-only) in MB: the run gets a file system of
    /// this size of its own. 0 = no cap (the container's writable layer
    /// and a `tmp_mb` tmpfs, as on an engine genesis cannot mount for).
    #[serde(default)]
    pub disk_mb: u64,
    /// What a patch may write once applied, binary literals included, in
    /// MB; checked before anything is inflated (contract §4).
    pub patch_mb: u64,
}

fn yes() -> bool {
    true
}

/// `[limits]`: a resource profile per risk level, and the bounds on what a
/// suite's report can make genesis hold, which are the same for all.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsSection {
    low: Limits,
    medium: Limits,
    high: Limits,
    max_tests: u64,
}

/// The merged document, as the files spell it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    default_repo: Option<String>,
    #[serde(default)]
    repos: BTreeMap<String, RepoConfig>,
    max_concurrent: usize,
    queue_capacity: usize,
    #[serde(rename = "drain_timeout_ms", with = "millis")]
    drain_timeout: std::time::Duration,
    #[serde(rename = "full_home_wait_ms", with = "millis")]
    full_home_wait: std::time::Duration,
    store_cache_mb: u64,
    #[serde(default)]
    llm_patterns: Option<PathBuf>,
    host: host::HostConfig,
    nats: NatsConfig,
    limits: LimitsSection,
    thresholds: ThresholdTable,
    judging: Judging,
    schedule: Schedule,
    jobs: JobsPolicy,
    sandbox: SandboxPolicy,
    cleanup: CleanupPolicy,
    environments: EnvironmentPolicy,
    analysis: AnalysisPolicy,
    framework: FrameworkPolicy,
    http: HttpPolicy,
    llm: LlmPolicy,
}

/// Everything the service needs to know, resolved and validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Named policy overlay in force (`policy = "strict"`), if any.
    pub policy: Option<String>,
    /// `GENESIS_HOME`: the only directory Genesis writes to.
    pub home: Home,
    /// The file the user's settings came from, if any.
    pub source: Option<PathBuf>,
    pub default_repo: Option<String>,
    pub repos: BTreeMap<String, RepoConfig>,
    pub max_concurrent: usize,
    pub queue_capacity: usize,
    pub drain_timeout: std::time::Duration,
    /// How long `serve` lets a full GENESIS_HOME stall an experiment (it
    /// waits for space and runs it again) before answering it failed.
    pub full_home_wait: std::time::Duration,
    /// redb page cache; bounds memory however large the store grows.
    pub store_cache_mb: u64,
    /// `[host] name`, resolved (the machine's hostname when unset): stamped
    /// on every record, result and export row, so several hosts' exports
    /// load into one database without colliding.
    pub host: String,
    pub nats: NatsConfig,
    pub limits: BTreeMap<RiskLevel, Limits>,
    /// `[limits] max_tests`: the most tests a report may claim or list.
    pub max_tests: u64,
    pub thresholds: ThresholdTable,
    pub judging: Judging,
    pub schedule: Schedule,
    pub jobs: JobsPolicy,
    pub sandbox: SandboxPolicy,
    pub cleanup: CleanupPolicy,
    pub environments: EnvironmentPolicy,
    pub analysis: AnalysisPolicy,
    /// `[framework]`: the suite of a repo without a test command.
    pub framework: FrameworkPolicy,
    /// `[http]`: metrics and health endpoints.
    pub http: HttpPolicy,
    /// `[llm]`: the LLM endpoint of every test run (contract §2b).
    pub llm: LlmPolicy,
    /// The analyzer of LLM call shapes per language
    /// (`policies/llm_patterns.toml`, or the file named by `llm_patterns`),
    /// compiled once on load and shared.
    pub llm_analyzer: Arc<Analyzer>,
}

/// Environment a config is resolved in; a struct so tests need not touch the
/// process environment.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub genesis_home: Option<PathBuf>,
    pub nats_url: Option<String>,
    /// `GENESIS_NATS_PASSWORD`: wins over `[nats] password`.
    pub nats_password: Option<String>,
    /// `GENESIS_NATS_TOKEN`: wins over `[nats] token`.
    pub nats_token: Option<String>,
    pub home_dir: Option<PathBuf>,
}

impl Env {
    pub fn from_process() -> Self {
        Env {
            genesis_home: std::env::var_os("GENESIS_HOME").map(PathBuf::from),
            nats_url: std::env::var("GENESIS_NATS_URL").ok(),
            nats_password: std::env::var("GENESIS_NATS_PASSWORD").ok(),
            nats_token: std::env::var("GENESIS_NATS_TOKEN").ok(),
            home_dir: std::env::var_os("HOME").map(PathBuf::from),
        }
    }

    fn resolve_home(&self) -> PathBuf {
        match (&self.genesis_home, &self.home_dir) {
            (Some(home), _) => home.clone(),
            (None, Some(user_dir)) => user_dir.join(".genesis"),
            (None, None) => PathBuf::from(".genesis"),
        }
    }
}

impl Config {
    /// Loads the configuration the CLI uses: `--config PATH`, else
    /// `$GENESIS_HOME/genesis.toml` when it exists, else built-in defaults.
    pub fn load(explicit: Option<&Path>, env: &Env) -> Result<Config> {
        let home = env.resolve_home();
        let file = match explicit {
            Some(path) => Some(path.to_path_buf()),
            None => Some(Home::of(&home).config_file()).filter(|p| p.exists()),
        };
        let user = match &file {
            Some(path) => Some((path.clone(), read_file(path)?)),
            None => None,
        };
        Self::from_layers(home, user, env)
    }

    /// Builds a config from the defaults plus an optional user document.
    pub fn from_layers(
        home: PathBuf,
        user: Option<(PathBuf, String)>,
        env: &Env,
    ) -> Result<Config> {
        let defaults_path = PathBuf::from("<built-in policies/default.toml>");
        let mut merged = parse_toml(&defaults_path, DEFAULT_POLICY)?;
        let user_table = match &user {
            Some((path, text)) => Some((path.clone(), parse_toml(path, text)?)),
            None => None,
        };
        if let Some(name) = user_table
            .as_ref()
            .and_then(|(_, t)| t.get("policy"))
            .and_then(|v| v.as_str())
        {
            let (path, overlay) = named_policy(name, user.as_ref().map(|(p, _)| p.as_path()))?;
            merge_tables(&mut merged, parse_toml(&path, &overlay)?);
        }
        let blame = user_table
            .as_ref()
            .map(|(p, _)| p.clone())
            .unwrap_or(defaults_path);
        if let Some((_, table)) = user_table {
            merge_tables(&mut merged, table);
        }
        let parsed: FileConfig = serde_path_to_error::deserialize(toml::Value::Table(merged))
            .map_err(|err| GenesisError::Config {
                file: blame.clone(),
                message: format!("key `{}`: {}", err.path(), err.inner()),
            })?;
        let base_dir = user
            .as_ref()
            .and_then(|(p, _)| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("."));
        let config = Self::resolve(parsed, home, user.map(|(p, _)| p), &base_dir, env)?;
        config.validate(&blame)?;
        Ok(config)
    }

    fn resolve(
        parsed: FileConfig,
        home: PathBuf,
        source: Option<PathBuf>,
        base_dir: &Path,
        env: &Env,
    ) -> Result<Config> {
        let mut nats = parsed.nats;
        if let Some(url) = &env.nats_url {
            nats.url = url.clone();
        }
        nats_keys::apply_env(&mut nats, env);
        nats_keys::resolve_paths(&mut nats, base_dir);
        let mut repos = parsed.repos;
        for repo in repos.values_mut() {
            // Relative repo paths are relative to the config file, not the cwd.
            if repo.path.is_relative() {
                repo.path = base_dir.join(&repo.path);
            }
        }
        let llm_analyzer = load_llm_analyzer(parsed.llm_patterns.as_deref(), base_dir)?;
        Ok(Config {
            policy: parsed.policy,
            home: Home::new(home),
            source,
            default_repo: parsed.default_repo,
            repos,
            max_concurrent: parsed.max_concurrent,
            queue_capacity: parsed.queue_capacity,
            drain_timeout: parsed.drain_timeout,
            full_home_wait: parsed.full_home_wait,
            store_cache_mb: parsed.store_cache_mb,
            host: parsed.host.resolve(),
            nats,
            limits: BTreeMap::from([
                (RiskLevel::Low, parsed.limits.low),
                (RiskLevel::Medium, parsed.limits.medium),
                (RiskLevel::High, parsed.limits.high),
            ]),
            max_tests: parsed.limits.max_tests,
            thresholds: parsed.thresholds,
            judging: parsed.judging,
            schedule: parsed.schedule,
            jobs: parsed.jobs,
            sandbox: parsed.sandbox,
            cleanup: parsed.cleanup,
            environments: parsed.environments,
            analysis: parsed.analysis,
            framework: parsed.framework,
            http: parsed.http,
            llm: parsed.llm,
            llm_analyzer,
        })
    }

    /// Checks what types alone cannot: names that must exist, sane ranges,
    /// parseable schedules and report specs.
    fn validate(&self, file: &Path) -> Result<()> {
        let bad = |key: &str, message: String| GenesisError::Config {
            file: file.to_path_buf(),
            message: format!("key `{key}`: {message}"),
        };
        if let Some(name) = &self.default_repo {
            if !self.repos.contains_key(name) {
                return Err(bad(
                    "default_repo",
                    format!("names repo {name:?}, but no [repos.{name}] table exists"),
                ));
            }
        }
        host::check_host_name(&self.host).map_err(|e| {
            bad(
                "host.name",
                format!("{e} (unset, it is the machine's hostname)"),
            )
        })?;
        if self.max_concurrent == 0 {
            return Err(bad(
                "max_concurrent",
                "expected a number of at least 1".into(),
            ));
        }
        for risk in RiskLevel::ALL {
            let Some(limits) = self.limits.get(&risk) else {
                return Err(bad(&format!("limits.{risk}"), "table is missing".into()));
            };
            if limits.cpus <= 0.0 || limits.memory_mb < 6 || limits.pids < 1 {
                return Err(bad(
                    &format!("limits.{risk}"),
                    "expected cpus > 0, memory_mb >= 6 and pids >= 1".into(),
                ));
            }
        }
        for (name, repo) in &self.repos {
            if !repo.report.is_empty() {
                repo.report
                    .parse::<ReportSpec>()
                    .map_err(|e| bad(&format!("repos.{name}.report"), e.to_string()))?;
            }
            if !repo.install_command.is_empty() && repo.install_inputs.is_empty() {
                return Err(bad(
                    &format!("repos.{name}.install_inputs"),
                    "an install_command needs the files that key its environment, e.g. [\"requirements.txt\"]".into(),
                ));
            }
        }
        self.validate_http()
            .map_err(|(key, message)| bad(key, message))?;
        net_allow::parse_all(&self.environments.network_allow)
            .map_err(|e| bad("environments.network_allow", e))?;
        if self.environments.disk_check.is_zero() {
            return Err(bad(
                "environments.disk_check_ms",
                "expected a number of milliseconds of at least 1".into(),
            ));
        }
        nats_keys::validate(&self.nats).map_err(|(key, message)| bad(key, message))?;
        Ok(())
    }

    /// `[http]`: an address to bind, and buckets a histogram accepts.
    fn validate_http(&self) -> std::result::Result<(), (&'static str, String)> {
        let http = &self.http;
        if !http.listen.is_empty() && http.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err((
                "http.listen",
                format!(
                    "{:?} is not HOST:PORT (e.g. \"127.0.0.1:9464\"; \"\" = off)",
                    http.listen
                ),
            ));
        }
        let buckets = [
            ("http.run_seconds_buckets", &http.run_seconds_buckets),
            ("http.queue_seconds_buckets", &http.queue_seconds_buckets),
            ("http.suite_seconds_buckets", &http.suite_seconds_buckets),
        ];
        for (key, bounds) in buckets {
            let rising = bounds.windows(2).all(|w| w[0] < w[1]);
            if bounds.is_empty() || !rising || bounds.iter().any(|b| !b.is_finite()) {
                return Err((
                    key,
                    "expected a non-empty list of finite, strictly increasing numbers".into(),
                ));
            }
        }
        Ok(())
    }

    pub fn limits_for(&self, risk: RiskLevel) -> Limits {
        self.limits[&risk]
    }

    /// Looks up a repo by name, or the default one.
    pub fn repo(&self, name: Option<&str>) -> Result<(String, &RepoConfig)> {
        let name = match name.or(self.default_repo.as_deref()) {
            Some(name) => name,
            None => {
                return Err(GenesisError::InvalidRequest(
                    "the request names no repo and the config has no default_repo".into(),
                ))
            }
        };
        let repo = self.repos.get(name).ok_or_else(|| {
            GenesisError::InvalidRequest(format!(
                "repo {name:?} is not configured (known: {})",
                self.repos.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        Ok((name.to_owned(), repo))
    }

    /// Path of the redb store.
    pub fn store_path(&self) -> PathBuf {
        self.home.store()
    }
}

/// `coverage = "FORMAT:PATH"`, parsed once; `""` is none.
fn coverage_spec<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<crate::results::coverage::CoverageSpec>, D::Error> {
    let text = String::deserialize(d)?;
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(serde::de::Error::custom)
}

fn read_file(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| GenesisError::Config {
        file: path.to_path_buf(),
        message: format!("cannot be read: {e}"),
    })
}

fn parse_toml(path: &Path, text: &str) -> Result<toml::Table> {
    text.parse::<toml::Table>()
        .map_err(|e| GenesisError::Config {
            file: path.to_path_buf(),
            message: format!("is not valid TOML: {e}"),
        })
}

/// A policy overlay: a built-in name, or a path relative to the config file.
fn named_policy(name: &str, config_file: Option<&Path>) -> Result<(PathBuf, String)> {
    if let Some((_, text)) = NAMED_POLICIES.iter().find(|(n, _)| *n == name) {
        return Ok((
            PathBuf::from(format!("<built-in policies/{name}.toml>")),
            (*text).into(),
        ));
    }
    let base = config_file.and_then(Path::parent).unwrap_or(Path::new("."));
    let path = base.join(name);
    if path.is_file() {
        return Ok((path.clone(), read_file(&path)?));
    }
    Err(GenesisError::Config {
        file: config_file.map(Path::to_path_buf).unwrap_or_default(),
        message: format!(
            "key `policy`: {name:?} is neither a built-in policy ({}) nor a file",
            NAMED_POLICIES
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

/// The built-in shapes, or the user's policy file (relative to the config
/// file); either way compiled once here so a bad shape is refused at load.
fn load_llm_analyzer(path: Option<&Path>, base_dir: &Path) -> Result<Arc<Analyzer>> {
    let (file, shapes) = match path {
        Some(p) => {
            let p = base_dir.join(p);
            let shapes = Shapes::from_path(&p).map_err(|e| GenesisError::Config {
                file: p.clone(),
                message: e.to_string(),
            })?;
            (p, shapes)
        }
        None => (
            PathBuf::from("<built-in policies/llm_patterns.toml>"),
            Shapes::builtin(),
        ),
    };
    let analyzer = Analyzer::new(shapes).map_err(|e| GenesisError::Config {
        file,
        message: e.to_string(),
    })?;
    Ok(Arc::new(analyzer))
}

/// Deep merge: tables merge key by key, anything else is replaced.
fn merge_tables(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge_tables(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests;
