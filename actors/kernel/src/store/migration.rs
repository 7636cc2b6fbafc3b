//! Migration helpers shared by the actors' migrators.
//!
//! The first migration of each actor creates its tables from its entities;
//! later schema changes get migrations of their own.

use sea_orm::sea_query::Table;
use sea_orm::{DbErr, EntityTrait, IdenStatic, Schema};
use sea_orm_migration::{MigrationName, MigrationTrait, SchemaManager};

/// Creates `entity`'s table (and its indexes) unless it exists.
pub async fn create_entity_table<E: EntityTrait>(
    manager: &SchemaManager<'_>,
    entity: E,
) -> Result<(), DbErr> {
    let schema = Schema::new(manager.get_database_backend());
    let mut table = schema.create_table_from_entity(entity);
    manager
        .create_table(table.if_not_exists().to_owned())
        .await?;
    for mut index in schema.create_index_from_entity(entity) {
        manager
            .create_index(index.if_not_exists().to_owned())
            .await?;
    }
    Ok(())
}

/// Creates the inbox and outbox tables (the first migration of every actor
/// calls it).
pub async fn create_common_tables(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    create_entity_table(manager, super::inbox::Entity).await?;
    create_entity_table(manager, super::outbox::Entity).await
}

/// Adds `column` of `entity` (as the entity declares it, with `default`)
/// unless the table has it: a fresh database got it from the first
/// migration, which builds tables from the current entities.
pub async fn add_column_if_missing<E: EntityTrait>(
    manager: &SchemaManager<'_>,
    entity: E,
    column: E::Column,
    default: sea_orm::Value,
) -> Result<(), DbErr> {
    let table = entity.table_name();
    if manager.has_column(table, column.as_str()).await? {
        return Ok(());
    }
    let schema = Schema::new(manager.get_database_backend());
    let mut def = schema.get_column_def::<E>(column);
    manager
        .alter_table(
            Table::alter()
                .table(entity)
                .add_column(def.default(default))
                .to_owned(),
        )
        .await
}

/// The outbox's `set_aside` column (events that can never be published).
/// Every actor's migrator lists it after its own.
pub struct OutboxSetAside;

impl MigrationName for OutboxSetAside {
    fn name(&self) -> &str {
        "m9001_outbox_set_aside"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for OutboxSetAside {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        add_column_if_missing(
            manager,
            super::outbox::Entity,
            super::outbox::Column::SetAside,
            sea_orm::Value::String(None),
        )
        .await
    }
}

/// An index on the inbox's `processed_at`, which the pruner deletes by
/// (`falcon_kernel::prune`). Every actor's migrator lists it after
/// [`OutboxSetAside`].
pub struct InboxProcessedAt;

impl MigrationName for InboxProcessedAt {
    fn name(&self) -> &str {
        "m9002_inbox_processed_at"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for InboxProcessedAt {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                sea_orm::sea_query::Index::create()
                    .if_not_exists()
                    .name("idx-inbox-processed_at")
                    .table(super::inbox::Entity)
                    .col(super::inbox::Column::ProcessedAt)
                    .to_owned(),
            )
            .await
    }
}
