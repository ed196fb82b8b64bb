//! Configuration: built-in policy, optional named policy overlay, the user's
//! `genesis.toml`, then environment variables, each layer overriding the last.
//!
//! The layers are merged as TOML tables *before* they are turned into typed
//! values, so a user file only needs the keys it changes. The merged document
//! is then deserialized with unknown keys refused; any error names the file
//! that was being read, the dotted key, and what was expected.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::contract::RiskLevel;
use crate::errors::{GenesisError, Result};
use crate::llm_calls::LlmPatterns;
use crate::results::ReportSpec;

/// The built-in defaults, compiled into the binary so it runs from anywhere.
pub const DEFAULT_POLICY: &str = include_str!("../policies/default.toml");
/// Named overlays a config may select with `policy = "NAME"`.
pub const NAMED_POLICIES: &[(&str, &str)] = &[("strict", include_str!("../policies/strict.toml"))];
/// Default LLM call patterns per language.
pub const DEFAULT_LLM_PATTERNS: &str = include_str!("../policies/llm_patterns.toml");

/// A git repository experiments may snapshot (contract §2).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    /// A git repository on this host; only ever read.
    pub path: PathBuf,
    /// Image the tests run in.
    pub image: String,
    /// Run with `sh -c` in `/workspace/NAME`.
    pub test_command: String,
    /// Where the per-test results come from; see `results::ReportSpec`.
    #[serde(default = "default_report")]
    pub report: String,
    /// Runs before the tests in the same container (e.g. install dependencies).
    #[serde(default)]
    pub setup_command: String,
}

fn default_report() -> String {
    "auto".into()
}

/// Resource profile for one risk level.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub cpus: f64,
    pub memory_mb: u64,
    pub pids: i64,
    pub timeout_ms: u64,
    pub network: bool,
}

/// The recommendation rules' numbers (contract §5).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    pub rollback_regression: f64,
    pub rollback_success_rate: f64,
    pub merge_llm_reduction: f64,
    pub merge_regression: f64,
    pub merge_success_rate: f64,
    pub adapt_success_rate: f64,
    pub adapt_regression: f64,
}

/// `[thresholds]`: the global numbers plus optional per-risk-level overrides.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ThresholdTable {
    pub rollback_regression: f64,
    pub rollback_success_rate: f64,
    pub merge_llm_reduction: f64,
    pub merge_regression: f64,
    pub merge_success_rate: f64,
    pub adapt_success_rate: f64,
    pub adapt_regression: f64,
    #[serde(default)]
    pub low: Option<ThresholdOverride>,
    #[serde(default)]
    pub medium: Option<ThresholdOverride>,
    #[serde(default)]
    pub high: Option<ThresholdOverride>,
}

/// Any subset of the thresholds, for one risk level.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ThresholdOverride {
    pub rollback_regression: Option<f64>,
    pub rollback_success_rate: Option<f64>,
    pub merge_llm_reduction: Option<f64>,
    pub merge_regression: Option<f64>,
    pub merge_success_rate: Option<f64>,
    pub adapt_success_rate: Option<f64>,
    pub adapt_regression: Option<f64>,
}

impl ThresholdTable {
    /// The effective thresholds for a risk level.
    pub fn for_risk(&self, risk: RiskLevel) -> Thresholds {
        let o = match risk {
            RiskLevel::Low => self.low,
            RiskLevel::Medium => self.medium,
            RiskLevel::High => self.high,
        }
        .unwrap_or_default();
        Thresholds {
            rollback_regression: o.rollback_regression.unwrap_or(self.rollback_regression),
            rollback_success_rate: o
                .rollback_success_rate
                .unwrap_or(self.rollback_success_rate),
            merge_llm_reduction: o.merge_llm_reduction.unwrap_or(self.merge_llm_reduction),
            merge_regression: o.merge_regression.unwrap_or(self.merge_regression),
            merge_success_rate: o.merge_success_rate.unwrap_or(self.merge_success_rate),
            adapt_success_rate: o.adapt_success_rate.unwrap_or(self.adapt_success_rate),
            adapt_regression: o.adapt_regression.unwrap_or(self.adapt_regression),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    pub url: String,
    pub jetstream: bool,
    pub stream: String,
    pub consumer: String,
    pub ack_wait_ms: u64,
    pub progress_ack_ms: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Judging {
    pub reruns: u32,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    pub cleanup: String,
    pub analysis: String,
    pub report: String,
    pub health: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JobsPolicy {
    pub max_attempts: u32,
    pub backoff_ms: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SandboxPolicy {
    pub user: String,
    pub log_cap_bytes: u64,
    pub tmp_mb: u64,
    pub out_cap_bytes: u64,
    pub docker_timeout_ms: u64,
    pub stats_interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CleanupPolicy {
    pub delete_after_hours: u64,
    pub archive_after_hours: u64,
    pub disk_budget_mb: u64,
    pub analysis_days: u64,
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
    drain_timeout_ms: u64,
    store_cache_mb: u64,
    #[serde(default)]
    llm_patterns: Option<PathBuf>,
    nats: NatsConfig,
    limits: BTreeMap<RiskLevel, Limits>,
    thresholds: ThresholdTable,
    judging: Judging,
    schedule: Schedule,
    jobs: JobsPolicy,
    sandbox: SandboxPolicy,
    cleanup: CleanupPolicy,
}

/// Everything the service needs to know, resolved and validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Named policy overlay in force (`policy = "strict"`), if any.
    pub policy: Option<String>,
    /// `GENESIS_HOME`: the only directory Genesis writes to.
    pub home: PathBuf,
    /// The file the user's settings came from, if any.
    pub source: Option<PathBuf>,
    pub default_repo: Option<String>,
    pub repos: BTreeMap<String, RepoConfig>,
    pub max_concurrent: usize,
    pub queue_capacity: usize,
    pub drain_timeout_ms: u64,
    /// redb page cache; bounds memory however large the store grows.
    pub store_cache_mb: u64,
    pub nats: NatsConfig,
    pub limits: BTreeMap<RiskLevel, Limits>,
    pub thresholds: ThresholdTable,
    pub judging: Judging,
    pub schedule: Schedule,
    pub jobs: JobsPolicy,
    pub sandbox: SandboxPolicy,
    pub cleanup: CleanupPolicy,
    pub llm_patterns: LlmPatterns,
}

/// Environment a config is resolved in; a struct so tests need not touch the
/// process environment.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub genesis_home: Option<PathBuf>,
    pub nats_url: Option<String>,
    pub home_dir: Option<PathBuf>,
}

impl Env {
    pub fn from_process() -> Self {
        Env {
            genesis_home: std::env::var_os("GENESIS_HOME").map(PathBuf::from),
            nats_url: std::env::var("GENESIS_NATS_URL").ok(),
            home_dir: std::env::var_os("HOME").map(PathBuf::from),
        }
    }

    fn resolve_home(&self) -> PathBuf {
        match (&self.genesis_home, &self.home_dir) {
            (Some(home), _) => home.clone(),
            (None, Some(user_home)) => user_home.join(".genesis"),
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
            None => Some(home.join("genesis.toml")).filter(|p| p.exists()),
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
        let mut repos = parsed.repos;
        for repo in repos.values_mut() {
            // Relative repo paths are relative to the config file, not the cwd.
            if repo.path.is_relative() {
                repo.path = base_dir.join(&repo.path);
            }
        }
        let llm_patterns = load_llm_patterns(parsed.llm_patterns.as_deref(), base_dir)?;
        Ok(Config {
            policy: parsed.policy,
            home,
            source,
            default_repo: parsed.default_repo,
            repos,
            max_concurrent: parsed.max_concurrent,
            queue_capacity: parsed.queue_capacity,
            drain_timeout_ms: parsed.drain_timeout_ms,
            store_cache_mb: parsed.store_cache_mb,
            nats,
            limits: parsed.limits,
            thresholds: parsed.thresholds,
            judging: parsed.judging,
            schedule: parsed.schedule,
            jobs: parsed.jobs,
            sandbox: parsed.sandbox,
            cleanup: parsed.cleanup,
            llm_patterns,
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
            repo.report
                .parse::<ReportSpec>()
                .map_err(|e| bad(&format!("repos.{name}.report"), e.to_string()))?;
        }
        for (key, expr) in self.schedule.entries() {
            crate::jobs::parse_schedule(expr)
                .map_err(|e| bad(&format!("schedule.{key}"), e.to_string()))?;
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
        self.home.join("genesis.redb")
    }
}

impl Schedule {
    pub fn entries(&self) -> [(&'static str, &str); 4] {
        [
            ("cleanup", &self.cleanup),
            ("analysis", &self.analysis),
            ("report", &self.report),
            ("health", &self.health),
        ]
    }
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

fn load_llm_patterns(path: Option<&Path>, base_dir: &Path) -> Result<LlmPatterns> {
    let (file, text) = match path {
        Some(p) => {
            let p = base_dir.join(p);
            let text = read_file(&p)?;
            (p, text)
        }
        None => (
            PathBuf::from("<built-in policies/llm_patterns.toml>"),
            DEFAULT_LLM_PATTERNS.to_owned(),
        ),
    };
    let patterns: LlmPatterns = toml::from_str(&text).map_err(|e| GenesisError::Config {
        file: file.clone(),
        message: e.to_string(),
    })?;
    crate::llm_calls::LlmCounter::new(&patterns).map_err(|e| GenesisError::Config {
        file,
        message: e.to_string(),
    })?;
    Ok(patterns)
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
mod tests {
    use super::*;

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
                "max_concurrent = 2\n[nats]\nurl = \"nats://x:1\"\n[limits.high]\ncpus = 0.5\n"
                    .into(),
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
        assert_eq!(repo.report, "auto");
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
}
