//! Logs and traces of the `falcon` process.
//!
//! Logs go to stderr: JSON lines (`--log-format json`, the default when
//! stderr is not a terminal) or readable text, filtered by `RUST_LOG`
//! (`info` for `falcon run`, `warn` for the other verbs). A log line written
//! while a message is handled carries that span's fields: `saga_id`,
//! `trace_id`, `actor`, `step`.
//!
//! Traces are exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, with the protocol of
//! `OTEL_EXPORTER_OTLP_PROTOCOL`: `http/protobuf` (the default) or `grpc`.
//! The standard `OTEL_*` variables (service name, batch delay, sampler) are
//! honoured by the SDK.

use std::io::IsTerminal;

use anyhow::{Context, Result};
use clap::ValueEnum;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// JSON when stderr is not a terminal, text otherwise.
    Auto,
    Json,
    Text,
}

/// Keeps the trace exporter alive; [`Telemetry::shutdown`] flushes it.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

/// Installs logging, and trace export when an OTLP endpoint is configured.
pub fn init(format: LogFormat, default_level: &str) -> Result<Telemetry> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let stderr_tty = std::io::stderr().is_terminal();
    let json = match format {
        LogFormat::Auto => !stderr_tty,
        LogFormat::Json => true,
        LogFormat::Text => false,
    };
    let logs = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(stderr_tty)
            .with_filter(filter)
            .boxed()
    };
    let provider = if env_set("OTEL_EXPORTER_OTLP_ENDPOINT")
        || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    {
        Some(tracer_provider()?)
    } else {
        None
    };
    // Only FalconPay's own spans: the exporter's HTTP/gRPC stack must not
    // trace itself.
    let traces = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("falconpay"))
            .with_filter(
                Targets::new()
                    .with_target("falcon_kernel", LevelFilter::INFO)
                    .with_target("falconpay", LevelFilter::INFO)
                    .with_target("falcon", LevelFilter::INFO),
            )
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .context("installing the log subscriber")?;
    Ok(Telemetry { provider })
}

fn tracer_provider() -> Result<SdkTracerProvider> {
    let protocol = std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").unwrap_or_default();
    let exporter = match protocol.trim() {
        "grpc" => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build(),
        "" | "http/protobuf" => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .build(),
        other => anyhow::bail!(
            "OTEL_EXPORTER_OTLP_PROTOCOL: {other:?} is not supported (grpc or http/protobuf)"
        ),
    }
    .context("building the OTLP span exporter")?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "falconpay".into());
    Ok(SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(service).build())
        .with_batch_exporter(exporter)
        .build())
}

impl Telemetry {
    /// Exports what is buffered. Runs on a blocking thread: the SDK's
    /// shutdown blocks, and on the async runtime it could starve the
    /// exporter it waits for.
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("falcon: flushing traces: {e}"),
                Err(e) => eprintln!("falcon: flushing traces: {e}"),
            }
        }
    }
}
