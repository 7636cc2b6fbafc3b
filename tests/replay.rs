//! Replay: a stream range re-delivered to one actor is applied exactly
//! once; the saga view rebuilt from the saga history and FALCON_EVT gives
//! the same answer; and once the stream no longer holds a saga's events,
//! `saga show`, `saga list` and a rebuild answer from the history the
//! payment database kept.

mod common;

use anyhow::Result;
use common::cli::{falcon, json, ok};
use common::{eventually, Backend, World};
use falcon_nats::read::Start;
use falcon_payment::view;
use falcon_runtime::replay::{rebuild_saga_view, redeliver};
use falcon_runtime::Runtime;
use falcon_sagas::Actor;
use falcon_schemas::subject::STREAM_EVT;
use falcon_schemas::EventType;

backend_tests!(
    replayed_range_is_applied_exactly_once,
    rebuilt_saga_view_is_the_same,
    sagas_outlive_the_stream,
);

async fn replayed_range_is_applied_exactly_once(b: Backend) -> Result<()> {
    let w = World::new(b).await?;
    // The wallet actor is not running: its steps happen only by replay.
    let rt = Runtime::start(&w.settings, &[Actor::Payment, Actor::Risk]).await?;
    let wallet_only = Runtime::start(&w.settings, &[Actor::Wallet]).await?;
    w.open_wallet("alice", "USD").await?;
    w.open_wallet("bob", "USD").await?;
    w.deposit("alice", "100.00", "USD").await?;
    wallet_only.shutdown().await;
    w.command(
        "payment.create",
        World::pay_body("p1", "alice", "bob", "10.00", "USD"),
    )
    .await?;
    w.wait_event("falcon.evt.risk.approved.p1", |_| true)
        .await?;

    let first = redeliver(
        &w.settings,
        &w.js,
        Actor::Wallet,
        STREAM_EVT,
        Start::Seq(1),
        None,
    )
    .await?;
    assert!(first.failed.is_empty(), "{first:?}");
    assert_eq!(first.applied, 1, "the reservation: {first:?}");
    w.wait_event("falcon.evt.payment.captured.p1", |_| true)
        .await?;
    let second = redeliver(
        &w.settings,
        &w.js,
        Actor::Wallet,
        STREAM_EVT,
        Start::Seq(1),
        None,
    )
    .await?;
    assert_eq!(
        (second.applied, second.duplicates),
        (1, 1),
        "the commit, and the reservation again as a no-op: {second:?}"
    );
    assert_eq!(
        w.wait_terminal("p1").await?.event_type(),
        EventType::PaymentCompleted
    );

    // The wallet comes back: its durable consumer delivers everything again,
    // and its inbox turns all of it into no-ops.
    let wallet_again = Runtime::start(&w.settings, &[Actor::Wallet]).await?;
    w.wait_consumer_idle("FALCON_EVT", "wallet-evt").await?;
    let alice = w.balance("alice").await?;
    assert_eq!(
        (alice.balance.as_str(), alice.held.as_str()),
        ("90.00", "0.00"),
        "debited once"
    );
    w.assert_invariants().await?;
    rt.shutdown().await;
    wallet_again.shutdown().await;
    Ok(())
}

async fn rebuilt_saga_view_is_the_same(b: Backend) -> Result<()> {
    let w = World::new(b).await?;
    let rt = w.start().await?;
    w.open_wallet("alice", "USD").await?;
    w.open_wallet("bob", "USD").await?;
    w.deposit("alice", "100.00", "USD").await?;
    w.pay("ok", "alice", "bob", "40.00", "USD").await?;
    w.pay("poor", "alice", "bob", "500.00", "USD").await?;
    w.command(
        "payment.create",
        World::pay_body("bad", "alice", "bob", "1.001", "USD"),
    )
    .await?;
    w.wait_event("falcon.evt.payment.rejected.bad", |_| true)
        .await?;
    w.command(
        "payment.refund",
        serde_json::json!({"payment_id": "ok", "refund_id": "r1", "amount": "5.00"}),
    )
    .await?;
    w.wait_event("falcon.evt.payment.refunded.r1", |_| true)
        .await?;
    w.assert_invariants().await?;
    let stores = w.stores().await?;
    let db = stores.get(Actor::Payment).cloned().expect("payment store");
    // The live view catches up with the four sagas.
    let before = eventually(|| async {
        let rows = view::list(&db, None, None, 100).await?;
        Ok((rows.len() == 4 && rows.iter().all(|r| r.terminal)).then_some(rows))
    })
    .await?;
    let states: Vec<(&str, &str)> = before
        .iter()
        .map(|r| (r.saga_id.as_str(), r.state.as_str()))
        .collect();
    for expected in [
        ("ok", "completed"),
        ("poor", "failed"),
        ("bad", "rejected"),
        ("r1", "refunded"),
    ] {
        assert!(states.contains(&expected), "{states:?}");
    }
    // Live consumption: a rebuild is refused.
    assert!(rebuild_saga_view(&w.settings, &w.js, false).await.is_err());
    rt.shutdown().await;
    let (report, sagas) = rebuild_saga_view(&w.settings, &w.js, true).await?;
    assert!(report.failed.is_empty(), "{report:?}");
    assert_eq!(sagas, 4);
    let after = view::list(&db, None, None, 100).await?;
    assert_eq!(before, after, "the same answer from FALCON_EVT alone");
    // The same through the CLI.
    let dir = tempfile::tempdir()?;
    let out = json(&ok(falcon(
        &w,
        dir.path(),
        &["--json", "replay", "--rebuild", "saga-view", "--force"],
    )?)?)?;
    assert_eq!(out["sagas"], 4);
    let unknown = falcon(&w, dir.path(), &["replay", "--rebuild", "ledger"])?;
    assert!(!unknown.status.success());
    let ranged = json(&ok(falcon(
        &w,
        dir.path(),
        &["--json", "replay", "--actor", "risk", "--from-seq", "1"],
    )?)?)?;
    assert_eq!(
        ranged["applied"], 0,
        "risk had processed everything: {ranged}"
    );
    assert_eq!(view::list(&db, None, None, 100).await?, before);
    Ok(())
}

/// The stream ages out: the same databases under a broker whose FALCON_EVT
/// holds nothing (a fresh server, as after the retention passed). `saga
/// show` gives each saga's whole timeline from the kept history, a rebuild
/// of the saga view folds it back, and `saga list` answers for every saga.
async fn sagas_outlive_the_stream(b: Backend) -> Result<()> {
    let w = World::new(b).await?;
    let rt = w.start().await?;
    w.open_wallet("alice", "USD").await?;
    w.open_wallet("bob", "USD").await?;
    w.deposit("alice", "100.00", "USD").await?;
    let ok_end = w.pay("ok", "alice", "bob", "10.00", "USD").await?;
    assert_eq!(ok_end.event_type(), EventType::PaymentCompleted);
    let poor = w.pay("poor", "alice", "bob", "500.00", "USD").await?;
    assert_eq!(poor.event_type(), EventType::PaymentFailed);
    w.wait_consumer_idle(STREAM_EVT, view::CONSUMER).await?;
    let dir = tempfile::tempdir()?;
    let live: Vec<serde_json::Value> = ["ok", "poor"]
        .iter()
        .map(|id| {
            json(&ok(falcon(
                &w,
                dir.path(),
                &["--json", "saga", "show", id],
            )?)?)
        })
        .collect::<Result<_>>()?;
    let live_list = json(&ok(falcon(&w, dir.path(), &["--json", "saga", "list"])?)?)?;
    rt.shutdown().await;

    let aged = common::NatsServer::start_with(common::NatsOptions {
        auth: Some(w.keys.path().join(falcon_runtime::auth::SERVER_CONF)),
        ..Default::default()
    })
    .await?;
    let on_aged = |args: &[&str]| -> Result<std::process::Output> {
        Ok(common::cli::command(&w, dir.path())
            .env("FALCON__NATS__URL", aged.url())
            .args(args)
            .output()?)
    };
    ok(on_aged(&["--as", "provisioning", "streams", "apply"])?)?;
    for (id, before) in ["ok", "poor"].iter().zip(&live) {
        let after = json(&ok(on_aged(&["--json", "saga", "show", id])?)?)?;
        let ids = |t: &serde_json::Value| -> Vec<serde_json::Value> {
            t["steps"]
                .as_array()
                .map(|s| s.iter().map(|e| e["event_id"].clone()).collect())
                .unwrap_or_default()
        };
        assert!(!ids(before).is_empty(), "{before}");
        assert_eq!(ids(&after), ids(before), "{id}: {after}");
        assert_eq!(after["state"], before["state"], "{id}");
    }
    let rebuilt = json(&ok(on_aged(&[
        "--json",
        "replay",
        "--rebuild",
        "saga-view",
        "--force",
    ])?)?)?;
    assert_eq!(
        rebuilt["sagas"],
        live_list.as_array().map_or(0, Vec::len),
        "{rebuilt}"
    );
    let list = json(&ok(on_aged(&["--json", "saga", "list"])?)?)?;
    assert_eq!(list, live_list, "the sagas after the stream aged out");
    Ok(())
}
