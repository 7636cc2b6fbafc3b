//! The payment actor's migrations, applied at start: the tables
//! ([`Initial`]), the saga view ([`SagaView`]), the principal of each
//! payment and refund ([`Principal`]), and the capture mark ([`Capturing`]).
//!
//! The first migration creates each table from its entity as it is now, so
//! a migration that adds a column adds it only where it is missing (a
//! database created before it).

use falcon_kernel::store::migration::{add_column_if_missing, InboxProcessedAt, OutboxSetAside};
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
            Box::new(Capturing),
            Box::new(InboxProcessedAt),
            Box::new(SagaHistory),
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

/// `payments.capture_started_at`: when the payment was marked capturing,
/// before the provider was asked (nullable: never, or a row from before).
struct Capturing;

impl MigrationName for Capturing {
    fn name(&self) -> &str {
        "m0004_payment_capturing"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Capturing {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        add_column_if_missing(
            manager,
            payment::Entity,
            payment::Column::CaptureStartedAt,
            sea_orm::Value::ChronoDateTimeUtc(None),
        )
        .await
    }
}

/// `saga_history`: every saga event the view folds, kept beyond the
/// stream's retention.
struct SagaHistory;

impl MigrationName for SagaHistory {
    fn name(&self) -> &str {
        "m0005_payment_saga_history"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for SagaHistory {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        create_entity_table(manager, crate::view::saga_history::Entity).await
    }
}
