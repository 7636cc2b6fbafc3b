//! The wallet actor's migrations, applied at start.

use sea_orm_migration::prelude::*;

use super::entity::{deposit, hold, ledger_entry, refund, wallet};
use falcon_kernel::store::migration::{create_common_tables, create_entity_table};

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(Initial)]
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
