//! `falcon saga list` and `falcon saga stuck`: sagas found in the saga
//! view, the projection of FALCON_EVT that the payment crate keeps
//! (`falcon_payment::view`), by state and age, or by how long they have
//! been idle short of a terminal state.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use falcon_kernel::Handler;
use falcon_payment::view::SagaView;
use falcon_runtime::runtime::open_store;
use falcon_runtime::Settings;
use falcon_sagas::Actor;

use crate::output;

/// The actor whose handler keeps the saga view: its database holds it.
const SAGA_VIEW_ACTOR: Actor = <SagaView as Handler>::ACTOR;

/// `falcon saga list`: newest first, at most `limit`.
pub async fn list(
    settings: &Settings,
    state: Option<String>,
    since: Option<Duration>,
    limit: u64,
    json: bool,
) -> Result<ExitCode> {
    if let Some(s) = &state {
        if falcon_sagas::State::parse(s).is_none() {
            let all: Vec<&str> = falcon_sagas::State::ALL
                .iter()
                .map(|s| s.as_str())
                .collect();
            bail!("unknown state {s:?}; one of {}", all.join(", "));
        }
    }
    let since = match since {
        Some(d) => Some(
            chrono::Duration::from_std(d)
                .ok()
                .and_then(|d| chrono::Utc::now().checked_sub_signed(d))
                .context("--since reaches back past any date FalconPay can hold")?,
        ),
        None => None,
    };
    let db = open_store(SAGA_VIEW_ACTOR, settings).await?;
    let rows = falcon_payment::view::list(&db, state.as_deref(), since, limit).await?;
    if json {
        output::json(&rows)?;
    } else {
        let table: Vec<Vec<String>> = rows
            .into_iter()
            .map(|r| {
                vec![
                    r.saga_id,
                    r.kind,
                    r.state,
                    if r.amount.is_empty() {
                        "-".to_owned()
                    } else {
                        format!("{} {}", r.amount, r.currency)
                    },
                    if r.from_wallet.is_empty() {
                        "-".to_owned()
                    } else {
                        format!("{} -> {}", r.from_wallet, r.to_wallet)
                    },
                    r.reason.unwrap_or_default(),
                    r.created_at.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
                ]
            })
            .collect();
        output::table(
            &[
                "SAGA", "KIND", "STATE", "AMOUNT", "WALLETS", "REASON", "STARTED",
            ],
            &table,
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `falcon saga stuck`: not terminal and unchanged since before
/// `older_than`, each with what it waits on.
pub async fn stuck(settings: &Settings, older_than: Duration, json: bool) -> Result<ExitCode> {
    let before = chrono::Utc::now()
        - chrono::Duration::from_std(older_than).context("--older-than is too long")?;
    let db = open_store(SAGA_VIEW_ACTOR, settings).await?;
    // The saga view is folded from the events, so its state is the truth
    // as far as FALCON_EVT has got.
    let rows = falcon_payment::view::stuck(&db, before).await?;
    let now = chrono::Utc::now();
    let with_wait: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| (r, falcon_sagas::State::parse(&r.state)))
        .map(|(r, state)| {
            let wait = state.and_then(|s| s.waits_on());
            serde_json::json!({
                "saga_id": r.saga_id, "kind": r.kind,
                "state": state.map(|s| s.as_str()).unwrap_or(r.state.as_str()),
                "waits_on": wait.map(|w| serde_json::json!({
                    "actor": w.actor.as_str(),
                    "events": w.events.iter().map(|e| e.short()).collect::<Vec<_>>(),
                    "compensating": w.compensating,
                })),
                "idle_ms": (now - r.updated_at).num_milliseconds(),
                "amount": r.amount, "currency": r.currency, "created_at": r.created_at,
            })
        })
        .collect();
    if json {
        output::json(&with_wait)?;
    } else {
        let table: Vec<Vec<String>> = with_wait
            .iter()
            .map(|v| {
                let waits = match &v["waits_on"] {
                    serde_json::Value::Null => String::new(),
                    w => format!(
                        "{} for {}",
                        w["actor"].as_str().unwrap_or_default(),
                        w["events"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|e| e.as_str())
                            .collect::<Vec<_>>()
                            .join(" | ")
                    ),
                };
                vec![
                    v["saga_id"].as_str().unwrap_or_default().to_owned(),
                    v["kind"].as_str().unwrap_or_default().to_owned(),
                    v["state"].as_str().unwrap_or_default().to_owned(),
                    format!("{}s", v["idle_ms"].as_i64().unwrap_or(0) / 1000),
                    waits,
                ]
            })
            .collect();
        output::table(&["SAGA", "KIND", "STATE", "IDLE", "WAITS ON"], &table);
    }
    Ok(ExitCode::SUCCESS)
}
