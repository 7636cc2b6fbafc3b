//! Publishing commands from the CLI, and waiting for their outcome.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use falcon_nats::publish::publish;
use falcon_nats::trace::TraceParent;
use falcon_nats::OutMsg;
use falcon_runtime::Settings;
use falcon_schemas::subject::{saga_filter, CMD_PREFIX, STREAM_EVT};
use falcon_schemas::{Event, EventData};
use futures::StreamExt;

use crate::cli::WaitArgs;
use crate::output;

/// A readable unique id: `<prefix>-<uuidv7>`.
pub fn generated_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

/// Publishes a command body on `falcon.cmd.<name>` with a fresh
/// `Nats-Msg-Id` and trace; with `--wait`, follows `key`'s events until the
/// outcome.
pub async fn command(
    settings: &Settings,
    name: &str,
    body: serde_json::Value,
    key: &str,
    wait: &WaitArgs,
    json: bool,
) -> Result<ExitCode> {
    let client = falcon_nats::connect(&settings.nats.url, "falcon-cli").await?;
    let js = async_nats::jetstream::new(client);
    let msg_id = uuid::Uuid::now_v7().to_string();
    let subject = format!("{CMD_PREFIX}{name}");
    // The client's span is the root of the saga's trace (when traces are
    // exported; otherwise a new trace id is carried all the same).
    let span = tracing::info_span!(
        "publish",
        otel.name = %format_args!("falcon {name}"),
        otel.kind = "producer",
        command = name,
        saga_id = key,
    );
    let trace = span
        .in_scope(falcon_runtime::telemetry::current_traceparent)
        .unwrap_or_else(TraceParent::new_root);
    let msg = OutMsg {
        subject: subject.clone(),
        msg_id: msg_id.clone(),
        traceparent: Some(trace.to_string()),
        payload: Bytes::from(serde_json::to_vec(&body)?),
    };
    let ack = publish(&js, &msg).await?;
    drop(span);
    if !wait.wait {
        if json {
            output::json(&serde_json::json!({
                "subject": subject, "msg_id": msg_id, "key": key, "stream_seq": ack.stream_seq,
                "duplicate": ack.duplicate, "trace_id": trace.trace_id_hex(),
            }))?;
        } else {
            println!(
                "published {subject} key={key} msg_id={msg_id} seq={}{}",
                ack.stream_seq,
                if ack.duplicate { " (duplicate)" } else { "" }
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let reference = body
        .get("reference")
        .and_then(|r| r.as_str())
        .map(str::to_owned);
    let outcome = tokio::time::timeout(
        wait.timeout,
        outcome(&js, name, key, &msg_id, reference.as_deref()),
    )
    .await
    .with_context(|| {
        format!(
            "no outcome for {key} within {}",
            humantime::format_duration(wait.timeout)
        )
    })??;
    let rejected = matches!(
        outcome.data,
        EventData::PaymentRejected(_) | EventData::WalletRejected(_)
    );
    if json {
        output::json(&outcome)?;
    } else {
        println!(
            "{} {}: {}",
            outcome.event_type().short(),
            key,
            summary(&outcome.data)
        );
    }
    Ok(if rejected {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// The event that ends a command: a rejection caused by it, or, for a
/// payment or refund, the saga's terminal event; for wallet commands, the
/// event the command caused.
async fn outcome(
    js: &async_nats::jetstream::Context,
    name: &str,
    key: &str,
    msg_id: &str,
    reference: Option<&str>,
) -> Result<Event> {
    let filter = match name {
        "wallet.open" | "wallet.deposit" => format!("falcon.evt.wallet.*.{key}"),
        _ => saga_filter(key),
    };
    let mut events = js_watch(js, &filter).await?;
    while let Some(stored) = events.next().await {
        let stored = stored?;
        let Ok(event) = Event::decode(&stored.payload) else {
            continue;
        };
        let caused_by_us = event.causationid == msg_id;
        let ends = match (&event.data, name) {
            (EventData::PaymentRejected(_) | EventData::WalletRejected(_), _) => caused_by_us,
            (EventData::PaymentCompleted(_) | EventData::PaymentFailed(_), "payment.create") => {
                true
            }
            (EventData::PaymentRefunded(_) | EventData::RefundFailed(_), "payment.refund") => true,
            (EventData::WalletOpened(_), "wallet.open") => true,
            // A resent open of an existing wallet causes no new event.
            // A resent deposit has no new event: its reference finds the first.
            (EventData::WalletDeposited(d), "wallet.deposit") => {
                caused_by_us || reference == Some(d.reference.as_str())
            }
            _ => false,
        };
        if ends {
            return Ok(event);
        }
    }
    bail!("event stream ended before an outcome for {key}")
}

async fn js_watch(
    js: &async_nats::jetstream::Context,
    filter: &str,
) -> Result<impl futures::Stream<Item = Result<falcon_nats::read::Stored, falcon_nats::Error>>> {
    Ok(Box::pin(
        falcon_nats::read::watch(js, STREAM_EVT, filter).await?,
    ))
}

/// One line about an event's data.
pub fn summary(data: &EventData) -> String {
    match data {
        EventData::PaymentRejected(r) | EventData::WalletRejected(r) => {
            format!("rejected {} ({}): {}", r.command, r.reason, r.message)
        }
        EventData::PaymentFailed(f) => format!(
            "failed ({}){}: {}",
            f.reason,
            if f.compensated { ", compensated" } else { "" },
            f.message
        ),
        EventData::PaymentCompleted(p) => format!(
            "completed {} {} from {} to {}",
            p.amount, p.currency, p.from_wallet, p.to_wallet
        ),
        EventData::PaymentRefunded(r) => format!(
            "refunded {} {} of payment {}",
            r.amount, r.currency, r.payment_id
        ),
        EventData::RefundFailed(f) => format!("refund failed ({}): {}", f.reason, f.message),
        EventData::WalletOpened(w) => format!("opened for {} in {}", w.owner, w.currency),
        EventData::WalletDeposited(d) => format!(
            "deposited {} {} (reference {})",
            d.amount, d.currency, d.reference
        ),
        EventData::PaymentRequested(p) => format!(
            "requested {} {} from {} to {}",
            p.amount, p.currency, p.from_wallet, p.to_wallet
        ),
        EventData::RiskApproved(r) => format!("approved (score {})", r.score),
        EventData::RiskRejected(r) => {
            let reasons: Vec<&str> = r.risk_reasons.iter().map(|x| x.as_str()).collect();
            format!("rejected (score {}): {}", r.score, reasons.join(", "))
        }
        EventData::FundsReserved(p) => {
            format!("held {} {} on {}", p.amount, p.currency, p.from_wallet)
        }
        EventData::ReservationDeclined(f) | EventData::PaymentCaptureFailed(f) => {
            format!("{} ({}): {}", data.event_type().name(), f.reason, f.message)
        }
        EventData::FundsReleased(f) => format!(
            "released {} {} on {} ({})",
            f.payment.amount, f.payment.currency, f.payment.from_wallet, f.reason
        ),
        EventData::PaymentCaptured(c) => format!("captured, settlement {}", c.settlement_id),
        EventData::TransferCommitted(p) => format!(
            "moved {} {} {} -> {}",
            p.amount, p.currency, p.from_wallet, p.to_wallet
        ),
        EventData::RefundRequested(r) => format!(
            "refund of {} {} requested for payment {}",
            r.amount, r.currency, r.payment_id
        ),
        EventData::RefundCommitted(r) => format!(
            "moved {} {} {} -> {}",
            r.amount, r.currency, r.to_wallet, r.from_wallet
        ),
        EventData::RefundDeclined(f) => format!("refund declined ({}): {}", f.reason, f.message),
    }
}
