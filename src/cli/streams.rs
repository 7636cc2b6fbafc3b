//! `falcon streams apply`: provisions the streams and every registered
//! actor's consumers, idempotently, and lists what it created, updated or
//! left unchanged.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use falcon_runtime::runtime::apply_topology;
use falcon_runtime::Settings;

use crate::output;

#[derive(Debug, Subcommand)]
pub enum StreamsVerb {
    /// Create or update streams and consumers (idempotent).
    Apply,
}

pub async fn run(settings: &Settings, verb: StreamsVerb, json: bool) -> Result<ExitCode> {
    match verb {
        StreamsVerb::Apply => apply(settings, json).await,
    }
}

async fn apply(settings: &Settings, json: bool) -> Result<ExitCode> {
    let client = settings
        .connect_as(&settings.security.provisioning, "falcon-cli")
        .await?;
    let js = async_nats::jetstream::new(client);
    let changes = apply_topology(&js, settings).await?;
    if json {
        let v: Vec<_> = changes
            .iter()
            .map(|c| serde_json::json!({ "kind": c.kind, "name": c.name, "action": c.action.to_string() }))
            .collect();
        output::json(&v)?;
    } else {
        let rows: Vec<Vec<String>> = changes
            .iter()
            .map(|c| vec![c.kind.to_owned(), c.name.clone(), c.action.to_string()])
            .collect();
        output::table(&["KIND", "NAME", "ACTION"], &rows);
    }
    Ok(ExitCode::SUCCESS)
}
