//! The invariant checker catches what it claims to: each kind of violation
//! is planted in real databases and must be reported.

mod common;

use anyhow::{Context, Result};
use common::{Backend, World};
use falcon_runtime::invariants;
use falcon_sagas::Actor;
use sea_orm::{ConnectionTrait, DatabaseConnection};

async fn exec(db: &DatabaseConnection, sql: &str) -> Result<()> {
    db.execute_unprepared(sql)
        .await
        .with_context(|| sql.to_owned())?;
    Ok(())
}

async fn codes(w: &World) -> Result<Vec<&'static str>> {
    let report = invariants::check(&w.stores().await?, true).await?;
    Ok(report.violations.iter().map(|v| v.code).collect())
}

async fn planted(b: Backend) -> Result<()> {
    let sqlite = matches!(b, Backend::Sqlite);
    let w = World::new(b).await?;
    let rt = w.start().await?;
    w.open_wallet("alice", "USD").await?;
    w.open_wallet("bob", "USD").await?;
    w.deposit("alice", "100.00", "USD").await?;
    w.pay("ok", "alice", "bob", "10.00", "USD").await?;
    w.pay("no", "alice", "bob", "1000.00", "USD").await?;
    w.assert_invariants().await?;
    rt.shutdown().await;
    assert!(codes(&w).await?.is_empty(), "a clean run has no violation");

    let stores = w.stores().await?;
    let wallet = stores.get(Actor::Wallet).context("wallet db")?;
    let payment = stores.get(Actor::Payment).context("payment db")?;
    let now = "'2026-01-01 00:00:00+00:00'";

    // 1: a one-sided entry unbalances its movement, the ledger, and bob's balance.
    exec(wallet, &format!("INSERT INTO ledger_entries (movement_id, account, amount_minor, currency, created_at) VALUES ('transfer:ok', 'bob', 1, 'USD', {now})")).await?;
    let c = codes(&w).await?;
    for code in [
        "ledger_unbalanced",
        "movement_unbalanced",
        "balance_mismatch",
        "movement_repeated",
    ] {
        assert!(c.contains(&code), "{code} not caught: {c:?}");
    }
    exec(wallet, "DELETE FROM ledger_entries WHERE amount_minor = 1").await?;
    assert!(codes(&w).await?.is_empty());

    // 2: more held than owned, and a held amount no hold explains. The
    // database itself refuses it; with its checks dropped (a bug, a manual
    // fix gone wrong), verify still catches it.
    let overdraw = "UPDATE wallets SET held_minor = balance_minor + 1 WHERE wallet_id = 'alice'";
    assert!(
        exec(wallet, overdraw).await.is_err(),
        "the wallet database let a wallet hold more than it has"
    );
    if sqlite {
        exec(wallet, "DROP TRIGGER wallets_checks_update").await?;
    } else {
        exec(
            wallet,
            "ALTER TABLE wallets DROP CONSTRAINT wallets_available_not_negative",
        )
        .await?;
    }
    exec(wallet, overdraw).await?;
    let c = codes(&w).await?;
    assert!(
        c.contains(&"available_negative") && c.contains(&"held_mismatch"),
        "{c:?}"
    );
    exec(
        wallet,
        "UPDATE wallets SET held_minor = 0 WHERE wallet_id = 'alice'",
    )
    .await?;

    // 3 and 4: a failed payment that claims completion; a hold left open.
    exec(
        payment,
        "UPDATE payments SET state = 'completed' WHERE payment_id = 'no'",
    )
    .await?;
    assert!(codes(&w).await?.contains(&"completed_without_transfer"));
    exec(
        payment,
        "UPDATE payments SET state = 'failed' WHERE payment_id = 'no'",
    )
    .await?;
    exec(
        wallet,
        "UPDATE holds SET state = 'reserved' WHERE payment_id = 'no'",
    )
    .await?;
    let c = codes(&w).await?;
    assert!(
        c.contains(&"hold_left_open") && c.contains(&"held_mismatch"),
        "{c:?}"
    );
    exec(
        wallet,
        "UPDATE holds SET state = 'declined' WHERE payment_id = 'no'",
    )
    .await?;
    exec(
        payment,
        "UPDATE payments SET state = 'requested' WHERE payment_id = 'no'",
    )
    .await?;
    assert!(codes(&w).await?.contains(&"payment_not_terminal"));
    exec(
        payment,
        "UPDATE payments SET state = 'failed' WHERE payment_id = 'no'",
    )
    .await?;

    // 5: a message acked by a consumer that has no record of processing it.
    let mut report = invariants::check(&w.stores().await?, true).await?;
    invariants::check_streams(&w.stores().await?, &w.settings, &w.js, &mut report).await?;
    assert!(report.ok(), "{:?}", report.violations);
    exec(wallet, "DELETE FROM inbox WHERE consumer = 'wallet-evt' AND msg_id = (SELECT MIN(msg_id) FROM inbox WHERE consumer = 'wallet-evt')").await?;
    let mut report = invariants::check(&w.stores().await?, true).await?;
    invariants::check_streams(&w.stores().await?, &w.settings, &w.js, &mut report).await?;
    let c: Vec<_> = report.violations.iter().map(|v| v.code).collect();
    assert_eq!(c, ["acked_without_effect"], "{:?}", report.violations);

    // 5: an event written but never published.
    exec(
        payment,
        "UPDATE outbox SET published_at = NULL WHERE id = (SELECT MAX(id) FROM outbox)",
    )
    .await?;
    assert!(codes(&w).await?.contains(&"outbox_unpublished"));
    Ok(())
}

backend_tests!(planted);
