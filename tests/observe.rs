//! Seeing into a running `falcon run`: one trace per saga exported over
//! OTLP to a real receiver, `/metrics` and `/health/*` scraped, JSON logs
//! read, and a SIGTERM under load that loses and doubles nothing.
//!
//! Over 500 lines because each of its three scenarios drives a whole
//! process (a receiver, an HTTP scrape, a signal) and checks it in place.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{bail, ensure, Context, Result};
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use common::cli::{http_get, Running};
use common::{eventually, Backend, World, DEADLINE};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;

/// One span as the receiver decoded it.
#[derive(Debug, Clone)]
struct Span {
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    attributes: HashMap<String, String>,
}

/// A real OTLP/HTTP receiver: `POST /v1/traces` with a protobuf
/// `ExportTraceServiceRequest`.
struct Receiver {
    url: String,
    spans: Arc<Mutex<Vec<Span>>>,
    _task: tokio::task::JoinHandle<()>,
}

async fn export(State(spans): State<Arc<Mutex<Vec<Span>>>>, body: Bytes) -> axum::http::StatusCode {
    let Ok(req) = ExportTraceServiceRequest::decode(body) else {
        return axum::http::StatusCode::BAD_REQUEST;
    };
    let mut got = Vec::new();
    for rs in req.resource_spans {
        for ss in rs.scope_spans {
            for s in ss.spans {
                let attributes = s
                    .attributes
                    .iter()
                    .map(|kv| {
                        let v = match kv.value.as_ref().and_then(|v| v.value.clone()) {
                            Some(Value::StringValue(s)) => s,
                            Some(Value::IntValue(i)) => i.to_string(),
                            Some(Value::BoolValue(b)) => b.to_string(),
                            Some(Value::DoubleValue(d)) => d.to_string(),
                            other => format!("{other:?}"),
                        };
                        (kv.key.clone(), v)
                    })
                    .collect();
                got.push(Span {
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    name: s.name,
                    attributes,
                });
            }
        }
    }
    spans.lock().expect("spans lock").extend(got);
    axum::http::StatusCode::OK
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Receiver {
    async fn start() -> Result<Receiver> {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new()
            .route("/v1/traces", post(export))
            .with_state(spans.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Receiver {
            url,
            spans,
            _task: task,
        })
    }

    fn spans_of(&self, trace_id: &str) -> Vec<Span> {
        self.spans
            .lock()
            .expect("spans lock")
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }
}

fn otel_env(receiver: &Receiver) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url.clone()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
    ]
}

/// The handle spans of one saga, each the child of the span that caused
/// its message: client → payment → risk → wallet → payment → wallet →
/// payment, all in one trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_saga_is_one_trace_with_parent_links() -> Result<()> {
    let w = World::new(Backend::Sqlite).await?;
    let dir = tempfile::tempdir()?;
    let receiver = Receiver::start().await?;
    let run = Running::start(&w, dir.path(), &[], &otel_env(&receiver))?;
    w.open_wallet("tr-a", "USD").await?;
    w.open_wallet("tr-b", "USD").await?;
    w.deposit("tr-a", "50.00", "USD").await?;

    let mut pay = common::cli::command(&w, dir.path());
    pay.args([
        "pay",
        "--from",
        "tr-a",
        "--to",
        "tr-b",
        "--amount",
        "12.00",
        "--currency",
        "USD",
        "--id",
        "pay-traced",
        "--json",
    ]);
    for (k, v) in otel_env(&receiver) {
        pay.env(k, v);
    }
    let out = common::cli::ok(pay.output()?)?;
    let published = common::cli::json(&out)?;
    let trace_id = published["trace_id"]
        .as_str()
        .context("pay prints the trace id")?
        .to_owned();
    let done = w.wait_terminal("pay-traced").await?;
    ensure!(
        done.data.payment().is_some()
            && matches!(done.data, falcon_schemas::EventData::PaymentCompleted(_))
    );

    // client, six actor steps, and the view's six projections.
    let spans = eventually(|| async {
        let spans = receiver.spans_of(&trace_id);
        let view = spans
            .iter()
            .filter(|s| s.attributes.get("actor").map(String::as_str) == Some("payment-view"))
            .count();
        Ok((spans.len() >= 13 && view >= 6).then_some(spans))
    })
    .await
    .with_context(|| {
        format!(
            "spans received: {:#?}",
            receiver.spans.lock().map(|s| s.len())
        )
    })?;

    let by_step = |actor: &str, step: &str| -> Result<Span> {
        let found: Vec<&Span> = spans
            .iter()
            .filter(|s| {
                s.attributes.get("actor").map(String::as_str) == Some(actor)
                    && s.attributes.get("step").map(String::as_str) == Some(step)
            })
            .collect();
        match found.as_slice() {
            [one] => Ok((*one).clone()),
            other => bail!(
                "{} spans of {actor} handling {step}: {other:#?}",
                other.len()
            ),
        }
    };
    let client = spans
        .iter()
        .find(|s| s.name == "falcon payment.create")
        .context("the client's span")?;
    ensure!(
        client.parent_span_id.is_empty(),
        "the client span is the root"
    );

    // (actor, step it handles, the span whose events it handles)
    let create = by_step("payment", "cmd.payment.create")?;
    let requested = by_step("risk", "payment.requested")?;
    let approved = by_step("wallet", "risk.approved")?;
    let reserved = by_step("payment", "wallet.funds_reserved")?;
    let captured = by_step("wallet", "payment.captured")?;
    let committed = by_step("payment", "wallet.transfer_committed")?;
    let chain = [
        (&create, client),
        (&requested, &create),
        (&approved, &requested),
        (&reserved, &approved),
        (&captured, &reserved),
        (&committed, &captured),
    ];
    for (child, parent) in chain {
        ensure!(
            child.parent_span_id == parent.span_id,
            "{} should be the child of {} ({} != {})",
            child.name,
            parent.name,
            child.parent_span_id,
            parent.span_id
        );
        for key in [
            "saga_id",
            "payment_id",
            "actor",
            "step",
            "delivery",
            "outcome",
            "trace_id",
        ] {
            ensure!(
                child.attributes.contains_key(key),
                "{} lacks {key}: {:?}",
                child.name,
                child.attributes
            );
        }
        ensure!(
            child.attributes["saga_id"] == "pay-traced",
            "{:?}",
            child.attributes
        );
        ensure!(
            child.attributes["payment_id"] == "pay-traced",
            "{:?}",
            child.attributes
        );
        ensure!(
            child.attributes["outcome"] == "ack",
            "{:?}",
            child.attributes
        );
        ensure!(child.attributes["trace_id"] == trace_id);
    }
    // The view projects payment.completed, which the last payment step wrote.
    let completed_view = by_step("payment-view", "payment.completed")?;
    ensure!(completed_view.parent_span_id == committed.span_id);

    let (status, _) = run.terminate().await?;
    ensure!(status.success(), "falcon run exited with {status}");
    Ok(())
}

fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(name_and_labels)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

async fn scrape(base: &str) -> Result<String> {
    let (status, body) = http_get(&format!("{base}/metrics")).await?;
    ensure!(status == 200, "/metrics answered {status}");
    Ok(body)
}

/// Waits until a metric has the value `want`.
async fn metric_becomes(base: &str, name_and_labels: &str, want: f64) -> Result<String> {
    eventually(|| async {
        let text = scrape(base).await?;
        Ok((metric(&text, name_and_labels) == Some(want)).then_some(text))
    })
    .await
    .with_context(|| format!("{name_and_labels} never became {want}"))
}

async fn health(base: &str, which: &str) -> Result<(u16, serde_json::Value)> {
    let (status, body) = http_get(&format!("{base}/health/{which}")).await?;
    Ok((
        status,
        serde_json::from_str(&body).with_context(|| body.clone())?,
    ))
}

/// `/health/*` and `/metrics` of a running process, JSON logs, and the
/// stuck-saga gauge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_logs_are_served() -> Result<()> {
    let mut w = World::new(Backend::Sqlite).await?;
    let dir = tempfile::tempdir()?;
    let port = common::nats::free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let env = vec![
        ("FALCON__HTTP__LISTEN", format!("127.0.0.1:{port}")),
        ("FALCON__HTTP__SAMPLE_INTERVAL_MS", "100".to_owned()),
        ("FALCON__SAGA__STUCK_AFTER_S", "1".to_owned()),
        ("RUST_LOG", "info,falcon_kernel=debug".to_owned()),
    ];
    // Without risk, a payment waits at `requested`: stuck after a second.
    let partial = Running::start(
        &w,
        dir.path(),
        &["--log-format", "json", "--actors", "payment,wallet"],
        &env,
    )?;
    let (live, _) = eventually(|| async {
        Ok(http_get(&format!("{base}/health/live"))
            .await
            .ok()
            .filter(|(s, _)| *s == 200))
    })
    .await?;
    ensure!(live == 200);
    let (status, ready) = eventually(|| async {
        let r = health(&base, "ready").await?;
        Ok((r.0 == 200).then_some(r))
    })
    .await?;
    ensure!(status == 200 && ready["ready"] == true, "{ready}");
    let names: Vec<&str> = ready["checks"]
        .as_array()
        .context("checks")?
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    for want in [
        "nats",
        "database:payment",
        "database:wallet",
        "consumer:payment",
        "consumer:payment-0",
        "consumer:payment-view-0",
        "consumer:wallet",
        "consumer:wallet-0",
    ] {
        ensure!(names.contains(&want), "readiness lacks {want}: {names:?}");
    }
    ensure!(
        !names.iter().any(|n| n.starts_with("consumer:risk")) && !names.contains(&"database:risk")
    );

    w.open_wallet("m-a", "USD").await?;
    w.open_wallet("m-b", "USD").await?;
    w.deposit("m-a", "35.00", "USD").await?;
    w.command(
        "payment.create",
        World::pay_body("m-stuck", "m-a", "m-b", "10.00", "USD"),
    )
    .await?;
    w.wait_event("falcon.evt.payment.requested.m-stuck", |_| true)
        .await?;
    metric_becomes(&base, "falcon_sagas_stuck", 1.0).await?;

    let (status, stderr) = partial.terminate().await?;
    ensure!(status.success(), "exit {status}: {stderr}");
    ensure!(stderr.contains("stopped in"), "{stderr}");
    // JSON lines, and the debug line of each handled message carries its
    // span's saga id, trace id and actor.
    let handled: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("every log line is JSON")?;
    let line = handled
        .iter()
        .find(|l| l["message"] == "handled" && l["span"]["saga_id"] == "m-stuck")
        .with_context(|| format!("no 'handled' line for m-stuck in {stderr}"))?;
    ensure!(line["span"]["actor"] == "payment", "{line}");
    ensure!(
        line["span"]["trace_id"]
            .as_str()
            .is_some_and(|t| t.len() == 32),
        "{line}"
    );
    ensure!(
        line["level"] == "DEBUG" && line["outcome"] == "ack",
        "{line}"
    );

    // All actors: the stuck saga completes, more payments run, one fails.
    let full = Running::start(&w, dir.path(), &[], &env)?;
    w.wait_terminal("m-stuck").await?;
    for i in 0..2 {
        w.pay(&format!("m-ok-{i}"), "m-a", "m-b", "10.00", "USD")
            .await?;
    }
    let declined = w.pay("m-short", "m-a", "m-b", "10.00", "USD").await?;
    ensure!(matches!(
        declined.data,
        falcon_schemas::EventData::PaymentFailed(_)
    ));
    // A command no one can parse is dead-lettered.
    w.publish_raw("falcon.cmd.payment.create.client", "{not json", None)
        .await?;

    let text = metric_becomes(&base, "falcon_dlq_depth", 1.0).await?;
    let text = if metric(&text, "falcon_sagas_stuck") == Some(0.0) {
        text
    } else {
        metric_becomes(&base, "falcon_sagas_stuck", 0.0).await?
    };
    // This process saw the three completions and the failure.
    for (name, want) in [
        ("falcon_sagas_completed_total", 3.0),
        (
            "falcon_sagas_failed_total{reason=\"insufficient_funds\"}",
            1.0,
        ),
        (
            "falcon_messages_dead_lettered_total{actor=\"payment\"}",
            1.0,
        ),
        (
            "falcon_saga_duration_seconds_count{outcome=\"completed\"}",
            3.0,
        ),
        (
            "falcon_saga_duration_seconds_bucket{outcome=\"completed\",le=\"+Inf\"}",
            3.0,
        ),
        ("falcon_breaker_state", 0.0),
    ] {
        ensure!(
            metric(&text, name) == Some(want),
            "{name} is {:?}, want {want}\n{text}",
            metric(&text, name)
        );
    }
    for (name, at_least) in [
        ("falcon_messages_handled_total{actor=\"payment\"}", 8.0),
        ("falcon_messages_handled_total{actor=\"risk\"}", 4.0),
        ("falcon_messages_handled_total{actor=\"wallet\"}", 7.0),
        (
            "falcon_messages_handled_total{actor=\"payment-view\"}",
            10.0,
        ),
        ("falcon_relay_published_total{actor=\"payment\"}", 1.0),
        ("falcon_handler_duration_seconds_count{actor=\"risk\"}", 4.0),
        ("falcon_batch_size_count{actor=\"wallet\"}", 1.0),
    ] {
        let v = metric(&text, name).with_context(|| format!("{name} missing\n{text}"))?;
        ensure!(v >= at_least, "{name} is {v}, want at least {at_least}");
    }
    for consumer in [
        "payment-cmd",
        "payment-evt-0",
        "payment-view-0",
        "risk-evt-0",
        "wallet-cmd",
        "wallet-evt-0",
    ] {
        ensure!(
            metric(
                &text,
                &format!("falcon_consumer_pending{{consumer=\"{consumer}\"}}")
            )
            .is_some(),
            "pending of {consumer}"
        );
        ensure!(metric(
            &text,
            &format!("falcon_consumer_ack_pending{{consumer=\"{consumer}\"}}")
        )
        .is_some());
    }
    for actor in ["payment", "risk", "wallet"] {
        ensure!(metric(
            &text,
            &format!("falcon_outbox_backlog{{actor=\"{actor}\"}}")
        )
        .is_some());
    }
    // The allocator's two gauges: what the process holds, at most what
    // its allocator keeps resident, and both within the process's RSS as
    // the kernel counts it.
    let allocated = metric(&text, "falcon_memory_allocated_bytes").context("allocated")?;
    let resident = metric(&text, "falcon_memory_resident_bytes").context("resident")?;
    let pid = full.child.id().context("falcon run's pid")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")?;
    ensure!(
        allocated > 1e6 && allocated <= resident && resident <= (rss_kb * 1024 * 3 / 2) as f64,
        "allocated {allocated}, resident {resident}, VmRSS {rss_kb} kB"
    );
    // How full each stream is, against its limit.
    for (stream, max) in [
        ("FALCON_CMD", w.settings.streams.cmd_max_bytes),
        ("FALCON_EVT", w.settings.streams.evt_max_bytes),
        ("FALCON_DLQ", w.settings.streams.dlq_max_bytes),
    ] {
        ensure!(
            metric(
                &text,
                &format!("falcon_stream_max_bytes{{stream=\"{stream}\"}}")
            ) == Some(max as f64),
            "max bytes of {stream}"
        );
        ensure!(
            metric(
                &text,
                &format!("falcon_stream_bytes{{stream=\"{stream}\"}}")
            )
            .is_some_and(|b| b >= 0.0 && b < max as f64),
            "bytes of {stream}"
        );
    }

    // NATS gone: not ready, and says why; still live.
    w.nats.stop();
    let (status, ready) = eventually(|| async {
        let r = health(&base, "ready").await?;
        Ok((r.0 == 503).then_some(r))
    })
    .await?;
    ensure!(status == 503 && ready["ready"] == false);
    let nats = ready["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "nats"))
        .context("nats check")?;
    ensure!(nats["ok"] == false, "{ready}");
    ensure!(health(&base, "live").await?.0 == 200);
    drop(full);
    Ok(())
}

/// SIGTERM while payments are in flight: the process finishes its batches
/// and exits 0; restarted, it brings every payment to exactly one end.
async fn sigterm_under_load_loses_nothing(backend: Backend) -> Result<()> {
    let w = World::new(backend).await?;
    let dir = tempfile::tempdir()?;
    let env = vec![("FALCON__SHUTDOWN__GRACE_MS", "30000".to_owned())];
    let first = Running::start(&w, dir.path(), &[], &env)?;
    w.open_wallet("st-a", "USD").await?;
    w.open_wallet("st-b", "USD").await?;
    w.deposit("st-a", "1000.00", "USD").await?;
    let n = 200;
    let bodies: Vec<serde_json::Value> = (0..n)
        .map(|i| World::pay_body(&format!("st-{i}"), "st-a", "st-b", "5.00", "USD"))
        .collect();
    // Publish in the background and wait for all terminal events there.
    let payer = {
        let (client, js) = (w.client.clone(), w.js.clone());
        tokio::spawn(async move { common::pay_many(&client, &js, &bodies).await })
    };
    // Stop once the first payments have completed: the rest are in flight.
    w.wait_event("falcon.evt.payment.completed.>", |_| true)
        .await?;
    let (status, stderr) = first.terminate().await?;
    ensure!(
        status.success(),
        "falcon run exited with {status}: {stderr}"
    );
    ensure!(
        stderr.contains("SIGTERM: stopping") && stderr.contains("stopped in"),
        "{stderr}"
    );

    let second = Running::start(&w, dir.path(), &[], &env)?;
    let terminal = tokio::time::timeout(DEADLINE * 2, payer).await???;
    ensure!(terminal.len() == n, "{} of {n} terminal", terminal.len());
    let completed = terminal
        .values()
        .filter(|e| matches!(e.data, falcon_schemas::EventData::PaymentCompleted(_)))
        .count();
    ensure!(completed == n, "{completed} of {n} completed");
    w.assert_invariants().await?;
    let a = w.balance("st-a").await?;
    ensure!(a.available == "0.00" && a.held == "0.00", "st-a: {a:?}");
    let (status, _) = second.terminate().await?;
    ensure!(status.success());
    Ok(())
}

backend_tests!(sigterm_under_load_loses_nothing);
