//! A fresh database per actor per test.

use anyhow::{Context, Result};
use falcon_sagas::Actor;
use sea_orm::{ConnectionTrait, Database};

#[derive(Debug, Clone)]
pub enum Backend {
    Sqlite,
    /// An admin URL from `FALCON_TEST_DATABASE_URL`.
    Postgres(String),
}

impl Backend {
    pub fn postgres() -> Option<Backend> {
        std::env::var("FALCON_TEST_DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .map(Backend::Postgres)
    }
}

pub struct Databases {
    urls: Vec<(Actor, String)>,
    _dir: Option<tempfile::TempDir>,
    /// Postgres databases to drop: (admin URL, name).
    created: Vec<(String, String)>,
}

/// `postgres://u@h:p/db?x` with the database name replaced.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let prefix = match base.rfind('/') {
        Some(i) if base[..i].contains("//") && i > base.find("//").unwrap_or(0) + 1 => &base[..i],
        _ => base,
    };
    match query {
        Some(q) => format!("{prefix}/{name}?{q}"),
        None => format!("{prefix}/{name}"),
    }
}

impl Databases {
    pub async fn create(backend: Backend) -> Result<Databases> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir()?;
                let urls = Actor::ALL
                    .iter()
                    .map(|a| {
                        (
                            *a,
                            format!(
                                "sqlite://{}/{}.db?mode=rwc",
                                dir.path().display(),
                                a.as_str()
                            ),
                        )
                    })
                    .collect();
                Ok(Databases {
                    urls,
                    _dir: Some(dir),
                    created: Vec::new(),
                })
            }
            Backend::Postgres(admin) => {
                let conn = Database::connect(&admin)
                    .await
                    .context("connecting to FALCON_TEST_DATABASE_URL")?;
                let tag = uuid::Uuid::new_v4().simple().to_string();
                let mut urls = Vec::new();
                let mut created = Vec::new();
                for a in Actor::ALL {
                    let name = format!("falcon_test_{}_{}", &tag[..12], a.as_str());
                    conn.execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
                        .await?;
                    urls.push((a, with_database(&admin, &name)));
                    created.push((admin.clone(), name));
                }
                Ok(Databases {
                    urls,
                    _dir: None,
                    created,
                })
            }
        }
    }

    pub fn url(&self, actor: Actor) -> String {
        self.urls
            .iter()
            .find(|(a, _)| *a == actor)
            .map(|(_, u)| u.clone())
            .expect("every actor has a database")
    }
}

impl Drop for Databases {
    fn drop(&mut self) {
        if self.created.is_empty() {
            return;
        }
        let created = std::mem::take(&mut self.created);
        // Drop runs outside any runtime guarantee: use a thread of our own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                for (admin, name) in created {
                    if let Ok(conn) = Database::connect(&admin).await {
                        let _ = conn
                            .execute_unprepared(&format!(
                                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                            ))
                            .await;
                    }
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
    fn replaces_the_database_name() {
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
