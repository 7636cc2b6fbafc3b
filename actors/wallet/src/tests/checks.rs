//! What the database itself guarantees, on a SQLite file and (when
//! `FALCON_TEST_DATABASE_URL` is set) on PostgreSQL: a statement that would
//! leave a wallet with a negative held amount or available balance is
//! refused, whoever writes it; and the migrations that add who owns a
//! wallet and how much of a transfer was refunded back-fill a database
//! from before them.

use chrono::Utc;
use sea_orm::sea_query::{Alias, Expr, Query};
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, Set};
use sea_orm_migration::MigratorTrait;

use super::backend::{backends, empty, migrated, Fresh};
use super::*;
use crate::RefundState;

/// Sets wallet `a`'s balance and held amount directly, as a bug or an
/// operator's SQL would.
async fn set_wallet(db: &DatabaseConnection, balance: i64, held: i64) -> Result<(), DbErr> {
    wallet::Entity::update_many()
        .col_expr(wallet::Column::BalanceMinor, Expr::value(balance))
        .col_expr(wallet::Column::HeldMinor, Expr::value(held))
        .filter(wallet::Column::WalletId.eq("a"))
        .exec(db)
        .await
        .map(drop)
}

fn new_wallet(id: &str, balance: i64, held: i64) -> wallet::ActiveModel {
    wallet::ActiveModel {
        wallet_id: Set(id.into()),
        owner: Set("o".into()),
        principal: Set(OWNER.into()),
        currency: Set("USD".into()),
        balance_minor: Set(balance),
        held_minor: Set(held),
        created_at: Set(Utc::now()),
        updated_at: Set(Utc::now()),
    }
}

#[tokio::test]
async fn the_database_refuses_a_wallet_below_zero() {
    for backend in backends() {
        let fresh = migrated(&backend).await;
        let db = &fresh.db;
        let setup = [open("a", OWNER, usd()), deposit("a", 100, usd(), "d-a")];
        assert!(one_by_one(db, &setup).await.iter().all(Result::is_ok));
        let on = fresh.backend;
        for (balance, held) in [(100, -1), (100, 101), (-1, 0), (5, 10)] {
            let err = set_wallet(db, balance, held)
                .await
                .expect_err("a wallet below zero");
            assert!(
                err.to_string().contains("wallets_"),
                "on {on}, balance {balance} held {held}: {err}"
            );
        }
        for (id, balance, held) in [("b", 0, 5), ("c", 0, -1), ("d", -5, 0)] {
            let err = wallet::Entity::insert(new_wallet(id, balance, held))
                .exec(db)
                .await
                .expect_err("a new wallet below zero");
            assert!(err.to_string().contains("wallets_"), "on {on}, {id}: {err}");
        }
        // What the rule allows is written: all of it held, or none.
        set_wallet(db, 100, 100).await.expect("all held");
        set_wallet(db, 0, 0).await.expect("empty");
        wallet::Entity::insert(new_wallet("f", 0, 0))
            .exec(db)
            .await
            .expect("an empty wallet");
        let a = wallet::Entity::find_by_id("a".to_owned())
            .one(db)
            .await
            .expect("read")
            .expect("a");
        assert_eq!((a.balance_minor, a.held_minor), (0, 0), "on {on}");
    }
}

/// A database from before the migrations `m0003` to `m0005`: wallets with
/// no principal, holds with no refunded amount, as that code wrote them.
async fn before_identities(fresh: &Fresh) {
    let db = &fresh.db;
    Migrator::up(db, Some(2)).await.expect("m0001 and m0002");
    // m0001 creates its tables as the entities are now: take the new
    // columns away again.
    for (table, column) in [("wallets", "principal"), ("holds", "refunded_minor")] {
        db.execute_unprepared(&format!("ALTER TABLE {table} DROP COLUMN {column}"))
            .await
            .expect("the old shape");
    }
    let now = Utc::now();
    let wallets = [("a", "Alice"), ("b", "bob"), ("c", "Carol Smith")];
    for (id, owner) in wallets {
        let insert = Query::insert()
            .into_table(Alias::new("wallets"))
            .columns(
                [
                    "wallet_id",
                    "owner",
                    "currency",
                    "balance_minor",
                    "held_minor",
                    "created_at",
                    "updated_at",
                ]
                .map(Alias::new),
            )
            .values_panic([
                id.into(),
                owner.into(),
                "USD".into(),
                100_i64.into(),
                0_i64.into(),
                now.into(),
                now.into(),
            ])
            .to_owned();
        db.execute(&insert).await.expect("an old wallet");
    }
    for (id, amount_minor, state) in [("p1", 300_i64, "committed"), ("p2", 50, "committed")] {
        let insert = Query::insert()
            .into_table(Alias::new("holds"))
            .columns(
                [
                    "payment_id",
                    "wallet_id",
                    "to_wallet",
                    "amount_minor",
                    "currency",
                    "state",
                    "created_at",
                    "updated_at",
                ]
                .map(Alias::new),
            )
            .values_panic([
                id.into(),
                "a".into(),
                "b".into(),
                amount_minor.into(),
                "USD".into(),
                state.into(),
                now.into(),
                now.into(),
            ])
            .to_owned();
        db.execute(&insert).await.expect("an old hold");
    }
    let refunds = [
        ("f1", "p1", 100, RefundState::Committed),
        ("f2", "p1", 50, RefundState::Committed),
        ("f3", "p1", 70, RefundState::Declined),
        ("f4", "p2", -7, RefundState::Committed), // the old sign bug
    ];
    for (refund_id, payment_id, amount_minor, state) in refunds {
        refund::Entity::insert(refund::ActiveModel {
            refund_id: Set(refund_id.into()),
            payment_id: Set(payment_id.into()),
            amount_minor: Set(amount_minor),
            currency: Set("USD".into()),
            state: Set(state),
            created_at: Set(now),
        })
        .exec(db)
        .await
        .expect("an old refund");
    }
}

/// Each old wallet belongs to the principal named like its owner, each
/// committed transfer counts its committed refunds (never below zero), and
/// the wallets' checks are in place.
#[tokio::test]
async fn the_migrations_back_fill_owners_and_refunds() {
    for backend in backends() {
        let fresh = empty(&backend).await;
        before_identities(&fresh).await;
        let db = &fresh.db;
        Migrator::up(db, None).await.expect("m0003 to m0005");
        let principals: Vec<(String, String)> = wallet::Entity::find()
            .all(db)
            .await
            .expect("wallets")
            .into_iter()
            .map(|w| (w.wallet_id, w.principal))
            .collect::<std::collections::BTreeMap<_, _>>()
            .into_iter()
            .collect();
        assert_eq!(
            principals,
            [("a", "Alice"), ("b", "bob"), ("c", "Carol Smith")]
                .map(|(w, p)| (w.to_owned(), p.to_owned()))
        );
        let refunded: Vec<(String, i64)> = hold::Entity::find()
            .all(db)
            .await
            .expect("holds")
            .into_iter()
            .map(|h| (h.payment_id, h.refunded_minor))
            .collect::<std::collections::BTreeMap<_, _>>()
            .into_iter()
            .collect();
        assert_eq!(refunded, [("p1".to_owned(), 150), ("p2".to_owned(), 0)]);
        let err = set_wallet(db, 10, 20).await.expect_err("checked");
        assert!(err.to_string().contains("wallets_"), "{err}");
        // bob's wallet pays for bob, as if opened by bob; a refund of p1
        // passes only within what is left of it.
        let p1 = pay("p1", "a", "b", 300, usd());
        let refunds = [
            Message::Refund(RefundData {
                principal: Some("bob".into()),
                ..refund_data("f5", &p1, 151)
            }),
            Message::Refund(RefundData {
                principal: Some("bob".into()),
                ..refund_data("f6", &p1, 100)
            }),
        ];
        let outcomes = one_by_one(db, &refunds).await;
        assert!(
            matches!(&outcomes[0].as_deref(), Ok([EventData::RefundDeclined(d)]) if d.reason == Reason::RefundExceedsPayment),
            "{outcomes:?}"
        );
        assert!(
            matches!(&outcomes[1].as_deref(), Ok([EventData::RefundCommitted(_)])),
            "{outcomes:?}"
        );
    }
}

/// A database whose wallets break the rule already is not migrated on
/// past it (PostgreSQL's `ADD CONSTRAINT` refuses it; SQLite counts).
#[tokio::test]
async fn a_database_with_a_wallet_below_zero_is_not_checked_silently() {
    for backend in backends() {
        let fresh = empty(&backend).await;
        let db = &fresh.db;
        Migrator::up(db, Some(4)).await.expect("m0001 to m0004");
        wallet::Entity::insert(new_wallet("a", 5, 10))
            .exec(db)
            .await
            .expect("a wallet below zero, before the checks");
        let err = Migrator::up(db, None).await.expect_err("refused");
        assert!(
            err.to_string().contains("wallets_available_not_negative")
                || err.to_string().contains("below zero"),
            "on {}: {err}",
            fresh.backend
        );
    }
}
