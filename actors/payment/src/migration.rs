//! The payment actor's migrations, applied at start: the tables
//! ([`Initial`]), the saga view ([`SagaView`]), and the principal of each
//! payment and refund ([`Principal`]).
//!
//! The first migration creates each table from its entity as it is now, so
//! a migration that adds a column adds it only where it is missing (a
//! database created before it).

use falcon_kernel::store::migration::{add_column_if_missing, OutboxSetAside};
use sea_orm_migration::prelude::*;

use super::entity::{payment, refund};
use falcon_kernel::store::migration::{create_common_tables, create_entity_table};

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(Initial),
            Box::new(SagaView),
            Box::new(Principal),
            Box::new(OutboxSetAside),
        ]
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

/// `payments.principal` and `refunds.principal`: who sent the command,
/// nullable (rows from before identities have none, and their events
/// carry none).
struct Principal;

impl MigrationName for Principal {
    fn name(&self) -> &str {
        "m0003_payment_principal"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Principal {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        add_column_if_missing(
            manager,
            payment::Entity,
            payment::Column::Principal,
            sea_orm::Value::String(None),
        )
        .await?;
        add_column_if_missing(
            manager,
            refund::Entity,
            refund::Column::Principal,
            sea_orm::Value::String(None),
        )
        .await
    }
}
