//! Recovery: dead letters from exhausted deliveries (the consumer loop's
//! and JetStream's advisory), re-driven exactly once.

mod common;

use anyhow::{Context, Result};
use common::cli::{falcon, json, ok};
use common::{eventually, Backend, World};
use falcon_nats::dlq::{self, DeadLetter};
use falcon_runtime::dlq::{replay, Replay};
use falcon_runtime::runtime::FaultPoint;
use falcon_runtime::Runtime;
use falcon_sagas::Actor;
use falcon_schemas::EventType;

backend_tests!(
    dead_letter_replayed_after_the_cause_is_fixed,
    unacked_last_delivery_is_dead_lettered_and_replayed_once,
    deadline_leaves_a_capture_in_doubt_to_the_provider,
    deadline_before_reservation_blocks_a_late_hold,
    chaos_kill_through_the_control_subject,
    saga_view_dead_letters_go_back_to_the_saga_view,
);

/// The first dead letter of any partition's durable of `consumer` (as its
/// actor declares it: `payment-evt`).
async fn first_letter(w: &World, consumer: &str) -> Result<DeadLetter> {
    let durables = w.durables(consumer);
    eventually(|| async {
        let letters = dlq::list(&w.js, None).await?;
        Ok(letters
            .into_iter()
            .find(|l| durables.contains(&l.origin.consumer)))
    })
    .await
    .with_context(|| format!("no dead letter from {consumer}"))
}

async fn funded(w: &World) -> Result<()> {
    w.open_wallet("alice", "USD").await?;
    w.open_wallet("bob", "USD").await?;
    w.deposit("alice", "100.00", "USD").await
}

async fn dead_letter_replayed_after_the_cause_is_fixed(b: Backend) -> Result<()> {
    let w = World::with(b, |s| {
        s.consumer.max_deliver = 2;
        s.provider.transient_error_bps = 10_000;
        s.provider.retry_attempts_max = 1;
        s.provider.breaker_failures_max = 1_000;
    })
    .await?;
    let rt = w.start().await?;
    funded(&w).await?;
    w.command(
        "payment.create",
        World::pay_body("p1", "alice", "bob", "10.00", "USD"),
    )
    .await?;
    // The provider is down: the capture is retried, then dead-lettered with why.
    let letter = first_letter(&w, "payment-evt").await?;
    assert!(
        letter.error.contains("gave up after 2 deliveries")
            && letter.error.contains("provider unavailable"),
        "{}",
        letter.error
    );
    assert_eq!(letter.origin.subject, "falcon.evt.wallet.funds_reserved.p1");
    assert_eq!(
        w.balance("alice").await?.held,
        "10.00",
        "funds stay held while the saga waits"
    );
    let dir = tempfile::tempdir()?;
    let stuck = json(&ok(falcon(
        &w,
        dir.path(),
        &["--json", "saga", "stuck", "--older-than", "0s"],
    )?)?)?;
    assert_eq!(stuck.as_array().map(Vec::len), Some(1), "{stuck}");
    assert_eq!(
        (stuck[0]["saga_id"].as_str(), stuck[0]["state"].as_str()),
        (Some("p1"), Some("reserved"))
    );
    assert_eq!(stuck[0]["waits_on"]["actor"], "payment");
    let none = json(&ok(falcon(
        &w,
        dir.path(),
        &["--json", "saga", "stuck", "--older-than", "1h"],
    )?)?)?;
    assert_eq!(none.as_array().map(Vec::len), Some(0));
    // Still down: a redrive fails again and the dead letter stays.
    let again = replay(&w.settings, &w.js, &letter, false, &w.ring()?).await?;
    assert!(matches!(again, Replay::Failed { .. }), "{again:?}");
    assert_eq!(dlq::list(&w.js, None).await?.len(), 1);
    rt.shutdown().await;

    // The provider is back: the redrive captures and the saga completes.
    let mut fixed = w.settings.clone();
    fixed.provider.transient_error_bps = 0;
    let rt = Runtime::start(&fixed, &Actor::ALL).await?;
    let outcome = replay(&fixed, &w.js, &letter, false, &w.ring()?).await?;
    assert!(
        matches!(
            outcome,
            Replay::Replayed {
                actor: "payment",
                ..
            }
        ),
        "{outcome:?}"
    );
    assert_eq!(
        w.wait_terminal("p1").await?.event_type(),
        EventType::PaymentCompleted
    );
    assert!(
        dlq::list(&w.js, None).await?.is_empty(),
        "a replayed dead letter leaves the DLQ"
    );
    assert_eq!(w.balance("bob").await?.balance, "10.00");
    w.assert_invariants().await?;
    rt.shutdown().await;
    Ok(())
}

async fn unacked_last_delivery_is_dead_lettered_and_replayed_once(b: Backend) -> Result<()> {
    let w = World::with(b, |s| s.consumer.max_deliver = 2).await?;
    let rt = w.start().await?;
    funded(&w).await?;
    // The wallet commits the reservation, then dies before acking, on every
    // allowed delivery: JetStream's advisory fires and the watcher
    // dead-letters the message. The committed step's events still go out.
    // Both allowed deliveries of p1's approval die after their commit (the
    // second finds its inbox row and changes nothing).
    rt.faults().arm_for(
        Actor::Wallet,
        FaultPoint::AfterCommit,
        "risk.approved.p1",
        2,
    );
    assert_eq!(
        w.pay("p1", "alice", "bob", "10.00", "USD")
            .await?
            .event_type(),
        EventType::PaymentCompleted
    );
    let letter = first_letter(&w, "wallet-evt").await?;
    assert!(letter.error.contains("not acked"), "{}", letter.error);
    assert_eq!(letter.origin.subject, "falcon.evt.risk.approved.p1");

    let dir = tempfile::tempdir()?;
    let listed = json(&ok(falcon(&w, dir.path(), &["--json", "dlq", "list"])?)?)?;
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    let shown = json(&ok(falcon(
        &w,
        dir.path(),
        &["--json", "dlq", "show", &letter.seq.to_string()],
    )?)?)?;
    assert_eq!(shown["body"]["type"], "falcon.risk.approved.v1");

    // The saga is over: a redrive is refused unless forced, and when forced
    // the inbox makes it a no-op.
    let refused = falcon(&w, dir.path(), &["dlq", "replay", &letter.seq.to_string()])?;
    assert!(!refused.status.success());
    assert!(String::from_utf8(refused.stdout)?.contains("already completed"));
    let forced = json(&ok(falcon(
        &w,
        dir.path(),
        &["--json", "dlq", "replay", "--all", "--force"],
    )?)?)?;
    assert_eq!(forced[0]["outcome"], "already_processed", "{forced}");
    assert!(dlq::list(&w.js, None).await?.is_empty());
    let alice = w.balance("alice").await?;
    assert_eq!(
        (alice.balance.as_str(), alice.held.as_str()),
        ("90.00", "0.00"),
        "debited once"
    );
    let purge = falcon(&w, dir.path(), &["dlq", "purge"])?;
    assert!(!purge.status.success(), "purge wants --yes");
    ok(falcon(&w, dir.path(), &["dlq", "purge", "--yes"])?)?;
    w.assert_invariants().await?;
    rt.shutdown().await;
    Ok(())
}

fn failure(e: &falcon_schemas::Event) -> Option<(falcon_schemas::Reason, bool)> {
    match &e.data {
        falcon_schemas::EventData::PaymentFailed(f) => Some((f.reason, f.compensated)),
        _ => None,
    }
}

/// The provider is down when the funds are reserved: the capture is asked
/// (the payment marked capturing first), retried, dead-lettered, and the
/// process that started the saga goes away. The deadline passes, yet no
/// sweeper compensates the saga (a charge may exist: the funds stay held);
/// once the provider is back, the redriven dead letter asks it again by the
/// payment id and the saga completes, the money moved once.
async fn deadline_leaves_a_capture_in_doubt_to_the_provider(b: Backend) -> Result<()> {
    let w = World::with(b, |s| {
        s.saga.deadline_s = 1;
        s.saga.sweep_interval_ms = 100;
        s.consumer.max_deliver = 2;
        s.provider.transient_error_bps = 10_000;
        s.provider.retry_attempts_max = 1;
        s.provider.breaker_failures_max = 1_000;
    })
    .await?;
    let owner = w.start().await?;
    funded(&w).await?;
    w.command(
        "payment.create",
        World::pay_body("p1", "alice", "bob", "10.00", "USD"),
    )
    .await?;
    let letter = first_letter(&w, "payment-evt").await?;
    assert_eq!(letter.origin.subject, "falcon.evt.wallet.funds_reserved.p1");
    owner.shutdown().await;

    // Another process, and a sweep a day past the deadline: nothing to
    // compensate.
    let heir = w.start().await?;
    let stores = w.stores().await?;
    let payments = stores.get(Actor::Payment).context("the payment database")?;
    let late = chrono::Utc::now() + chrono::Duration::days(1);
    assert_eq!(
        falcon_payment::deadline::sweep(payments, late, 100).await?,
        0
    );
    assert_eq!(
        w.balance("alice").await?.held,
        "10.00",
        "the funds stay held while the capture is in doubt"
    );
    heir.shutdown().await;

    let mut fixed = w.settings.clone();
    fixed.provider.transient_error_bps = 0;
    let rt = Runtime::start(&fixed, &Actor::ALL).await?;
    let outcome = replay(&fixed, &w.js, &letter, false, &w.ring()?).await?;
    assert!(matches!(outcome, Replay::Replayed { .. }), "{outcome:?}");
    assert_eq!(
        w.wait_terminal("p1").await?.event_type(),
        EventType::PaymentCompleted
    );
    let alice = w.balance("alice").await?;
    assert_eq!(
        (alice.balance.as_str(), alice.held.as_str()),
        ("90.00", "0.00")
    );
    w.assert_invariants().await?;
    rt.shutdown().await;
    Ok(())
}

async fn deadline_before_reservation_blocks_a_late_hold(b: Backend) -> Result<()> {
    let w = World::with(b, |s| {
        s.saga.deadline_s = 1;
        s.saga.sweep_interval_ms = 100;
    })
    .await?;
    // Risk is down: the saga cannot get past its first step.
    let rt = Runtime::start(&w.settings, &[Actor::Payment, Actor::Wallet]).await?;
    funded(&w).await?;
    let end = w.pay("p1", "alice", "bob", "10.00", "USD").await?;
    assert_eq!(
        failure(&end),
        Some((falcon_schemas::Reason::DeadlineExceeded, true)),
        "{end:?}"
    );
    // Risk comes back and approves the old request: the wallet must not hold
    // funds for a saga that is over.
    let risk = Runtime::start(&w.settings, &[Actor::Risk]).await?;
    w.wait_event("falcon.evt.risk.approved.p1", |_| true)
        .await?;
    w.wait_consumer_idle("FALCON_EVT", "wallet-evt").await?;
    let alice = w.balance("alice").await?;
    assert_eq!(
        (alice.balance.as_str(), alice.held.as_str()),
        ("100.00", "0.00")
    );
    w.assert_invariants().await?;
    rt.shutdown().await;
    risk.shutdown().await;
    Ok(())
}

async fn chaos_kill_through_the_control_subject(b: Backend) -> Result<()> {
    let w = World::with(b, |s| s.chaos.enabled = true).await?;
    let rt = w.start().await?;
    funded(&w).await?;
    let dir = tempfile::tempdir()?;
    for actor in ["wallet", "payment-relay", "any"] {
        let killed = json(&ok(falcon(
            &w,
            dir.path(),
            &["--json", "chaos", "kill", actor],
        )?)?)?;
        assert!(killed["killed"].as_str().is_some(), "{killed}");
    }
    tokio::time::timeout(common::DEADLINE, rt.stats().wait_restarts(3)).await?;
    let unknown = falcon(&w, dir.path(), &["chaos", "kill", "ledger"])?;
    assert!(!unknown.status.success());
    assert_eq!(
        w.pay("p1", "alice", "bob", "10.00", "USD")
            .await?
            .event_type(),
        EventType::PaymentCompleted
    );
    w.assert_invariants().await?;
    rt.shutdown().await;
    // Disabled (the default): nobody answers.
    let off = World::new(Backend::Sqlite).await?;
    let rt = off.start().await?;
    let refused = falcon(&off, dir.path(), &["chaos", "kill", "wallet"])?;
    assert!(!refused.status.success());
    assert!(String::from_utf8(refused.stderr)?.contains("chaos.enabled"));
    rt.shutdown().await;
    Ok(())
}

/// A dead letter of the saga view's consumer is re-driven through the saga
/// view, not through the payment actor's steps (which share its database
/// and its consumer name's prefix): the view loses a saga's row and its
/// inbox records, every one of the saga's events is dead-lettered from
/// `payment-view`, and re-driving them rebuilds the row.
async fn saga_view_dead_letters_go_back_to_the_saga_view(b: Backend) -> Result<()> {
    use falcon_nats::read::{RangeReader, Start};
    use falcon_payment::view;
    use falcon_runtime::stores::open_store;
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

    let w = World::new(b).await?;
    let rt = w.start().await?;
    funded(&w).await?;
    assert_eq!(
        w.pay("p1", "alice", "bob", "10.00", "USD")
            .await?
            .event_type(),
        EventType::PaymentCompleted
    );
    let db = open_store(Actor::Payment, &w.settings).await?;
    let completed = || async {
        let rows = view::list(&db, Some("completed"), None, 10).await?;
        Ok(rows.into_iter().find(|r| r.saga_id == "p1"))
    };
    eventually(completed).await?;
    rt.shutdown().await;

    // The view forgets the saga, and every one of its events is a dead letter
    // of `payment-view`.
    view::saga_view::Entity::delete_by_id("p1".to_owned())
        .exec(&db)
        .await?;
    let mut reader = RangeReader::open(
        &w.js,
        falcon_schemas::subject::STREAM_EVT,
        falcon_schemas::subject::stored_filters(&["falcon.evt.*.*.p1".to_owned()]),
        Start::All,
        None,
    )
    .await?;
    let stored = reader.next_page(100).await?;
    reader.close().await;
    assert!(stored.len() >= 6, "the saga's events: {}", stored.len());
    for m in &stored {
        let msg_id = m
            .headers
            .as_ref()
            .and_then(|h| h.get(falcon_schemas::subject::HEADER_MSG_ID))
            .map(|v| v.as_str().to_owned());
        falcon_kernel::store::inbox::Entity::delete_many()
            .filter(falcon_kernel::store::inbox::Column::Consumer.eq(view::CONSUMER))
            .filter(falcon_kernel::store::inbox::Column::StreamSeq.eq(i64::try_from(m.stream_seq)?))
            .exec(&db)
            .await?;
        let origin = dlq::Origin {
            subject: m.subject.clone(),
            stream: falcon_schemas::subject::STREAM_EVT.to_owned(),
            stream_seq: m.stream_seq,
            consumer: w.durable(view::CONSUMER, "p1"),
            delivered: 10,
            msg_id,
            traceparent: None,
        };
        // Dead letters of payment-view are the payment actor's to write.
        let payment = w.connect_as("payment").await?;
        dlq::dead_letter(
            &payment,
            &origin,
            m.payload.clone(),
            "the view's step failed",
        )
        .await?;
    }
    let letters = dlq::list(&w.js, None).await?;
    assert_eq!(letters.len(), stored.len());
    // The saga is over: forced, each letter is applied by the view once.
    for letter in &letters {
        let outcome = replay(&w.settings, &w.js, letter, true, &w.ring()?).await?;
        assert!(
            matches!(
                outcome,
                Replay::Replayed {
                    actor: "payment",
                    ..
                }
            ),
            "{outcome:?}"
        );
    }
    let row = completed().await?.context("the view's row is rebuilt")?;
    assert!(row.terminal && row.anomalies == 0, "{row:?}");
    assert!(dlq::list(&w.js, None).await?.is_empty());
    w.assert_invariants().await?;
    Ok(())
}
