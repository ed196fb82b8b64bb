//! `[http] listen`: the endpoints supervisors and Prometheus use.
//!
//! - `GET /metrics`: every series of [`crate::telemetry`] in the text
//!   format Prometheus scrapes.
//! - `GET /healthz`: 200 while the process serves at all (a liveness probe:
//!   restart it when this fails).
//! - `GET /readyz`: 200 when the store opens a read, the Docker engine
//!   answers a ping within `[http] ready_timeout_ms` and the NATS
//!   connection is up; otherwise 503 with one line per reason, so a
//!   readiness probe (or a person with curl) sees what is missing.
//!
//! The server starts before genesis waits for NATS, so a supervisor sees
//! the process alive (and not ready) while it waits. The listener is bound
//! before `serve` goes on: an address already in use stops it at once
//! with the address named, rather than serving without metrics.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::task::JoinSet;

use crate::errors::{GenesisError, Result};
use crate::runner::Runner;

/// What the endpoints look at.
struct Probes {
    runner: Arc<Runner>,
    nats: Client,
    ready_timeout: Duration,
}

/// Binds `[http] listen` and serves it until the returned task is aborted;
/// also starts measuring the home's disk use every `disk_interval_ms`.
/// None when `listen` is empty.
pub(super) async fn start(
    runner: &Arc<Runner>,
    nats: &Client,
) -> Result<Option<tokio::task::JoinHandle<()>>> {
    let http = &runner.config.http;
    if http.listen.is_empty() {
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind(&http.listen)
        .await
        .map_err(|e| GenesisError::io(format!("binding [http] listen = {}", http.listen), e))?;
    tracing::info!(listen = %http.listen, "metrics and health endpoints: /metrics /healthz /readyz");
    let probes = Arc::new(Probes {
        runner: runner.clone(),
        nats: nats.clone(),
        ready_timeout: http.ready_timeout,
    });
    let disk = tokio::spawn(measure_home_disk(runner.clone()));
    let header_timeout = http.header_timeout;
    Ok(Some(tokio::spawn(async move {
        accept_loop(listener, probes, header_timeout).await;
        disk.abort();
    })))
}

/// `genesis_home_disk_bytes`, measured now and then every `disk_interval_ms`.
async fn measure_home_disk(runner: Arc<Runner>) {
    let every = runner
        .config
        .http
        .disk_interval
        .max(Duration::from_millis(1));
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let home = runner.config.home.clone();
        if let Ok(bytes) =
            tokio::task::spawn_blocking(move || crate::maintenance::disk_usage_bytes(&home)).await
        {
            runner.telemetry.home_disk_bytes(bytes);
        }
    }
}

/// Serves each connection in a set owned by this task, so aborting it
/// closes them all.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    probes: Arc<Probes>,
    header_timeout: Duration,
) {
    let mut connections = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors and the like: pause instead of spinning.
                tracing::warn!(error = %e, "http: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let probes = probes.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| route(request, probes.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn route(
    request: Request<Incoming>,
    probes: Arc<Probes>,
) -> std::result::Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != Method::GET {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into()));
    }
    Ok(match request.uri().path() {
        "/metrics" => metrics(&probes),
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match probes.unready_reasons().await {
            reasons if reasons.is_empty() => text(StatusCode::OK, "ready\n".into()),
            reasons => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready\n{}\n", reasons.join("\n")),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: /metrics, /healthz, /readyz\n".into(),
        ),
    })
}

fn metrics(probes: &Probes) -> Response<Full<Bytes>> {
    Response::builder()
        .header("content-type", crate::telemetry::CONTENT_TYPE)
        .body(Full::new(Bytes::from(probes.runner.telemetry.encode())))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

impl Probes {
    /// Why genesis cannot take work now; empty when it can. The three
    /// checks run together, so an unready answer takes at most the timeout.
    async fn unready_reasons(&self) -> Vec<String> {
        let (store, engine) = tokio::join!(self.store_reason(), self.engine_reason());
        [store, engine, self.nats_reason()]
            .into_iter()
            .flatten()
            .collect()
    }

    async fn store_reason(&self) -> Option<String> {
        let read = self.runner.store.call(|s| s.schema_version());
        match tokio::time::timeout(self.ready_timeout, read).await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(format!("store: {e}")),
            Err(_) => Some(format!(
                "store: no read within {} ms",
                self.ready_timeout.as_millis()
            )),
        }
    }

    async fn engine_reason(&self) -> Option<String> {
        match tokio::time::timeout(self.ready_timeout, self.runner.docker.ping()).await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(format!("docker engine: unreachable: {e}")),
            Err(_) => Some(format!(
                "docker engine: no answer within {} ms",
                self.ready_timeout.as_millis()
            )),
        }
    }

    fn nats_reason(&self) -> Option<String> {
        let state = self.nats.connection_state();
        (state != async_nats::connection::State::Connected).then(|| {
            format!(
                "nats: not connected to {} ({state})",
                self.runner.config.nats.url
            )
        })
    }
}
