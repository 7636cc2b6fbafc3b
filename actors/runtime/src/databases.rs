//! `falcon doctor`'s database checks: whether each actor's PostgreSQL
//! server is configured for FalconPay's write pattern (autovacuum on), and
//! how many processes its `max_connections` admits at the pools the
//! processes open (docs/DESIGN.md, "Databases").

use std::collections::BTreeMap;

use falcon_kernel::store::connect::{self, connect};
use falcon_nats::doctor::Check;
use sea_orm::{ConnectionTrait, DatabaseBackend, DbErr, Statement};

use crate::registry::REGISTRY;
use crate::settings::Settings;

/// What one PostgreSQL server says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFacts {
    pub version: String,
    pub autovacuum: bool,
    /// `max_connections` less `superuser_reserved_connections`: what a
    /// non-superuser may open.
    pub usable: u32,
    /// Connections open now, every client's.
    pub in_use: u32,
}

async fn facts(db: &sea_orm::DatabaseConnection) -> Result<ServerFacts, DbErr> {
    let row = db
        .query_one_raw(Statement::from_string(
            DatabaseBackend::Postgres,
            "SELECT current_setting('server_version') AS version, \
                    current_setting('max_connections')::int \
                      - current_setting('superuser_reserved_connections')::int AS usable, \
                    (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int AS in_use",
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("the server answered nothing".into()))?;
    Ok(ServerFacts {
        version: row.try_get("", "version")?,
        // The pruner's own reading, so that the two never disagree.
        autovacuum: falcon_kernel::prune::autovacuum_on(db).await?,
        usable: u32::try_from(row.try_get::<i32>("", "usable")?).unwrap_or(0),
        in_use: u32::try_from(row.try_get::<i32>("", "in_use")?).unwrap_or(0),
    })
}

/// `host:port` of a PostgreSQL URL (credentials and database left out):
/// the actors whose databases share it share its `max_connections`.
pub fn server_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() {
        "localhost".into()
    } else {
        host.to_owned()
    }
}

/// How many processes, each opening `per_process` connections, fit in
/// what a server has left (`usable`, less `others` held by other clients).
pub fn processes_that_fit(usable: u32, others: u32, per_process: u32) -> u32 {
    usable.saturating_sub(others) / per_process.max(1)
}

fn check(name: String, value: String, ok: bool, advice: Option<String>) -> Check {
    Check {
        name,
        value,
        ok,
        advice,
    }
}

/// A server's facts, and each actor's pool in one process on it.
type Server = (Option<ServerFacts>, Vec<(&'static str, u32)>);

/// The checks of every registered actor's database.
pub async fn examine(settings: &Settings) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut servers: BTreeMap<String, Server> = BTreeMap::new();
    for entry in REGISTRY {
        let name = entry.actor().as_str();
        let url = entry.database_url(settings);
        if !url.starts_with("postgres") {
            checks.push(check(
                format!("{name} database"),
                "sqlite (one file, one host: no server to check)".into(),
                true,
                None,
            ));
            continue;
        }
        let pool = connect::postgres_pool(
            entry.consumers(&settings.consumer).len(),
            settings.postgres.pool_max,
        );
        let server = server_of(&url);
        let known = match connect(&url, &settings.sqlite, 2).await {
            Ok(db) => {
                let f = facts(&db).await;
                db.close().await.ok();
                f
            }
            Err(e) => Err(e),
        };
        match known {
            Ok(f) => {
                checks.push(check(
                    format!("{name} database"),
                    format!("postgresql {} at {server}", f.version),
                    true,
                    None,
                ));
                checks.push(check(
                    format!("{name} autovacuum"),
                    if f.autovacuum { "on" } else { "off" }.into(),
                    f.autovacuum,
                    (!f.autovacuum).then(|| {
                        "turn autovacuum on: the outbox, inbox and payments churn, and without it their dead rows slow every claim (meanwhile the pruner vacuums the database every round)".to_owned()
                    }),
                ));
                let slot = servers.entry(server).or_default();
                slot.0 = Some(f);
                slot.1.push((name, pool));
            }
            Err(e) => checks.push(check(
                format!("{name} database"),
                format!("unreachable at {server}"),
                false,
                Some(e.to_string()),
            )),
        }
    }
    for (server, (facts, pools)) in servers {
        let Some(f) = facts else { continue };
        let per_process: u32 = pools.iter().map(|(_, p)| p).sum();
        let ours: String = pools
            .iter()
            .map(|(n, p)| format!("{n} {p}"))
            .collect::<Vec<_>>()
            .join(", ");
        // The connections open now may include this deployment's own
        // processes; the count is what is left beside them.
        let fit = processes_that_fit(f.usable, f.in_use, per_process);
        let ok = fit >= 1;
        checks.push(check(
            format!("postgres {server} connections"),
            format!(
                "a process opens up to {per_process} ({ours}) of {} usable, {} in use: {fit} more such processes fit",
                f.usable, f.in_use
            ),
            ok,
            Some(if ok {
                "every process, and every actor group of a deployment, counts against max_connections: keep processes x pools under it".to_owned()
            } else {
                "raise the server's max_connections, or cap each pool with postgres.pool_max".to_owned()
            }),
        ));
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_named_without_credentials_or_database() {
        assert_eq!(
            server_of("postgres://u:pw@db.internal:5433/payment?sslmode=require"),
            "db.internal:5433"
        );
        assert_eq!(server_of("postgres://db/wallet"), "db");
        assert_eq!(server_of("postgres:///wallet"), "localhost");
        assert_eq!(server_of("postgres://u@[::1]:5432/x"), "[::1]:5432");
    }

    #[test]
    fn processes_fit_in_what_the_server_has_left() {
        assert_eq!(processes_that_fit(97, 7, 30), 3);
        assert_eq!(processes_that_fit(97, 80, 30), 0);
        assert_eq!(processes_that_fit(10, 20, 5), 0);
        assert_eq!(processes_that_fit(10, 0, 0), 10);
    }
}
