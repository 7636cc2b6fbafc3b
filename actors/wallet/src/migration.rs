//! The wallet actor's migrations, applied at start: the tables
//! ([`Initial`]), then the money in circulation per currency
//! ([`Circulation`]), back-filled from the ledger; who owns each wallet
//! ([`Principal`]) and how much of each transfer was refunded
//! ([`Refunded`]), both back-filled; and the database's own guard of the
//! rules no wallet may break ([`Checks`]).
//!
//! The first migration creates each table from its entity as it is now, so
//! a migration that adds a column adds it only where it is missing (a
//! database created before it).

use std::collections::BTreeMap;

use chrono::Utc;
use falcon_kernel::store::migration::{add_column_if_missing, InboxProcessedAt, OutboxSetAside};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};
use sea_orm_migration::prelude::*;

use super::entity::{circulation, deposit, hold, ledger_entry, refund, wallet};
use super::FUNDING_ACCOUNT;
use falcon_kernel::store::migration::{create_common_tables, create_entity_table};

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(Initial),
            Box::new(Circulation),
            Box::new(Principal),
            Box::new(Refunded),
            Box::new(Checks),
            Box::new(OutboxSetAside),
            Box::new(InboxProcessedAt),
        ]
    }
}

struct Initial;

impl MigrationName for Initial {
    fn name(&self) -> &str {
        "m0001_wallet_initial"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Initial {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        create_common_tables(manager).await?;
        create_entity_table(manager, wallet::Entity).await?;
        create_entity_table(manager, hold::Entity).await?;
        create_entity_table(manager, ledger_entry::Entity).await?;
        create_entity_table(manager, deposit::Entity).await?;
        create_entity_table(manager, refund::Entity).await
    }
}

/// The `wallet_circulation` table, one row per currency that has had a
/// deposit, holding the sum of its deposits: minus the `@funding`
/// account's entries in the ledger, summed here in `i128` (SQLite's `SUM`
/// fails on a 64-bit overflow, and an old database may hold deposits that
/// together pass `i64::MAX`: the wrap this table exists to prevent). Such a
/// sum is stored as `i64::MAX`, so that the currency takes no more
/// deposits.
struct Circulation;

/// `@funding` entries read per query while back-filling.
const BACKFILL_PAGE: u64 = 10_000;

impl MigrationName for Circulation {
    fn name(&self) -> &str {
        "m0002_wallet_circulation"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Circulation {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        create_entity_table(manager, circulation::Entity).await?;
        let db = manager.get_connection();
        let mut deposited: BTreeMap<String, i128> = BTreeMap::new();
        let mut after = i64::MIN;
        loop {
            let page: Vec<(i64, String, i64)> = ledger_entry::Entity::find()
                .select_only()
                .columns([
                    ledger_entry::Column::Id,
                    ledger_entry::Column::Currency,
                    ledger_entry::Column::AmountMinor,
                ])
                .filter(ledger_entry::Column::Account.eq(FUNDING_ACCOUNT))
                .filter(ledger_entry::Column::Id.gt(after))
                .order_by_asc(ledger_entry::Column::Id)
                .limit(BACKFILL_PAGE)
                .into_tuple()
                .all(db)
                .await?;
            let Some((last, _, _)) = page.last() else {
                break;
            };
            after = *last;
            for (_, currency, amount_minor) in page {
                *deposited.entry(currency).or_default() -= i128::from(amount_minor);
            }
        }
        let now = Utc::now();
        let rows: Vec<circulation::ActiveModel> = deposited
            .into_iter()
            .map(|(currency, sum)| circulation::ActiveModel {
                currency: Set(currency),
                deposited_minor: Set(
                    <i64 as TryFrom<i128>>::try_from(sum.max(0)).unwrap_or(i64::MAX)
                ),
                updated_at: Set(now),
            })
            .collect();
        for chunk in falcon_kernel::store::insert_chunks(rows) {
            circulation::Entity::insert_many(chunk)
                .on_conflict_do_nothing_on([circulation::Column::Currency])
                .exec_without_returning(db)
                .await?;
        }
        Ok(())
    }
}

/// `wallets.principal`: the principal that opened each wallet, the only
/// one that may pay or refund from it. A wallet opened before identities
/// has none: it gets its `owner`, the name its opener gave (so a wallet
/// whose owner is not a principal's id can be paid from by no one until an
/// operator sets it).
struct Principal;

impl MigrationName for Principal {
    fn name(&self) -> &str {
        "m0003_wallet_principal"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Principal {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        add_column_if_missing(
            manager,
            wallet::Entity,
            wallet::Column::Principal,
            "".into(),
        )
        .await?;
        wallet::Entity::update_many()
            .col_expr(wallet::Column::Principal, Expr::col(wallet::Column::Owner))
            .filter(wallet::Column::Principal.eq(""))
            .exec(manager.get_connection())
            .await?;
        Ok(())
    }
}

/// `holds.refunded_minor`: how much of a committed transfer refunds have
/// moved back, so that no refund takes back more than was paid. Back-filled
/// from the committed refunds, summed in `i128` and kept within
/// `0..=i64::MAX` (a database from before the check may hold refunds that
/// passed their payment: such a transfer takes no more refunds).
struct Refunded;

/// Refunds read per query while back-filling.
const REFUNDS_PAGE: u64 = 10_000;

impl MigrationName for Refunded {
    fn name(&self) -> &str {
        "m0004_wallet_hold_refunded"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Refunded {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        add_column_if_missing(manager, hold::Entity, hold::Column::RefundedMinor, 0.into()).await?;
        let db = manager.get_connection();
        let mut refunded: BTreeMap<String, i128> = BTreeMap::new();
        let mut after = String::new();
        loop {
            let page: Vec<(String, String, i64)> = refund::Entity::find()
                .select_only()
                .columns([
                    refund::Column::RefundId,
                    refund::Column::PaymentId,
                    refund::Column::AmountMinor,
                ])
                .filter(refund::Column::State.eq(crate::RefundState::Committed))
                .filter(refund::Column::RefundId.gt(after.clone()))
                .order_by_asc(refund::Column::RefundId)
                .limit(REFUNDS_PAGE)
                .into_tuple()
                .all(db)
                .await?;
            let Some((last, _, _)) = page.last() else {
                break;
            };
            after = last.clone();
            for (_, payment_id, amount_minor) in page {
                *refunded.entry(payment_id).or_default() += i128::from(amount_minor);
            }
        }
        for (payment_id, sum) in refunded {
            let sum = <i64 as TryFrom<i128>>::try_from(sum.max(0)).unwrap_or(i64::MAX);
            hold::Entity::update_many()
                .col_expr(hold::Column::RefundedMinor, Expr::value(sum))
                .filter(hold::Column::PaymentId.eq(payment_id))
                .exec(db)
                .await?;
        }
        Ok(())
    }
}

/// The database refuses a wallet row whose held amount is negative or
/// whose available balance (balance − held) is: the rules the ledger
/// must never break, kept by the steps and, should a bug or a hand-written
/// statement break them, by the database too. PostgreSQL gets `CHECK`
/// constraints; SQLite cannot add one to an existing table, so it gets
/// triggers that abort such an insert or update. A database whose wallets
/// break the rule already is refused on both (PostgreSQL's `ADD
/// CONSTRAINT` checks the rows; on SQLite the migration counts them): an
/// operator must look before the actor runs on it.
struct Checks;

/// The rules as SQL over a wallet row whose columns `row` prefixes (`NEW.`
/// in a trigger): no held amount below zero, and no available balance
/// (written `balance >= held`, which cannot overflow).
fn held_not_negative(row: &str) -> String {
    format!("{row}held_minor >= 0")
}

fn available_not_negative(row: &str) -> String {
    format!("{row}balance_minor >= {row}held_minor")
}

/// Both rules, for a trigger's or a query's condition.
fn wallet_rules(row: &str) -> String {
    format!(
        "({} AND {})",
        held_not_negative(row),
        available_not_negative(row)
    )
}

impl MigrationName for Checks {
    fn name(&self) -> &str {
        "m0005_wallet_checks"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Checks {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let statements = match manager.get_database_backend() {
            DbBackend::Postgres => vec![
                format!(
                    "ALTER TABLE wallets ADD CONSTRAINT wallets_held_not_negative \
                     CHECK ({})",
                    held_not_negative("")
                ),
                format!(
                    "ALTER TABLE wallets ADD CONSTRAINT wallets_available_not_negative \
                     CHECK ({})",
                    available_not_negative("")
                ),
            ],
            DbBackend::Sqlite => {
                refuse_broken_wallets(db).await?;
                ["INSERT", "UPDATE"]
                    .into_iter()
                    .map(|op| {
                        format!(
                            "CREATE TRIGGER IF NOT EXISTS wallets_checks_{} BEFORE {op} ON wallets \
                             WHEN NOT {} \
                             BEGIN SELECT RAISE(ABORT, 'wallets_available_not_negative: \
                             held_minor must be >= 0 and balance_minor >= held_minor'); END",
                            op.to_lowercase(),
                            wallet_rules("NEW.")
                        )
                    })
                    .collect()
            }
            other => {
                return Err(DbErr::Migration(format!(
                    "the wallet's checks support PostgreSQL and SQLite, not {other:?}"
                )))
            }
        };
        for sql in statements {
            db.execute_unprepared(&sql).await?;
        }
        Ok(())
    }
}

/// On SQLite, which checks no existing row when a trigger is created: a
/// wallet that breaks the rule already stops the migration, as
/// PostgreSQL's `ADD CONSTRAINT` does.
async fn refuse_broken_wallets(db: &impl ConnectionTrait) -> Result<(), DbErr> {
    let broken = wallet::Entity::find()
        .filter(Expr::cust(format!("NOT {}", wallet_rules(""))))
        .limit(1)
        .one(db)
        .await?;
    match broken {
        None => Ok(()),
        Some(w) => Err(DbErr::Migration(format!(
            "wallet {} has balance {} and held {}: a held amount or an available balance \
             below zero; fix it before the checks can be added",
            w.wallet_id, w.balance_minor, w.held_minor
        ))),
    }
}
