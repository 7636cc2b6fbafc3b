//! `falcon doctor`: whether acknowledged messages are durable on the
//! connected server, check by check; a non-zero exit when they are not.
//! `falcon run --require-durable` asks the same [`report`].

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use falcon_runtime::Settings;

use crate::{actors, output};

/// `falcon doctor` takes no arguments of its own.
#[derive(Debug, Args)]
pub struct DoctorArgs {}

/// The server's durability checks, with the consumers of every registered
/// actor.
pub async fn report(settings: &Settings) -> Result<falcon_nats::doctor::Report> {
    let client = falcon_nats::connect(&settings.nats.url, "falcon-doctor").await?;
    let js = async_nats::jetstream::new(client.clone());
    let specs = falcon_runtime::runtime::consumer_specs(settings, &actors::all());
    let consumers: Vec<(&str, String)> = specs.iter().map(|s| (s.stream, s.name.clone())).collect();
    Ok(
        falcon_nats::doctor::examine(&client, &js, Some(&settings.nats.monitor_url), &consumers)
            .await,
    )
}

pub async fn run(settings: &Settings, _args: DoctorArgs, json: bool) -> Result<ExitCode> {
    let report = report(settings).await?;
    if json {
        output::json(&report)?;
    } else {
        let rows: Vec<Vec<String>> = report
            .checks
            .iter()
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
    }
    Ok(if report.durable {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
