//! The HTTP endpoint of `falcon run`: `/metrics` (Prometheus text format),
//! `/health/live` and `/health/ready`.
//!
//! It listens before the actors start, so a liveness probe passes while the
//! process connects and migrates; readiness says 503 until the runtime runs
//! and then reflects its checks (NATS, databases, consumers).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use falcon_runtime::probe::Probe;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Bucket bounds of the `_seconds` histograms, from 0.5 ms to 60 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
/// Bucket bounds of `falcon_batch_size`.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

#[derive(Clone)]
struct AppState {
    metrics: PrometheusHandle,
    probe: Arc<OnceLock<Probe>>,
}

/// A running endpoint; give it the runtime's probe once the runtime runs.
pub struct Endpoint {
    pub addr: SocketAddr,
    probe: Arc<OnceLock<Probe>>,
    task: tokio::task::JoinHandle<()>,
}

impl Endpoint {
    pub fn ready_with(&self, probe: Probe) {
        let _ = self.probe.set(probe);
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

/// Installs the Prometheus recorder and serves on `listen`.
pub async fn serve(listen: &str) -> Result<Endpoint> {
    let metrics = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(falcon_runtime::telemetry::names::BATCH_SIZE.into()),
                BATCH_BUCKETS,
            )
        })
        .context("metric buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    let probe = Arc::new(OnceLock::new());
    let state = AppState {
        metrics: metrics.clone(),
        probe: probe.clone(),
    };
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("http.listen: cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    // The recorder keeps histogram samples until rendered: drain them now
    // and then even when nobody scrapes.
    let upkeep = metrics.clone();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        let server = axum::serve(listener, app);
        tokio::select! {
            r = server => if let Err(e) = r { tracing::error!(error = %e, "http endpoint stopped") },
            () = async { loop { tick.tick().await; upkeep.run_upkeep(); } } => {}
        }
    });
    tracing::info!(%addr, "serving /metrics, /health/live, /health/ready");
    Ok(Endpoint { addr, probe, task })
}

async fn render_metrics(State(s): State<AppState>) -> impl IntoResponse {
    // The allocator's figures as of this scrape (two reads: no sampler).
    crate::memory::record();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn live() -> impl IntoResponse {
    Json(serde_json::json!({ "live": true }))
}

async fn ready(State(s): State<AppState>) -> impl IntoResponse {
    match s.probe.get() {
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                serde_json::json!({ "ready": false, "checks": [{ "name": "runtime", "ok": false, "detail": "starting" }] }),
            ),
        ),
        Some(probe) => {
            let r = probe.readiness().await;
            let code = if r.ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (code, Json(serde_json::to_value(r).unwrap_or_default()))
        }
    }
}
