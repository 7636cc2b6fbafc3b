//! The payment actor's migrations, applied at start.

use sea_orm_migration::prelude::*;

use super::entity::{payment, refund};
use falcon_kernel::store::migration::{create_common_tables, create_entity_table};

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(Initial), Box::new(SagaView)]
    }
}

struct Initial;

impl MigrationName for Initial {
    fn name(&self) -> &str {
        "m0001_payment_initial"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Initial {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        create_common_tables(manager).await?;
        create_entity_table(manager, payment::Entity).await?;
        create_entity_table(manager, refund::Entity).await
    }
}

struct SagaView;

impl MigrationName for SagaView {
    fn name(&self) -> &str {
        "m0002_payment_saga_view"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for SagaView {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        create_entity_table(manager, super::view::saga_view::Entity).await
    }
}
