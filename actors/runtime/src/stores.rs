//! The actors' databases, opened and migrated through the registry.

use falcon_kernel::store::connect::{self, connect, sqlite_file};
use falcon_kernel::Error;
use falcon_sagas::Actor;
use sea_orm::{ConnectionTrait, DatabaseBackend, DatabaseConnection, DbErr, TransactionTrait};

use crate::registry::{self, Registered};
use crate::settings::Settings;

/// A database per actor, opened and migrated.
#[derive(Clone, Default)]
pub struct Stores {
    dbs: Vec<(Actor, DatabaseConnection)>,
}

/// Opens an actor's database and applies its migrations.
pub async fn open_store(actor: Actor, settings: &Settings) -> Result<DatabaseConnection, Error> {
    let entry = registry::find(actor)
        .ok_or_else(|| Error::Config(format!("{actor} is not a registered actor")))?;
    open(entry, settings).await
}

/// Opens a registered actor's database and applies its migrations.
pub async fn open(
    entry: &dyn Registered,
    settings: &Settings,
) -> Result<DatabaseConnection, Error> {
    let name = entry.actor().as_str();
    let loops = entry.consumers(&settings.consumer).len();
    let db = connect(
        &entry.database_url(settings),
        &settings.sqlite,
        connect::postgres_pool(loops, settings.postgres.pool_max),
    )
    .await
    .map_err(Error::database(name))?;
    migrate_serialised(entry, &db, &entry.database_url(settings))
        .await
        .map_err(Error::database(name))?;
    Ok(db)
}

/// The key of the PostgreSQL advisory lock that serialises migrations:
/// every FalconPay process takes the same one, whatever the database.
const MIGRATION_LOCK: i64 = 0x46_61_6C_63_6F_6E_4D_67; // "FalconMg"

/// Applies an actor's migrations with no other process migrating the same
/// database at once: several processes starting together on fresh
/// databases would otherwise race (on PostgreSQL a duplicate key in
/// `pg_type` from two `CREATE TABLE`s, on SQLite a migration applied twice).
///
/// PostgreSQL: a transaction-scoped advisory lock, held on one pooled
/// connection while the migrations run on others, released at its commit
/// (or when the connection drops, if the process dies). SQLite: an
/// exclusive lock on the file `<database>.migrate-lock` beside it (the OS
/// releases it when the process dies).
async fn migrate_serialised(
    entry: &dyn Registered,
    db: &DatabaseConnection,
    url: &str,
) -> Result<(), DbErr> {
    match db.get_database_backend() {
        DatabaseBackend::Postgres => {
            let lock = db.begin().await?;
            lock.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
                .await?;
            let migrated = entry.migrate(db).await;
            lock.commit().await?;
            migrated
        }
        _ => match sqlite_file(url) {
            Some(file) => {
                let mut name = file.into_os_string();
                name.push(".migrate-lock");
                let lock = lock_file(name.into()).await?;
                let migrated = entry.migrate(db).await;
                drop(lock);
                migrated
            }
            None => entry.migrate(db).await,
        },
    }
}

/// Opens (creating) and exclusively locks `path`, waiting for another
/// holder to let go; the lock lasts as long as the returned file.
async fn lock_file(path: std::path::PathBuf) -> Result<std::fs::File, DbErr> {
    tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .and_then(|f| f.lock().map(|()| f))
            .map_err(|e| DbErr::Custom(format!("locking {}: {e}", path.display())))?;
        Ok(file)
    })
    .await
    .map_err(|e| DbErr::Custom(format!("locking for migrations: {e}")))?
}
impl Stores {
    /// Opens (and migrates) the databases of the given actors.
    pub async fn open(settings: &Settings, actors: &[Actor]) -> Result<Stores, Error> {
        let mut stores = Stores::default();
        for entry in registry::REGISTRY {
            if actors.contains(&entry.actor()) {
                let db = open(entry, settings).await?;
                stores.dbs.push((entry.actor(), db));
            }
        }
        Ok(stores)
    }

    /// The database of `actor`, when it is open.
    pub fn get(&self, actor: Actor) -> Option<&DatabaseConnection> {
        self.dbs.iter().find(|(a, _)| *a == actor).map(|(_, db)| db)
    }

    /// The open databases, with their actor, in registry order.
    pub fn each(&self) -> impl Iterator<Item = (Actor, &DatabaseConnection)> {
        self.dbs.iter().map(|(a, db)| (*a, db))
    }
}
