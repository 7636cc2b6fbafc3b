//! Migration helpers shared by the actors' migrators.
//!
//! The first migration of each actor creates its tables from its entities;
//! later schema changes get migrations of their own.

use sea_orm::{DbErr, EntityTrait, Schema};
use sea_orm_migration::SchemaManager;

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
