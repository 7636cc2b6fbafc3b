//! The wallet actor's migrations, applied at start: the tables
//! ([`Initial`]), then the money in circulation per currency
//! ([`Circulation`]), back-filled from the ledger.

use std::collections::BTreeMap;

use chrono::Utc;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set};
use sea_orm_migration::prelude::*;

use super::entity::{circulation, deposit, hold, ledger_entry, refund, wallet};
use super::FUNDING_ACCOUNT;
use falcon_kernel::store::migration::{create_common_tables, create_entity_table};

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(Initial), Box::new(Circulation)]
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
