//! Data that lasts: inbox and outbox rows are pruned past their retention,
//! and a copy of a command arriving after that (a client retrying past the
//! broker's duplicate window) still has no second effect: its business key
//! catches it.

mod common;

use anyhow::{ensure, Context, Result};
use common::{eventually, Backend, World};
use falcon_kernel::prune::{prune, Pruned};
use falcon_kernel::settings::RetentionSettings;
use falcon_kernel::store::{inbox, outbox};
use falcon_runtime::invariants;
use falcon_sagas::Actor;
use sea_orm::{EntityTrait, PaginatorTrait};

backend_tests!(a_command_copied_after_pruning_has_no_second_effect);

/// Opens, deposits, pays; prunes every database as a day from now would;
/// then publishes each command again (a new message id: the broker stores
/// it, as it would past its window) and sees the balances, the payments and
/// the invariants unchanged.
async fn a_command_copied_after_pruning_has_no_second_effect(b: Backend) -> Result<()> {
    let w = World::new(b).await?;
    let rt = w.start().await?;
    let open = |id: &str| serde_json::json!({"wallet_id": id, "owner": format!("owner of {id}"), "currency": "USD"});
    let deposit = serde_json::json!({"wallet_id": "ada", "amount": "50.00", "currency": "USD", "reference": "dep-1"});
    let pay = World::pay_body("p-1", "ada", "bob", "20.00", "USD");
    let commands = [
        ("wallet.open", open("ada")),
        ("wallet.open", open("bob")),
        ("wallet.deposit", deposit),
        ("payment.create", pay),
    ];
    for (name, body) in &commands[..3] {
        w.command(name, body.clone()).await?;
    }
    w.wait_event("falcon.evt.wallet.deposited.ada", |_| true)
        .await?;
    w.command(commands[3].0, commands[3].1.clone()).await?;
    let end = w.wait_terminal("p-1").await?;
    ensure!(
        matches!(end.data, falcon_schemas::EventData::PaymentCompleted(_)),
        "{end:?}"
    );
    let balances = || async {
        Ok::<_, anyhow::Error>((
            w.balance("ada").await?.balance_minor,
            w.balance("bob").await?.balance_minor,
        ))
    };
    ensure!(balances().await? == (3_000, 2_000));

    // A day later: every inbox row and every published outbox row is past
    // its retention.
    let stores = w.stores().await?;
    let later = chrono::Utc::now() + chrono::Duration::days(2);
    let retention = RetentionSettings::default();
    let pruned = std::cell::Cell::new(Pruned::default());
    for (_, db) in stores.each() {
        // The relay may still be publishing the last events: until every
        // outbox row is published and pruned.
        eventually(|| async {
            let p = prune(db, &retention, later).await?;
            let mut sum = pruned.get();
            sum.inbox += p.inbox;
            sum.outbox += p.outbox;
            pruned.set(sum);
            let left =
                inbox::Entity::find().count(db).await? + outbox::Entity::find().count(db).await?;
            Ok((left == 0).then_some(()))
        })
        .await
        .context("the inbox and outbox were not emptied")?;
    }
    let pruned = pruned.get();
    ensure!(pruned.inbox > 10 && pruned.outbox > 5, "{pruned:?}");

    // Every command again, as a client retrying long after.
    for (name, body) in &commands {
        w.command(name, body.clone()).await?;
    }
    // Commands are read unpartitioned, by one durable each.
    for durable in ["wallet-cmd", "payment-cmd"] {
        eventually(|| async {
            let info =
                w.js.get_stream("FALCON_CMD")
                    .await?
                    .consumer_info(durable)
                    .await?;
            Ok((info.num_pending == 0 && info.num_ack_pending == 0).then_some(()))
        })
        .await?;
    }
    for consumer in ["payment-evt", "risk-evt", "wallet-evt"] {
        w.wait_consumer_idle("FALCON_EVT", consumer).await?;
    }
    ensure!(
        balances().await? == (3_000, 2_000),
        "a copy after pruning moved money"
    );
    let payments = stores.get(Actor::Payment).context("payment db")?;
    ensure!(
        falcon_payment::entity::payment::Entity::find()
            .count(payments)
            .await?
            == 1
    );
    // The money invariants of the databases (the stream check of every
    // acked message's inbox row is bounded by the retention, which the
    // test's clock has jumped past).
    let report = eventually(|| async {
        let report = invariants::check(&stores, true).await?;
        Ok(report.ok().then_some(report))
    })
    .await
    .context("money invariants")?;
    ensure!(report.ok(), "{:?}", report.violations);
    rt.shutdown().await;
    Ok(())
}
