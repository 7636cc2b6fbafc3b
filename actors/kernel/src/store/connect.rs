//! Connecting to an actor's database by URL: SQLite (WAL, busy timeout,
//! a pool) or PostgreSQL.

use std::time::Duration;

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr, EntityTrait};

use crate::settings::SqliteSettings;

/// Opens a database by URL (`sqlite://…` or `postgres://…`). A PostgreSQL
/// pool holds up to `postgres_pool` connections ([`postgres_pool`]).
pub async fn connect(
    url: &str,
    sqlite: &SqliteSettings,
    postgres_pool: u32,
) -> Result<DatabaseConnection, DbErr> {
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.sqlx_logging(false)
        .acquire_timeout(Duration::from_secs(30));
    if url.starts_with("sqlite:") {
        if let Some(dir) = sqlite_dir(url) {
            std::fs::create_dir_all(&dir)
                .map_err(|e| DbErr::Custom(format!("creating {dir}: {e}")))?;
        }
        let synchronous = match sqlite.synchronous.as_str() {
            "normal" => sea_orm::sqlx::sqlite::SqliteSynchronous::Normal,
            "extra" => sea_orm::sqlx::sqlite::SqliteSynchronous::Extra,
            _ => sea_orm::sqlx::sqlite::SqliteSynchronous::Full,
        };
        let busy = Duration::from_millis(sqlite.busy_timeout_ms);
        opts.max_connections(sqlite.pool_max.max(1))
            .map_sqlx_sqlite_opts(move |o| {
                o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(synchronous)
                    .busy_timeout(busy)
                    .statement_cache_capacity(STATEMENT_CACHE)
            });
    } else {
        opts.max_connections(postgres_pool.max(2))
            .min_connections(1)
            .map_sqlx_postgres_opts(|o| o.statement_cache_capacity(STATEMENT_CACHE));
    }
    Database::connect(opts).await
}

/// Connections a PostgreSQL pool needs beyond one per consumer loop: the
/// outbox relay, the deadline sweeper, the health probe and the gauges,
/// and the migrations (one connection holds their lock while another runs
/// them).
pub const POSTGRES_POOL_SPARE: u32 = 4;

/// The PostgreSQL pool of a database that `loops` consumer loops write:
/// a connection for each loop's batch transaction, so that the partitions'
/// round trips overlap instead of queueing for a connection, and
/// [`POSTGRES_POOL_SPARE`] more; or `pool_max` when it is set
/// (`postgres.pool_max`), never below the two the migrations hold.
pub fn postgres_pool(loops: usize, pool_max: u32) -> u32 {
    if pool_max > 0 {
        return pool_max.max(2);
    }
    u32::try_from(loops)
        .unwrap_or(u32::MAX)
        .saturating_add(POSTGRES_POOL_SPARE)
}

/// Prepared statements kept per connection. `IN` lists and guarded updates
/// come in ten padded sizes per shape (see [`padded_chunks`]), so they stay
/// cached; multi-row inserts of every batch size are distinct statements,
/// and a larger cache only keeps more of those (2,048 held 45 MB more at
/// the same throughput).
const STATEMENT_CACHE: usize = 256;

/// The file of a relative or absolute SQLite file URL (`None` for an
/// in-memory database or another backend).
pub fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = path.split('?').next()?;
    if path.is_empty() || path == ":memory:" {
        return None;
    }
    Some(std::path::PathBuf::from(path))
}

/// The directory of a relative or absolute SQLite file URL, to create it.
fn sqlite_dir(url: &str) -> Option<String> {
    let file = sqlite_file(url)?;
    let dir = file.parent()?.to_str()?;
    (!dir.is_empty()).then(|| dir.to_owned())
}

/// An in-memory SQLite database (one connection) with `entity`'s table:
/// for unit tests of steps and projections.
pub async fn memory_db<E: EntityTrait>(entity: E) -> DatabaseConnection {
    let mut options = ConnectOptions::new("sqlite::memory:");
    options.max_connections(1);
    let db = Database::connect(options).await.expect("in-memory SQLite");
    let schema = sea_orm::Schema::new(db.get_database_backend());
    db.execute(&schema.create_table_from_entity(entity))
        .await
        .expect("the table");
    db
}
