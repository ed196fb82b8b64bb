//! `genesis doctor`: one line per check, ✓ or ✗, and for each ✗ the fix.

use crate::config::Config;
use crate::errors::GenesisError;

/// One check's verdict.
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    pub fix: Option<String>,
}

impl Check {
    fn pass(name: &'static str, detail: String) -> Check {
        Check {
            name,
            ok: true,
            detail,
            fix: None,
        }
    }

    fn fail(name: &'static str, detail: String, fix: impl Into<String>) -> Check {
        Check {
            name,
            ok: false,
            detail,
            fix: Some(fix.into()),
        }
    }
}

/// Runs every check, prints them, returns the exit code (1 if any failed).
pub async fn run(config: &Config) -> i32 {
    let checks = checks(config).await;
    for c in &checks {
        println!(
            "{} {:<8} {}",
            if c.ok { "✓" } else { "✗" },
            c.name,
            c.detail
        );
        if let Some(fix) = &c.fix {
            println!("           fix: {fix}");
        }
    }
    i32::from(checks.iter().any(|c| !c.ok))
}

pub async fn checks(config: &Config) -> Vec<Check> {
    let mut out = vec![
        docker(config).await,
        nats(config).await,
        home(config),
        store(config).await,
        archives(config).await,
    ];
    out.push(runtime(config).await);
    out.push(llm_endpoint(config));
    out.push(disk_cap(config).await);
    out.push(install_guard(config).await);
    out.extend(images(config).await);
    out.extend(environments(config).await);
    out.extend(repos(config));
    out
}

/// Whether installs run behind the network guard, in one line.
async fn install_guard(config: &Config) -> Check {
    let docker = crate::sandbox::connect().await.ok();
    let (ok, detail, fix) =
        crate::environment::guard::doctor_line(docker.as_ref(), &config.environments).await;
    if ok {
        Check::pass("guard", detail)
    } else {
        Check::fail("guard", detail, fix.unwrap_or_default())
    }
}

/// How many environments exist and how much of their budget they use.
async fn environments(config: &Config) -> Option<Check> {
    let docker = crate::sandbox::connect().await.ok()?;
    let infos = crate::environment::list(&docker, &config.home).await.ok()?;
    let used: u64 = infos.iter().filter_map(|i| i.size_bytes).sum();
    let budget = config.environments.disk_budget_mb;
    let detail = format!(
        "{} environment(s), {:.0} MB of the {budget} MB budget ([environments] disk_budget_mb)",
        infos.len(),
        used as f64 / 1048576.0
    );
    Some(if used > budget.saturating_mul(1024 * 1024) {
        Check::fail("envs", detail, "genesis env prune (or raise the budget)")
    } else {
        Check::pass("envs", detail)
    })
}

/// Every sandbox archive must match its MANIFEST.
async fn archives(config: &Config) -> Check {
    let owned = config.clone();
    let corrupt = tokio::task::spawn_blocking(move || crate::maintenance::corrupt_archives(&owned))
        .await
        .unwrap_or_default();
    if corrupt.is_empty() {
        return Check::pass(
            "archives",
            "every sandbox archive matches its MANIFEST".into(),
        );
    }
    Check::fail(
        "archives",
        format!("corrupt or tampered: {}", corrupt.join(", ")),
        format!(
            "inspect them under {} (`genesis show ID` says what differs); delete one by hand once you know why",
            config.home.archives().display()
        ),
    )
}

async fn docker(config: &Config) -> Check {
    let docker =
        match crate::sandbox::connect().await {
            Ok(d) => d,
            Err(e) => return Check::fail(
                "docker",
                format!("engine unreachable: {e}"),
                "start the engine (dockerd, or `apt-get install -y docker.io`), or set DOCKER_HOST",
            ),
        };
    let version = match docker.version().await {
        Ok(v) => v,
        Err(e) => {
            return Check::fail(
                "docker",
                format!("version query failed: {e}"),
                "check the engine's logs",
            )
        }
    };
    let desc = format!(
        "engine {} (API {})",
        version.version.unwrap_or_default(),
        version.api_version.unwrap_or_default()
    );
    let image = config
        .repos
        .values()
        .map(|r| r.image.clone())
        .chain(
            crate::images::definitions(None)
                .ok()
                .into_iter()
                .flatten()
                .map(|(_, d)| d.tag),
        )
        .find(|_| true)
        .unwrap_or_default();
    let limits = config.limits_for(crate::contract::RiskLevel::High);
    let probe = crate::sandbox::SandboxBuilder::from_policy(
        &config.sandbox,
        "doctor",
        crate::sandbox::Role::Baseline,
        &image,
        limits,
    )
    .home_label(&crate::sandbox::home_label(&config.home))
    .create(&docker)
    .await;
    match probe {
        Ok(sandbox) => {
            let _ = sandbox.remove().await;
            Check::pass(
                "docker",
                format!("{desc}, can create containers from {image}"),
            )
        }
        Err(e) => Check::fail(
            "docker",
            format!("{desc}, but creating a container from {image} failed: {e}"),
            "build the images: genesis images build",
        ),
    }
}

/// Connects as `serve` would (same credentials and TLS), so a refusal
/// shows here, named, with what to change.
async fn nats(config: &Config) -> Check {
    use crate::nats_auth::BriefFailure;
    const START: &str = "start a server (nats-server -a 127.0.0.1 -p 4222 -js) or set GENESIS_NATS_URL / [nats] url";
    let url = &config.nats.url;
    match crate::nats_auth::connect_briefly(&config.nats, "genesis-doctor").await {
        Ok(client) => {
            let info = client.server_info();
            Check::pass(
                "nats",
                format!("reachable at {url} (server {})", info.version),
            )
        }
        Err(BriefFailure::Options(e)) => {
            Check::fail("nats", e.to_string(), "fix the [nats] file key it names")
        }
        Err(BriefFailure::Connect(e)) => match crate::nats_auth::Refusal::of(&e) {
            Some(refusal) => {
                Check::fail("nats", crate::nats_auth::describe(url, &e), refusal.fix())
            }
            None => Check::fail("nats", crate::nats_auth::describe(url, &e), START),
        },
        Err(BriefFailure::NoAnswer(text)) => Check::fail("nats", text, START),
    }
}

fn home(config: &Config) -> Check {
    let home = &config.home;
    if let Err(e) = std::fs::create_dir_all(home) {
        return Check::fail(
            "home",
            format!("{} cannot be created: {e}", home.display()),
            "set GENESIS_HOME to a writable directory",
        );
    }
    let probe = crate::home::Home::of(home).doctor_probe();
    if let Err(e) = std::fs::write(&probe, b"ok") {
        let _ = std::fs::remove_file(&probe);
        if crate::store::faults::is_no_space(&e) {
            return Check::fail(
                "home",
                format!("{} is full: {e}", home.display()),
                "free space on its file system (`genesis jobs run cleanup`, `genesis env prune`, or remove files)",
            );
        }
        return Check::fail(
            "home",
            format!("{} is not writable: {e}", home.display()),
            "fix its permissions or set GENESIS_HOME",
        );
    }
    let _ = std::fs::remove_file(&probe);
    match free_mb(home) {
        Some(free) if free < config.cleanup.min_free_mb => Check::fail(
            "home",
            format!(
                "{} has only {free} MB free (under [cleanup] min_free_mb, {})",
                home.display(),
                config.cleanup.min_free_mb
            ),
            "free disk space or run `genesis jobs run cleanup`",
        ),
        Some(free) => Check::pass(
            "home",
            format!("{} writable, {free} MB free", home.display()),
        ),
        None => Check::pass("home", format!("{} writable", home.display())),
    }
}

/// Free space of the file system holding `path`, in MB.
pub fn free_mb(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `stat` a valid out-pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut stat) };
    (rc == 0).then(|| (stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64) / (1024 * 1024))
}

/// The store opens and every page of it checks out (a full read of the
/// file, so damage that a plain open never touches is found too).
async fn store(config: &Config) -> Check {
    match crate::store::open_store_verified(config).await {
        Ok(store) => match store.schema_version() {
            Ok(v) => Check::pass(
                "store",
                format!(
                    "{} opens, every page checks out, schema version {v}",
                    store.path().display()
                ),
            ),
            Err(e) => store_failure(e),
        },
        Err(e) => store_failure(e),
    }
}

/// What is wrong with the store and the way out: a damaged file is named
/// with what redb found and how to start afresh without losing results.
fn store_failure(e: GenesisError) -> Check {
    match e {
        GenesisError::StoreDamaged { path, problem, fix } => Check::fail(
            "store",
            format!("{} is damaged: {problem}", path.display()),
            fix,
        ),
        GenesisError::HomeFull { home, context } => Check::fail(
            "store",
            format!("{} is full (No space left on device) while {context}", home.display()),
            "free space on its file system (`genesis jobs run cleanup`, `genesis env prune`, or remove files); what was stored before is intact",
        ),
        e => Check::fail(
            "store",
            e.to_string(),
            "check the file's permissions, or move it aside to start afresh",
        ),
    }
}

async fn images(config: &Config) -> Vec<Check> {
    let Ok(docker) = crate::sandbox::connect().await else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, repo) in &config.repos {
        if crate::images::exists(&docker, &repo.image).await {
            out.push(Check::pass(
                "image",
                format!("{} (repo {name}) is present", repo.image),
            ));
        } else {
            out.push(Check::fail(
                "image",
                format!("{} (repo {name}) is missing", repo.image),
                "genesis images build",
            ));
        }
    }
    out
}

fn repos(config: &Config) -> Vec<Check> {
    crate::snapshot::allow_foreign_owners();
    config
        .repos
        .iter()
        .map(|(name, repo)| match git2::Repository::open(&repo.path) {
            Ok(git) => suite_check(name, repo, &git),
            Err(e) => Check::fail(
                "repo",
                format!(
                    "{name}: {} cannot be opened: {}",
                    repo.path.display(),
                    e.message()
                ),
                "fix [repos.NAME] path in genesis.toml",
            ),
        })
        .collect()
}

/// A repo opens; say which suite runs in it: the configured command, or
/// the framework its files imply at HEAD.
fn suite_check(name: &str, repo: &crate::config::RepoConfig, git: &git2::Repository) -> Check {
    let path = repo.path.display();
    if !repo.test_command.trim().is_empty() {
        return Check::pass(
            "repo",
            format!(
                "{name}: {path}; tests: `{}` (configured)",
                repo.test_command
            ),
        );
    }
    let detected = git
        .head()
        .and_then(|h| h.peel_to_tree())
        .ok()
        .and_then(|tree| crate::snapshot::detect_framework(git, &tree));
    match detected {
        Some(f) => Check::pass(
            "repo",
            format!(
                "{name}: {path}; tests: `{}`, report {} (detected {})",
                f.test_command, f.report, f.name
            ),
        ),
        None => Check::fail(
            "repo",
            format!("{name}: {path} has no test_command and no known framework at HEAD"),
            format!("set [repos.{name}] test_command (and report) in genesis.toml"),
        ),
    }
}

/// The OCI runtime of `[sandbox] runtime` must be registered with the engine.
/// Whether runs get the LLM endpoint (contract §2b). Where they cannot
/// (runsc, a remote engine) this passes with the reason: results then say
/// so and fall back to the static count, which is a choice, not a fault.
fn llm_endpoint(config: &Config) -> Check {
    let stubbed: Vec<&str> = config
        .repos
        .iter()
        .filter(|(_, repo)| repo.llm_stub)
        .map(|(name, _)| name.as_str())
        .collect();
    let local = crate::sandbox::engine_is_local();
    let detail =
        match crate::sandbox::llm::unavailable_reason(config.sandbox.runtime.is_gvisor(), local) {
            Some(reason) => format!("unavailable: {reason}; results fall back to the static count"),
            None if stubbed.is_empty() => "off: llm_stub = false for every repo".to_string(),
            None => format!(
                "http://127.0.0.1:{} in every run's sandbox ([llm] port) for repos {}",
                config.llm.port,
                stubbed.join(", ")
            ),
        };
    Check::pass("llm", detail)
}

async fn runtime(config: &Config) -> Check {
    let wanted = config.sandbox.runtime.name();
    let Ok(docker) = crate::sandbox::connect().await else {
        return Check::fail(
            "runtime",
            format!("{wanted}: the engine is unreachable"),
            "see the docker line",
        );
    };
    let registered: Vec<String> = match docker.info().await {
        Ok(info) => info.runtimes.unwrap_or_default().into_keys().collect(),
        Err(e) => {
            return Check::fail(
                "runtime",
                format!("reading the engine's runtimes: {e}"),
                "see the docker line",
            )
        }
    };
    if wanted.is_empty() || registered.iter().any(|r| r == wanted) {
        return Check::pass(
            "runtime",
            format!(
                "{wanted} ([sandbox] runtime; the engine has {})",
                registered.join(", ")
            ),
        );
    }
    Check::fail(
        "runtime",
        format!(
            "{wanted} ([sandbox] runtime) is not registered; the engine has {}",
            registered.join(", ")
        ),
        format!(
            "install it (apt-get install -y runsc for gVisor) and register it in the engine's \
             daemon.json: \"runtimes\": {{\"{wanted}\": {{\"path\": \"/usr/bin/{wanted}\", \
             \"runtimeArgs\": [\"--network=none\"]}}}}, then restart that engine; or set \
             [sandbox] runtime = \"runc\""
        ),
    )
}

/// The disk cap (`[limits.*] disk_mb`) needs a run's own file system: make
/// a small one, as a run would, and release it.
async fn disk_cap(config: &Config) -> Check {
    let capped: Vec<u64> = config.limits.values().map(|l| l.disk_mb).collect();
    if capped.iter().all(|mb| *mb == 0) {
        return Check::pass(
            "disk",
            "no disk cap configured ([limits.*] disk_mb = 0)".into(),
        );
    }
    if !crate::sandbox::engine_is_local() {
        return Check::fail(
            "disk",
            "the disk cap needs the engine on this host (DOCKER_HOST is remote)".into(),
            "run genesis on the engine's host, or set [limits.*] disk_mb = 0",
        );
    }
    let root =
        crate::runner::scratch_dir(&config.home).join(format!("doctor-{}", std::process::id()));
    let owner = config.sandbox.user;
    // With layers, an overlay (over an empty lower) is mounted on it too.
    let layers = config.sandbox.layers;
    let made = tokio::task::spawn_blocking(move || {
        let layered = layers.then(crate::sandbox::LayeredWorkspace::default);
        let disk = crate::sandbox::ScratchDisk::create(&root, 16, owner, layered.as_ref())?;
        disk.release()
    })
    .await;
    let workspace = if layers {
        "; workspaces are overlays of snapshot layers"
    } else {
        ""
    };
    match made {
        Ok(Ok(())) => Check::pass(
            "disk",
            format!("runs get a file system of their own (disk_mb {capped:?} for low, medium, high){workspace}"),
        ),
        Ok(Err(e)) => Check::fail(
            "disk",
            format!("cannot make a run's disk: {e}"),
            "run genesis as root with loop devices (modprobe loop), e2fsprogs and overlayfs, or set [limits.*] disk_mb = 0 (or only [sandbox] layers = false when the overlay mount failed)",
        ),
        Err(e) => Check::fail("disk", format!("disk check task: {e}"), "report this bug"),
    }
}
