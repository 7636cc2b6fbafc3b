//! The risk actor's migrations, applied at start.

use sea_orm_migration::prelude::*;

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(Initial),
            Box::new(VelocityIndex),
            Box::new(falcon_kernel::store::migration::OutboxSetAside),
            Box::new(falcon_kernel::store::migration::InboxProcessedAt),
        ]
    }
}

struct Initial;

impl MigrationName for Initial {
    fn name(&self) -> &str {
        "m0001_risk_initial"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Initial {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        falcon_kernel::store::migration::create_common_tables(manager).await?;
        falcon_kernel::store::migration::create_entity_table(manager, crate::entity::Entity).await
    }
}

/// The velocity read (a batch's wallets, approved, inside the window)
/// as a range of one index holding every column it needs: without it,
/// the read visited each of a wallet's decisions ever made, in the
/// table, and slowed down as the table grew.
struct VelocityIndex;

impl MigrationName for VelocityIndex {
    fn name(&self) -> &str {
        "m0002_risk_velocity_index"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for VelocityIndex {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use crate::entity::Column as C;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx-decisions-velocity")
                    .table(crate::entity::Entity)
                    .col(C::FromWallet)
                    .col(C::DecidedAt)
                    .col(C::Approved)
                    .col(C::Currency)
                    .col(C::AmountMinor)
                    .to_owned(),
            )
            .await
    }
}
