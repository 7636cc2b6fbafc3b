//! Publishing a command from the CLI (`wallet open`, `wallet deposit`,
//! `pay`, `refund`) and, with `--wait`, following its events until its
//! outcome. It owns the `--wait` / `--timeout` flags ([`WaitArgs`]) that
//! each of those verbs flattens into its own arguments.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Args;
use falcon_nats::publish::publish;
use falcon_nats::trace::TraceParent;
use falcon_nats::OutMsg;
use falcon_runtime::Settings;
use falcon_schemas::subject::{saga_filter, STREAM_EVT};
use falcon_schemas::{CommandKind, Event, EventData};
use futures::StreamExt;

use crate::{output, summary};

/// `--wait` and `--timeout`, flattened into each verb that publishes a
/// command.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Wait for the outcome and print it.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// The events that may end `command`: a wallet command's are the wallet's
/// (`key` is the wallet id), a payment's or refund's are its saga's.
fn outcome_filter(command: CommandKind, key: &str) -> String {
    match command {
        CommandKind::WalletOpen | CommandKind::WalletDeposit => {
            format!("falcon.evt.wallet.*.{key}")
        }
        CommandKind::PaymentCreate | CommandKind::PaymentRefund => saga_filter(key),
    }
}

/// A readable unique id: `<prefix>-<uuidv7>`.
pub fn generated_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

/// Publishes a command body on `falcon.cmd.<name>` with a fresh
/// `Nats-Msg-Id` and trace; with `--wait`, follows `key`'s events until the
/// outcome. Exit code 2 when the outcome is a rejection.
pub async fn command(
    settings: &Settings,
    command: CommandKind,
    body: serde_json::Value,
    key: &str,
    wait: &WaitArgs,
    json: bool,
) -> Result<ExitCode> {
    let name = command.as_str();
    // A deposit comes from the treasury, every other command from the
    // client identity; the subject names it, and the broker holds it to
    // the identity it connected as.
    let principal = match command {
        CommandKind::WalletDeposit => &settings.security.treasury,
        _ => &settings.nats.identity,
    };
    let client = settings.connect_as(principal, "falcon-cli").await?;
    let js = async_nats::jetstream::new(client);
    let msg_id = uuid::Uuid::now_v7().to_string();
    let subject = command.subject(principal);
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
        outcome(&js, command, key, &msg_id, reference.as_deref()),
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
            summary::line(&outcome.data)
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
    command: CommandKind,
    key: &str,
    msg_id: &str,
    reference: Option<&str>,
) -> Result<Event> {
    let mut events =
        Box::pin(falcon_nats::read::watch(js, STREAM_EVT, &outcome_filter(command, key)).await?);
    while let Some(stored) = events.next().await {
        let stored = stored?;
        let Ok(event) = Event::decode(&stored.payload) else {
            continue;
        };
        if ends(command, &event, msg_id, reference) {
            return Ok(event);
        }
    }
    bail!("event stream ended before an outcome for {key}")
}

/// Whether `event` ends `command`, published with `msg_id` (and, for a
/// deposit, `reference`).
fn ends(command: CommandKind, event: &Event, msg_id: &str, reference: Option<&str>) -> bool {
    let caused_by_us = event.causationid == msg_id;
    match (&event.data, command) {
        (EventData::PaymentRejected(_) | EventData::WalletRejected(_), _) => caused_by_us,
        (
            EventData::PaymentCompleted(_) | EventData::PaymentFailed(_),
            CommandKind::PaymentCreate,
        ) => true,
        (
            EventData::PaymentRefunded(_) | EventData::RefundFailed(_),
            CommandKind::PaymentRefund,
        ) => true,
        (EventData::WalletOpened(_), CommandKind::WalletOpen) => true,
        // A resent open of an existing wallet causes no new event.
        // A resent deposit has no new event: its reference finds the first.
        (EventData::WalletDeposited(d), CommandKind::WalletDeposit) => {
            caused_by_us || reference == Some(d.reference.as_str())
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use falcon_schemas::event::{DepositedData, RejectedData, WalletOpenedData};
    use falcon_schemas::{Currency, Reason};

    use super::*;

    fn usd() -> Currency {
        Currency::from_code("USD").expect("USD is a currency")
    }

    fn event(data: EventData, causation_id: &str) -> Event {
        Event::new(
            data,
            "evt-1".into(),
            chrono::Utc::now(),
            "falcon/wallet",
            causation_id,
            None,
        )
    }

    #[test]
    fn wallet_commands_end_on_wallet_events_payments_on_saga_events() {
        assert_eq!(
            outcome_filter(CommandKind::WalletDeposit, "w1"),
            "falcon.evt.wallet.*.w1"
        );
        assert_eq!(
            outcome_filter(CommandKind::PaymentRefund, "r1"),
            saga_filter("r1")
        );
    }

    #[test]
    fn a_rejection_ends_only_the_command_that_caused_it() {
        let rejected = event(
            EventData::WalletRejected(RejectedData {
                command: "wallet.open".into(),
                key: "w1".into(),
                reason: Reason::InvalidId,
                message: "bad".into(),
                field: None,
            }),
            "msg-1",
        );
        assert!(ends(CommandKind::WalletOpen, &rejected, "msg-1", None));
        assert!(!ends(CommandKind::WalletOpen, &rejected, "msg-2", None));
    }

    #[test]
    fn a_resent_deposit_ends_at_the_first_deposit_of_its_reference() {
        let deposited = event(
            EventData::WalletDeposited(DepositedData {
                wallet_id: "w1".into(),
                reference: "d1".into(),
                amount: rust_decimal::Decimal::ONE,
                currency: usd(),
            }),
            "msg-first",
        );
        assert!(ends(
            CommandKind::WalletDeposit,
            &deposited,
            "msg-resent",
            Some("d1")
        ));
        assert!(!ends(
            CommandKind::WalletDeposit,
            &deposited,
            "msg-other",
            Some("d2")
        ));
        let opened = event(
            EventData::WalletOpened(WalletOpenedData {
                wallet_id: "w1".into(),
                owner: "o".into(),
                currency: usd(),
            }),
            "msg-x",
        );
        assert!(ends(CommandKind::WalletOpen, &opened, "msg-y", None));
        assert!(!ends(CommandKind::WalletDeposit, &opened, "msg-x", None));
    }
}
