//! `falcon doctor`: whether acknowledged messages are durable on the
//! connected server, and whether it is secured (the security mode, the
//! server refusing anonymous clients, signed events), and whether the
//! actors' databases are configured for the load (autovacuum, connections
//! for the pools), check by check; a non-zero exit when any falls short. `falcon run --require-durable`
//! asks the same durability [`report`].

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use falcon_nats::doctor::Check;
use falcon_runtime::settings::Mode;
use falcon_runtime::Settings;

use crate::{actors, output};

/// `falcon doctor` takes no arguments of its own.
#[derive(Debug, Args)]
pub struct DoctorArgs {}

/// The server's durability checks, with the consumers of every registered
/// actor.
pub async fn report(settings: &Settings) -> Result<falcon_nats::doctor::Report> {
    let client = settings
        .connect_as(&settings.security.operator, "falcon-doctor")
        .await?;
    let js = async_nats::jetstream::new(client.clone());
    let specs = falcon_runtime::runtime::consumer_specs(settings, &actors::all());
    let consumers: Vec<(&str, String)> = specs.iter().map(|s| (s.stream, s.name.clone())).collect();
    Ok(
        falcon_nats::doctor::examine(&client, &js, Some(&settings.nats.monitor_url), &consumers)
            .await,
    )
}

/// The security checks: the mode, whether the server lets an anonymous
/// client in, whether events are signed and checked.
pub async fn security(settings: &Settings) -> Vec<Check> {
    let check = |name: &str, value: String, ok: bool, advice: Option<String>| Check {
        name: name.to_owned(),
        value,
        ok,
        advice,
    };
    let mode = settings.security.mode;
    let mut checks = vec![check(
        "security mode",
        mode.as_str().to_owned(),
        mode == Mode::Secure,
        (mode == Mode::Open).then(|| "any client may create, move or stop money: set security.mode = \"secure\" and run `falcon auth init`".to_owned()),
    )];
    let anonymous = falcon_nats::connect(&settings.nats.url, "falcon-doctor-anonymous").await;
    checks.push(match anonymous {
        Ok(_) => check(
            "identities",
            "the server lets anonymous clients in".into(),
            false,
            Some("load `falcon auth init`'s nats-auth.conf into nats-server (include it, then reload)".into()),
        ),
        Err(e) => check(
            "identities",
            "anonymous clients refused".into(),
            true,
            Some(format!("the server said: {}", root_cause(&e))),
        ),
    });
    checks.push(match settings.key_ring() {
        Ok(ring) if ring.required() => check(
            "signatures",
            "required: HMAC-SHA256 per emitting actor".into(),
            true,
            None,
        ),
        Ok(_) => check(
            "signatures",
            "off: events are not signed or checked".into(),
            false,
            Some("security.mode = \"secure\" signs and checks every event".into()),
        ),
        Err(e) => check("signatures", "keys missing".into(), false, Some(e)),
    });
    // The generated permissions name every partition's durable consumers:
    // after a change of `consumer.partitions` they must be generated again.
    match falcon_runtime::auth::unnamed_consumers(settings, &settings.keys_dir()) {
        None => {}
        Some(Ok(missing)) if missing.is_empty() => checks.push(check(
            "permissions",
            format!(
                "{} names every consumer ({} partitions)",
                falcon_runtime::auth::SERVER_CONF,
                settings.consumer.partitions
            ),
            true,
            None,
        )),
        Some(Ok(missing)) => checks.push(check(
            "permissions",
            format!(
                "{} does not name {}",
                falcon_runtime::auth::SERVER_CONF,
                missing.join(", ")
            ),
            false,
            Some(format!(
                "consumer.partitions is {} since `falcon auth init` ran: run it again and reload the servers' authorization",
                settings.consumer.partitions
            )),
        )),
        Some(Err(e)) => checks.push(check("permissions", "unreadable".into(), false, Some(e))),
    }
    checks
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut last = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        last = s.to_string();
        source = s.source();
    }
    last
}

pub async fn run(settings: &Settings, _args: DoctorArgs, json: bool) -> Result<ExitCode> {
    let report = report(settings).await?;
    let security = security(settings).await;
    let secure = security.iter().all(|c| c.ok);
    let databases = falcon_runtime::databases::examine(settings).await;
    let databases_ok = databases.iter().all(|c| c.ok);
    if json {
        let mut v = serde_json::to_value(&report)?;
        v["security"] = serde_json::to_value(&security)?;
        v["secure"] = secure.into();
        v["databases"] = serde_json::to_value(&databases)?;
        v["databases_ok"] = databases_ok.into();
        output::json(&v)?;
    } else {
        let rows: Vec<Vec<String>> = report
            .checks
            .iter()
            .chain(&security)
            .chain(&databases)
            .map(|c| {
                vec![
                    if c.ok { "ok" } else { "NO" }.to_owned(),
                    c.name.clone(),
                    c.value.clone(),
                    c.advice.clone().unwrap_or_default(),
                ]
            })
            .collect();
        output::table(&["", "CHECK", "VALUE", "ADVICE"], &rows);
        println!(
            "{}",
            if report.durable {
                "acknowledged messages are durable: each is on disk before its ack"
            } else {
                "acknowledged messages are NOT known to be durable: see the checks marked NO"
            }
        );
        println!(
            "{}",
            if secure {
                "secured: identities, permissions and signed events"
            } else {
                "NOT secured: see the security checks marked NO"
            }
        );
        println!(
            "{}",
            if databases_ok {
                "databases: configured for the load, with room for this process"
            } else {
                "databases fall short: see the database checks marked NO"
            }
        );
    }
    Ok(if report.durable && secure && databases_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
