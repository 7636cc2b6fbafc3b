//! The payment actor against a provider of its own: `falcon-provider`, a
//! real process with its own durable ledger, reached over HTTP. Money must
//! agree with the provider to the minor unit: every completed payment
//! charged once, nothing charged for a payment that failed, through
//! outages longer than the saga deadline and answers lost after charging.

mod common;

use std::collections::HashMap;

use anyhow::{ensure, Context, Result};
use common::provider::Provider;
use common::{eventually, Backend, World};
use falcon_schemas::{Event, EventData};
use serde_json::{json, Value};

backend_tests!(
    an_outage_longer_than_the_deadline_charges_exactly_the_completed_payments,
    answers_lost_after_charging_are_found_by_key,
);

/// Settings for the payment actor to use `p`, with a short deadline and a
/// short doubt so that a test outlasts both.
fn against(p: &Provider) -> impl FnOnce(&mut falcon_runtime::Settings) + '_ {
    move |s| {
        s.provider.url = p.url.clone();
        s.provider.api_key_file = p.api_key_file.clone();
        s.provider.timeout_ms = 400;
        s.provider.retry_attempts_max = 1;
        s.provider.breaker_failures_max = 100_000;
        s.saga.deadline_s = 2;
        s.saga.capture_doubt_s = 1;
        s.saga.sweep_interval_ms = 100;
    }
}

/// Every completed payment is charged at the provider for its amount, no
/// failed one has a standing charge, and the provider's totals are the sum
/// of the completed payments, to the minor unit. Returns how many completed.
async fn money_agrees(p: &Provider, terminal: &HashMap<String, Event>) -> Result<usize> {
    let mut completed = 0;
    let mut completed_minor = 0;
    for (id, end) in terminal {
        let record = p.record(id).await?;
        let status = record
            .as_ref()
            .map(|r| r["status"].as_str().unwrap_or_default().to_owned());
        match &end.data {
            EventData::PaymentCompleted(done) => {
                completed += 1;
                let minor = falcon_schemas::Money::new(done.amount, done.currency)
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?
                    .minor();
                completed_minor += minor;
                ensure!(
                    status.as_deref() == Some("charged"),
                    "{id} completed, provider: {record:?}"
                );
                let charged = record.as_ref().and_then(|r| r["amount_minor"].as_i64());
                ensure!(
                    charged == Some(minor),
                    "{id}: completed for {minor}, charged {charged:?}"
                );
            }
            _ => ensure!(
                status.as_deref() != Some("charged"),
                "{id} failed ({end:?}), yet the provider charged it: {record:?}"
            ),
        }
    }
    let (count, minor) = p.charged().await?;
    ensure!(
        (count, minor) == (i64::try_from(completed)?, completed_minor),
        "the provider charged {count} for {minor}; {completed} completed for {completed_minor}"
    );
    Ok(completed)
}

/// The provider goes down while payments are in flight and stays down past
/// their deadline and past the time a capture is in doubt (the payment
/// actor asks it to close a key in doubt and is refused). Nothing is guessed
/// meanwhile: a payment marked capturing waits. When the provider is back,
/// every payment ends, and the provider's charges are exactly the
/// completed payments.
async fn an_outage_longer_than_the_deadline_charges_exactly_the_completed_payments(
    b: Backend,
) -> Result<()> {
    let p = Provider::start().await?;
    let w = World::with(b, against(&p)).await?;
    let rt = w.start().await?;
    w.open_wallet("alice", "USD").await?;
    w.open_wallet("bob", "USD").await?;
    w.deposit("alice", "100.00", "USD").await?;

    p.faults(json!({"outage": true})).await?;
    let bodies: Vec<Value> = (0..12)
        .map(|i| World::pay_body(&format!("out-{i}"), "alice", "bob", "1.25", "USD"))
        .collect();
    let (client, js) = (w.client.clone(), w.js.clone());
    let paying = tokio::spawn(async move { common::pay_many(&client, &js, &bodies).await });

    // Captures marked and past their deadline and the doubt, while the
    // provider is still out.
    let stores = w.stores().await?;
    let payments = stores
        .get(falcon_sagas::Actor::Payment)
        .context("payment db")?;
    eventually(|| async {
        use falcon_payment::entity::payment;
        use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
        let past = chrono::Utc::now() - chrono::Duration::seconds(1);
        let in_doubt = payment::Entity::find()
            .filter(payment::Column::CaptureStartedAt.lt(past))
            .filter(payment::Column::SettlementId.is_null())
            .filter(payment::Column::DeadlineAt.lt(past))
            .filter(payment::Column::Reason.is_null())
            .count(payments)
            .await?;
        Ok((in_doubt > 0).then_some(()))
    })
    .await
    .context("no capture in doubt past its deadline")?;
    // And then the payment actor asked the provider to close a key in
    // doubt, and was refused.
    let refused = |stats: &Value| stats["refused_in_outage"]["close"].as_u64().unwrap_or(0);
    let before = refused(&p.stats().await?);
    eventually(|| async { Ok((refused(&p.stats().await?) > before).then_some(())) })
        .await
        .context("no capture in doubt was asked for while the provider was out")?;

    p.faults(json!({"outage": false})).await?;
    let terminal = paying.await??;
    ensure!(terminal.len() == 12, "{} of 12 ended", terminal.len());
    let completed = money_agrees(&p, &terminal).await?;
    let report = w.assert_invariants().await?;
    let alice = w.balance("alice").await?;
    let bob = w.balance("bob").await?;
    let paid = i64::try_from(completed)? * 125;
    ensure!(
        (alice.balance_minor, alice.held_minor, bob.balance_minor) == (10_000 - paid, 0, paid),
        "alice {alice:?}, bob {bob:?}, {completed} completed; {report:?}"
    );
    rt.shutdown().await;
    p.stop().await
}

/// Every charge hangs past the client's timeout after it is committed (the
/// answer is lost, the charge stands), and a third are declined. The
/// payment actor asks the provider by key, so every payment ends at once,
/// each charged once, and the provider's charges are the completed
/// payments.
async fn answers_lost_after_charging_are_found_by_key(b: Backend) -> Result<()> {
    let p = Provider::start().await?;
    let w = World::with(b, against(&p)).await?;
    p.faults(json!({"hang_after_charge_bps": 10_000, "hang_ms": 20_000, "decline_bps": 3_300}))
        .await?;
    let rt = w.start().await?;
    w.open_wallet("alice", "USD").await?;
    w.open_wallet("bob", "USD").await?;
    w.deposit("alice", "100.00", "USD").await?;
    let bodies: Vec<Value> = (0..9)
        .map(|i| World::pay_body(&format!("lost-{i}"), "alice", "bob", "2.00", "USD"))
        .collect();
    let terminal = w.pay_many(&bodies).await?;
    ensure!(terminal.len() == 9, "{} of 9 ended", terminal.len());
    let completed = money_agrees(&p, &terminal).await?;
    let declined = terminal
        .values()
        .filter(|e| matches!(&e.data, EventData::PaymentFailed(f) if f.reason == falcon_schemas::Reason::CaptureDeclined))
        .count();
    ensure!(
        completed + declined == 9,
        "{completed} completed, {declined} declined"
    );
    ensure!(completed > 0, "nothing charged: the hang was never met");
    let stats = p.stats().await?;
    ensure!(
        stats["requests"]["lookup"].as_u64().unwrap_or(0) >= u64::try_from(completed)?,
        "the lost answers were not asked for by key: {stats}"
    );
    w.assert_invariants().await?;
    rt.shutdown().await;
    p.stop().await
}
