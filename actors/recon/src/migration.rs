//! The reconciliation actor's migrations, applied at start.

use sea_orm_migration::prelude::*;

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(Initial),
            Box::new(falcon_kernel::store::migration::OutboxSetAside),
            Box::new(falcon_kernel::store::migration::InboxProcessedAt),
        ]
    }
}

struct Initial;

impl MigrationName for Initial {
    fn name(&self) -> &str {
        "m0001_recon_initial"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Initial {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use crate::entity::{fact, mismatch, run, state};
        use falcon_kernel::store::migration::{create_common_tables, create_entity_table};
        create_common_tables(manager).await?;
        create_entity_table(manager, fact::Entity).await?;
        create_entity_table(manager, mismatch::Entity).await?;
        create_entity_table(manager, run::Entity).await?;
        create_entity_table(manager, state::Entity).await?;
        // The marked rows, oldest change first: what a run compares.
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx-recon_facts-dirty-changed_at")
                    .table(fact::Entity)
                    .col(fact::Column::Dirty)
                    .col(fact::Column::ChangedAt)
                    .to_owned(),
            )
            .await
    }
}
