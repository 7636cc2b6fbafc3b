//! Fresh databases on real backends for the actors' own tests (feature
//! `testing`): a SQLite file in a temporary directory, opened as an actor
//! opens its database, and a PostgreSQL database of its own, created on the
//! server `FALCON_TEST_DATABASE_URL` names (when it is set) and dropped
//! after, as the end-to-end tests do.

use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use sea_orm_migration::MigratorTrait;

use crate::settings::SqliteSettings;

/// A database for one test, removed when dropped.
pub struct Fresh {
    pub db: DatabaseConnection,
    /// What it runs on, for messages.
    pub backend: &'static str,
    _dir: Option<tempfile::TempDir>,
    /// A PostgreSQL database to drop: (admin URL, name).
    created: Option<(String, String)>,
}

/// The backends to run on: SQLite always, PostgreSQL when
/// `FALCON_TEST_DATABASE_URL` is set.
pub fn backends() -> Vec<Option<String>> {
    let postgres = std::env::var("FALCON_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty());
    if postgres.is_none() {
        eprintln!("FALCON_TEST_DATABASE_URL not set: PostgreSQL run skipped");
    }
    std::iter::once(None).chain(postgres.map(Some)).collect()
}

impl Fresh {
    /// An empty database on `backend` (`None`: SQLite; `Some(admin URL)`:
    /// PostgreSQL), not migrated.
    pub async fn empty(backend: &Option<String>, actor: &str) -> Fresh {
        match backend {
            None => {
                let dir = tempfile::tempdir().expect("a temporary directory");
                let url = format!("sqlite://{}/{actor}.db?mode=rwc", dir.path().display());
                let db = crate::store::connect(&url, &SqliteSettings::default(), 8)
                    .await
                    .expect("a SQLite file");
                Fresh {
                    db,
                    backend: "sqlite",
                    _dir: Some(dir),
                    created: None,
                }
            }
            Some(admin) => {
                let conn = Database::connect(admin)
                    .await
                    .expect("connecting to FALCON_TEST_DATABASE_URL");
                let tag = uuid::Uuid::new_v4().simple().to_string();
                let name = format!("falcon_test_{}_{actor}", &tag[..12]);
                conn.execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
                    .await
                    .expect("a database of its own");
                let db = crate::store::connect(
                    &with_database(admin, &name),
                    &SqliteSettings::default(),
                    8,
                )
                .await
                .expect("the new database");
                Fresh {
                    db,
                    backend: "postgres",
                    _dir: None,
                    created: Some((admin.clone(), name)),
                }
            }
        }
    }

    /// A database on `backend` with `M`'s migrations applied.
    pub async fn migrated<M: MigratorTrait>(backend: &Option<String>, actor: &str) -> Fresh {
        let fresh = Fresh::empty(backend, actor).await;
        M::up(&fresh.db, None).await.expect("the migrations");
        fresh
    }
}

/// `postgres://u@h:p/db?x` with the database name replaced.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let authority = base.find("//").map_or(0, |i| i + 2);
    let prefix = match base[authority..].find('/') {
        Some(i) => &base[..authority + i],
        None => base,
    };
    match query {
        Some(q) => format!("{prefix}/{name}?{q}"),
        None => format!("{prefix}/{name}"),
    }
}

impl Drop for Fresh {
    fn drop(&mut self) {
        let Some((admin, name)) = self.created.take() else {
            return;
        };
        // Drop runs inside the test's runtime, which cannot block on the
        // drop: a thread with a runtime of its own does it.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(conn) = Database::connect(&admin).await {
                    let _ = conn
                        .execute_unprepared(&format!(
                            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                        ))
                        .await;
                }
            });
        })
        .join();
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_database_name_is_replaced() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h/db?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
    }
}
