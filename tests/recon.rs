//! The reconciliation actor in a running system, against a
//! `falcon-provider` process: a clean system shows no mismatch; then each
//! kind of mismatch is planted where it would arise (the provider's ledger
//! changed under FalconPay, a foreign charge, a standing charge for a
//! failed payment, an actor publishing what did not happen, signed with
//! its own key) and each is reported by the reconciliation runs that
//! follow, as an event, in `falcon recon`, and, for the charge of a failed
//! payment, voided at the provider.

mod common;

use std::collections::BTreeSet;

use anyhow::{ensure, Context, Result};
use common::provider::Provider;
use common::{eventually, Backend, World};
use falcon_recon::entity::{fact, run};
use falcon_sagas::Actor;
use falcon_schemas::event::{PaymentData, RefundData};
use falcon_schemas::{Currency, Event, EventData, EventType};
use futures::StreamExt;
use rust_decimal::Decimal;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::json;

backend_tests!(every_kind_of_mismatch_planted_is_reported,);

const INTERVAL_S: u64 = 1;
const SETTLE_S: u64 = 1;

fn usd() -> Currency {
    Currency::from_code("USD").expect("USD")
}

fn payment(id: &str, amount: &str) -> Result<PaymentData> {
    Ok(PaymentData {
        payment_id: id.into(),
        from_wallet: "alice".into(),
        to_wallet: "bob".into(),
        amount: amount.parse::<Decimal>()?,
        currency: usd(),
        principal: Some("client".into()),
    })
}

/// An event as its owner would publish it.
fn event(data: EventData, source: &str) -> Event {
    Event::new(
        data,
        uuid::Uuid::now_v7().to_string(),
        chrono::Utc::now(),
        source,
        "planted-by-the-test",
        None,
    )
}

/// `falcon <args>` with the world's settings; its output, once it succeeded.
fn recon_cli(w: &World, args: &[&str]) -> Result<std::process::Output> {
    let dir = tempfile::tempdir()?;
    common::cli::ok(common::cli::falcon(w, dir.path(), args)?)
}

/// Waits until the reconciliation actor has compared every fact it holds.
async fn compared(w: &World) -> Result<()> {
    let stores = w.stores().await?;
    let db = stores.get(Actor::Recon).context("recon db")?.clone();
    eventually(|| {
        let db = db.clone();
        async move {
            let dirty = fact::Entity::find()
                .filter(fact::Column::Dirty.eq(true))
                .count(&db)
                .await?;
            Ok((dirty == 0).then_some(()))
        }
    })
    .await
}

async fn every_kind_of_mismatch_planted_is_reported(b: Backend) -> Result<()> {
    let p = Provider::start().await?;
    let (url, key_file) = (p.url.clone(), p.api_key_file.clone());
    let w = World::with(b, move |s| {
        s.provider.url = url;
        s.provider.api_key_file = key_file;
        s.recon.interval_s = INTERVAL_S;
        s.recon.settle_s = SETTLE_S;
    })
    .await?;
    let _rt = w.start().await?;
    w.open_wallet("alice", "USD").await?;
    w.open_wallet("bob", "USD").await?;
    w.deposit("alice", "100.00", "USD").await?;
    for id in ["good-1", "void-1", "amount-1", "refund-1", "wallet-1"] {
        let end = w.pay(id, "alice", "bob", "1.25", "USD").await?;
        ensure!(
            end.event_type() == EventType::PaymentCompleted,
            "{id}: {end:?}"
        );
    }
    let failed = w.pay("failed-1", "alice", "bob", "1000.00", "USD").await?;
    ensure!(
        failed.event_type() == EventType::PaymentFailed,
        "{failed:?}"
    );

    // A clean system: every payment compared, nothing disagrees.
    let stores = w.stores().await?;
    let recon = stores.get(Actor::Recon).context("recon db")?.clone();
    eventually(|| {
        let recon = recon.clone();
        async move {
            let rows = fact::Entity::find().count(&recon).await?;
            Ok((rows >= 6).then_some(()))
        }
    })
    .await
    .context("the facts of the six payments")?;
    compared(&w).await?;
    let clean = common::cli::json(&recon_cli(&w, &["--json", "recon"])?)?;
    ensure!(
        clean["open_count"] == 0,
        "a clean system shows mismatches: {clean}"
    );
    ensure!(
        !clean["runs"].as_array().context("runs")?.is_empty(),
        "{clean}"
    );
    let planted_at = chrono::Utc::now();

    // The provider's ledger changed under FalconPay.
    let (status, _) = p.post("/v1/charges/void-1/void", None).await?;
    ensure!(status == 200, "void: {status}");
    let ledger =
        sea_orm::Database::connect(format!("sqlite://{}?mode=rw", p.ledger().display())).await?;
    ledger
        .execute_unprepared(
            "UPDATE charges SET amount_minor = 130, rev = (SELECT MAX(rev) + 1 FROM charges) WHERE key = 'amount-1'",
        )
        .await?;
    ledger.close().await?;
    // A foreign charge, and a standing charge for the failed payment.
    for (key, minor) in [("ghost-1", 500), ("failed-1", 100_000)] {
        let (status, body) = p
            .post(
                "/v1/charges",
                Some(json!({"key": key, "amount_minor": minor, "currency": "USD"})),
            )
            .await?;
        ensure!(status == 201, "charging {key}: {status} {body}");
    }
    // Actors publishing what did not happen, each signed with its own key.
    let mut wrong = payment("wallet-1", "2.00")?;
    w.publish_event(&event(
        EventData::TransferCommitted(wrong.clone()),
        "falcon/wallet",
    ))
    .await?;
    wrong.payment_id = "stray-1".into();
    w.publish_event(&event(EventData::TransferCommitted(wrong), "falcon/wallet"))
        .await?;
    w.publish_event(&event(
        EventData::PaymentCompleted(payment("lonely-1", "3.00")?),
        "falcon/payment",
    ))
    .await?;
    w.publish_event(&event(
        EventData::PaymentRefunded(RefundData {
            refund_id: "rf-1".into(),
            payment_id: "refund-1".into(),
            from_wallet: "alice".into(),
            to_wallet: "bob".into(),
            amount: "0.50".parse()?,
            currency: usd(),
            principal: Some("client".into()),
        }),
        "falcon/payment",
    ))
    .await?;

    let expected: BTreeSet<(&str, &str, i64)> = [
        ("void-1", "provider_missing", 125),
        ("amount-1", "provider_amount", 5),
        ("ghost-1", "provider_unexpected", 500),
        ("failed-1", "provider_unexpected", 100_000),
        ("wallet-1", "wallet_amount", 75),
        ("stray-1", "wallet_unexpected", 200),
        ("lonely-1", "wallet_missing", 300),
        ("lonely-1", "provider_missing", 300),
        ("refund-1", "refund_differs", 50),
    ]
    .into_iter()
    .collect();
    // Each is published once, as falcon.evt.recon.mismatch.<key>.
    let mut events = Box::pin(
        falcon_nats::read::watch(
            &w.js,
            falcon_schemas::subject::STREAM_EVT,
            "falcon.evt.recon.mismatch.>",
        )
        .await?,
    );
    let mut seen = BTreeSet::new();
    let mut actions = Vec::new();
    tokio::time::timeout(common::DEADLINE, async {
        while seen.len() < expected.len() {
            let Some(stored) = events.next().await else {
                break;
            };
            let stored = stored?;
            let e = Event::decode(&stored.payload)?;
            let EventData::ReconMismatch(m) = e.data else {
                anyhow::bail!("not a mismatch: {e:?}")
            };
            ensure!(stored.subject == format!("falcon.evt.recon.mismatch.{}", m.key));
            let key = expected
                .iter()
                .find(|(k, kind, _)| *k == m.key && *kind == m.kind.as_str())
                .with_context(|| format!("an unexpected mismatch: {m:?}"))?;
            ensure!(m.difference_minor == key.2, "{m:?}");
            ensure!(
                seen.insert((m.key.clone(), m.kind)),
                "published twice: {m:?}"
            );
            if m.action.is_some() {
                actions.push((m.key.clone(), m.action.clone()));
            }
        }
        Ok(())
    })
    .await
    .with_context(|| format!("mismatches seen: {seen:?}"))??;
    ensure!(
        actions == [("failed-1".to_owned(), Some("voided".to_owned()))],
        "{actions:?}"
    );
    // The standing charge for the failed payment was voided.
    let record = p.record("failed-1").await?.context("its record")?;
    ensure!(record["status"] == "voided", "{record}");

    // `falcon recon` lists every one still open (the voided one is
    // settled), and good-1 nowhere.
    compared(&w).await?;
    let report = common::cli::json(&recon_cli(&w, &["--json", "recon"])?)?;
    let open: BTreeSet<(String, String)> = report["open"]
        .as_array()
        .context("open")?
        .iter()
        .map(|o| {
            (
                o["key"].as_str().unwrap_or_default().to_owned(),
                o["kind"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let want: BTreeSet<(String, String)> = expected
        .iter()
        .filter(|(k, _, _)| *k != "failed-1")
        .map(|(k, kind, _)| ((*k).to_owned(), (*kind).to_owned()))
        .collect();
    ensure!(open == want, "open {open:?}, expected {want:?}: {report}");
    ensure!(report["open_count"] == want.len(), "{report}");
    let text = recon_cli(&w, &["recon"])?;
    let text = String::from_utf8_lossy(&text.stdout);
    ensure!(text.contains("OPEN provider_missing void-1"), "{text}");
    ensure!(
        text.contains(&format!("open mismatches: {}", want.len())),
        "{text}"
    );

    // Reported promptly: each was opened by one of the first runs that
    // could see it (a provider change is read by one run, then quiet for
    // settle_s, then compared by the next).
    let runs = run::Entity::find()
        .filter(run::Column::StartedAt.gt(planted_at))
        .all(&recon)
        .await?;
    let mismatches = falcon_recon::entity::mismatch::Entity::find()
        .all(&recon)
        .await?;
    let most = usize::try_from(SETTLE_S / INTERVAL_S)? + 3;
    for m in &mismatches {
        let before = runs.iter().filter(|r| r.started_at < m.opened_at).count();
        ensure!(
            before <= most,
            "{} {} was opened after {before} runs",
            m.key,
            m.kind
        );
    }
    p.stop().await
}
