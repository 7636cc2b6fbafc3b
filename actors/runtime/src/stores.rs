//! The actors' databases, opened and migrated through the registry.

use falcon_kernel::store::connect;
use falcon_kernel::Error;
use falcon_sagas::Actor;
use sea_orm::DatabaseConnection;

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
    let db = connect(&entry.database_url(settings), &settings.sqlite)
        .await
        .map_err(Error::database(name))?;
    entry.migrate(&db).await.map_err(Error::database(name))?;
    Ok(db)
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
