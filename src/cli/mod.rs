//! The command line (contract §6). `main` stays thin: parse, run one
//! command, map its error to a message on stderr and an exit code.
//!
//! Exit codes: 0 success; 1 a failed experiment or operation; 2 bad usage
//! (unknown flags, unreadable config, invalid request).

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{Config, Env};
use crate::contract::{ExperimentResult, Request, Stage};
use crate::errors::{GenesisError, Result};
use crate::runner::{Admission, Progress, Runner};
use crate::store::{open_store, Status};

mod analyze;
mod env;
mod report;
mod views;
pub use views::*;

#[derive(Parser, Debug)]
#[command(
    name = "genesis",
    version,
    about = "Try proposed code changes in hardened sandboxes and recommend merge or rollback"
)]
pub struct Cli {
    /// Config file (default: $GENESIS_HOME/genesis.toml, else built-in defaults).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run one experiment request without NATS; result JSON on stdout.
    Run {
        /// Request file, or - for standard input.
        file: String,
    },
    /// Run the NATS service: worker pool and scheduled jobs.
    Serve,
    /// List experiments, newest first.
    List {
        /// Only experiments in this status (queued, running, completed, failed).
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        json: bool,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show one experiment: record, metrics, verdict, sandbox history.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Export the store as Postgres-loadable SQL or CSV.
    Export {
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// File (sql) or directory (csv); - or absent means stdout for sql.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Only experiments updated at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
    },
    /// Sandbox operations.
    Sandbox {
        #[command(subcommand)]
        command: SandboxCommand,
    },
    /// Scheduled jobs.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// Test images.
    Images {
        #[command(subcommand)]
        command: ImagesCommand,
    },
    /// Check Docker, NATS, disk and the store; say what is wrong and how to fix it.
    Doctor,
    /// LLM call sites and cyclomatic complexity per file (directories are walked).
    Analyze {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Repo environments: dependencies installed once, tests offline.
    Env {
        #[command(subcommand)]
        command: EnvCommand,
    },
    /// Write a self-contained HTML page: one experiment, or the trends.
    #[command(group(clap::ArgGroup::new("what").required(true).args(["id", "trends"])))]
    Report {
        /// The experiment to show.
        id: Option<String>,
        /// The trends over all experiments instead.
        #[arg(long, conflicts_with = "id")]
        trends: bool,
        /// Days the trends cover, today included (default: cleanup.analysis_days).
        #[arg(long)]
        days: Option<u64>,
        /// Where to write the page (default: GENESIS_HOME/reports/ID.html, or
        /// GENESIS_HOME/reports/trends.html).
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum EnvCommand {
    /// Build (or find) the environment of REPO at a commit; JSON on stdout.
    Build {
        repo: String,
        /// Commit, branch or tag to install from.
        #[arg(long = "ref", default_value = "HEAD")]
        reference: String,
    },
    /// List environments: key, repo, size, last used.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove environments unused for `[environments] keep_days` or over its disk budget.
    Prune {
        /// Remove every environment not in use.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ExportFormat {
    Sql,
    Csv,
}

#[derive(Subcommand, Debug)]
pub enum SandboxCommand {
    /// Write a tarball of an archived or live sandbox.
    Export {
        id: String,
        #[arg(long)]
        output: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum JobsCommand {
    /// Run a scheduled job now (cleanup, analysis, report, health).
    Run { name: String },
}

#[derive(Subcommand, Debug)]
pub enum ImagesCommand {
    /// Build the images under images/ (all, or one by name).
    Build {
        name: Option<String>,
        /// Read definitions from this folder instead of the built-in ones.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Rebuild even when the image already exists.
        #[arg(long)]
        force: bool,
    },
}

/// Parses arguments, runs the command, returns the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    init_tracing(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("genesis: cannot start the async runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("genesis: {e}");
            e.exit_code()
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GENESIS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,genesis=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

async fn dispatch(cli: Cli) -> Result<i32> {
    let config = Arc::new(Config::load(cli.config.as_deref(), &Env::from_process())?);
    match cli.command {
        Command::Run { file } => run(config, &file).await,
        Command::Serve => crate::service::serve(config).await.map(|_| 0),
        Command::List {
            status,
            json,
            limit,
        } => list(&config, status.as_deref(), json, limit).await,
        Command::Show { id, json } => show(&config, &id, json).await,
        Command::Export {
            format,
            output,
            since,
        } => export(&config, format, output.as_deref(), since.as_deref()).await,
        Command::Sandbox {
            command: SandboxCommand::Export { id, output },
        } => {
            let store = open_store(&config).await?;
            crate::maintenance::export_sandbox(&config, &store, &id, &output).await?;
            eprintln!("genesis: wrote {}", output.display());
            Ok(0)
        }
        Command::Jobs {
            command: JobsCommand::Run { name },
        } => crate::jobs::run_now(config, &name).await,
        Command::Images {
            command: ImagesCommand::Build { name, dir, force },
        } => build_images(&config, name.as_deref(), dir.as_deref(), force).await,
        Command::Doctor => Ok(crate::doctor::run(&config).await),
        Command::Analyze { paths, json } => analyze::run(&config, &paths, json),
        Command::Env { command } => match command {
            EnvCommand::Build { repo, reference } => env::build(config, &repo, &reference).await,
            EnvCommand::List { json } => env::list(&config, json).await,
            EnvCommand::Prune { all } => env::prune(&config, all).await,
        },
        Command::Report {
            id,
            trends: _,
            days,
            output,
        } => report::run(&config, id.as_deref(), days, output.as_deref()).await,
    }
}

/// Progress on stderr: a spinner on a terminal, plain lines otherwise.
pub(crate) struct StderrProgress {
    bar: Option<indicatif::ProgressBar>,
}

impl StderrProgress {
    pub(crate) fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        StderrProgress { bar }
    }
}

impl Progress for StderrProgress {
    fn stage(&self, id: &str, stage: Stage, detail: &str) {
        let line = format!("{id}: {stage}: {detail}");
        match &self.bar {
            Some(bar) => {
                bar.println(format!("genesis: {line}"));
                bar.set_message(line);
            }
            None => eprintln!("genesis: {line}"),
        }
    }
}

impl Drop for StderrProgress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

async fn run(config: Arc<Config>, file: &str) -> Result<i32> {
    let body = read_request(file)?;
    let request = match Request::parse(&body) {
        Ok(r) => r,
        Err(invalid) => {
            let result = ExperimentResult::failed(
                &config.host,
                invalid.experiment_id.as_deref().unwrap_or(""),
                invalid.instance_id.as_deref().unwrap_or(""),
                crate::contract::ErrorKind::InvalidRequest,
                invalid.message.clone(),
            );
            println!("{}", result.to_json());
            eprintln!("genesis: invalid request: {invalid}");
            return Ok(2);
        }
    };
    let store = open_store(&config).await?;
    let runner = Runner::new(config.clone(), store).await?;
    let result = match runner.accept(&request, Status::Queued).await? {
        Admission::New => run_interruptible(&runner, &request).await?,
        Admission::Finished(result) => {
            eprintln!(
                "genesis: {} already ran; printing the stored result",
                request.experiment_id
            );
            *result
        }
        Admission::InFlight(rec) => {
            return Err(GenesisError::InvalidRequest(format!(
                "experiment {} is already {} (owner {}); it will not run twice",
                rec.experiment_id,
                rec.status.as_str(),
                rec.owner
            )))
        }
        Admission::Conflict(result) => *result,
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&result).unwrap_or_default()
    );
    Ok(match &result {
        ExperimentResult::Success(_) => 0,
        ExperimentResult::Failed(f)
            if f.error_kind == crate::contract::ErrorKind::InvalidRequest =>
        {
            2
        }
        ExperimentResult::Failed(_) => 1,
    })
}

/// Runs an experiment, and on Ctrl-C removes its containers and records it
/// as interrupted before exiting.
async fn run_interruptible(runner: &Runner, request: &Request) -> Result<ExperimentResult> {
    let progress = StderrProgress::new();
    tokio::select! {
        result = runner.run(request, &progress) => Ok(result),
        _ = tokio::signal::ctrl_c() => {
            drop(progress);
            eprintln!("genesis: interrupted; removing {}'s containers", request.experiment_id);
            let containers = crate::sandbox::labelled_containers(
                &runner.docker, Some(&runner.home_label), Some(&request.experiment_id)).await?;
            for (id, _) in containers {
                crate::sandbox::remove_container(&runner.docker, &id).await?;
            }
            let result = ExperimentResult::failed(
                &runner.config.host,
                &request.experiment_id,
                &request.instance_id,
                crate::contract::ErrorKind::Internal,
                "interrupted by Ctrl-C",
            );
            runner.finish(request, &result, None, None).await?;
            Ok(result)
        }
    }
}

fn read_request(file: &str) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    let limit = crate::contract::MAX_REQUEST_BYTES as u64 + 1;
    if file == "-" {
        std::io::stdin()
            .take(limit)
            .read_to_end(&mut body)
            .map_err(|e| GenesisError::io("reading the request from stdin", e))?;
    } else {
        std::fs::File::open(file)
            .and_then(|f| f.take(limit).read_to_end(&mut body))
            .map_err(|e| GenesisError::Usage(format!("cannot read request file {file}: {e}")))?;
    }
    Ok(body)
}

/// One experiment as `list --json` and `show --json` print it.
async fn export(
    config: &Config,
    format: ExportFormat,
    output: Option<&Path>,
    since: Option<&str>,
) -> Result<i32> {
    let since_ms = match since {
        None => None,
        Some(s) => Some(
            chrono::DateTime::parse_from_rfc3339(s)
                .map_err(|e| GenesisError::Usage(format!("--since {s:?} is not RFC 3339: {e}")))?
                .timestamp_millis(),
        ),
    };
    let store = open_store(config).await?;
    let output = output.map(Path::to_path_buf);
    let counts = store
        .call(move |s| match (format, output) {
            (ExportFormat::Sql, None) => {
                crate::export::write_sql(s, std::io::stdout().lock(), since_ms)
            }
            (ExportFormat::Sql, Some(p)) if p.as_os_str() == "-" => {
                crate::export::write_sql(s, std::io::stdout().lock(), since_ms)
            }
            (ExportFormat::Sql, Some(p)) => {
                let f = std::fs::File::create(&p)
                    .map_err(|e| GenesisError::io(format!("creating {}", p.display()), e))?;
                crate::export::write_sql(s, f, since_ms)
            }
            (ExportFormat::Csv, Some(dir)) => crate::export::write_csv(s, &dir, since_ms),
            (ExportFormat::Csv, None) => Err(GenesisError::Usage(
                "--format csv needs --output DIR".into(),
            )),
        })
        .await?;
    eprintln!(
        "genesis: exported {} experiments, {} metrics rows, {} history rows",
        counts.records, counts.metrics, counts.history
    );
    Ok(0)
}

async fn build_images(
    config: &Config,
    name: Option<&str>,
    dir: Option<&Path>,
    force: bool,
) -> Result<i32> {
    let defs = crate::images::definitions(dir)?;
    let chosen: Vec<_> = defs
        .iter()
        .filter(|(n, _)| name.is_none_or(|want| want == n))
        .collect();
    if chosen.is_empty() {
        return Err(GenesisError::Usage(format!(
            "no image named {:?} (known: {})",
            name.unwrap_or(""),
            defs.iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let docker = crate::sandbox::connect().await?;
    let owner = config.sandbox.user;
    for (n, def) in chosen {
        if !force && crate::images::exists(&docker, &def.tag).await {
            eprintln!(
                "genesis: image {n} ({}) already exists; --force rebuilds it",
                def.tag
            );
            continue;
        }
        eprintln!("genesis: building image {n} ({})", def.tag);
        let say = |line: &str| eprintln!("genesis: [{n}] {line}");
        crate::images::build(&docker, &config.home, def, owner, &say).await?;
    }
    Ok(0)
}
