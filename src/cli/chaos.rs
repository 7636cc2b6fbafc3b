//! `falcon chaos kill`: asks a running `falcon run` (with `chaos.enabled`)
//! to kill one of its actors through `falcon.ctl.<node>.kill.<actor>`; its
//! supervisor restarts it. A non-zero exit when nothing was killed.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use falcon_runtime::Settings;

use crate::{actors, output};

/// How long a kill waits for the running process's answer.
const ANSWER_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Subcommand)]
pub enum ChaosVerb {
    /// Kill an actor of a running `falcon run` through falcon.ctl.<node>.kill.<actor>; its supervisor restarts it.
    Kill {
        // Any child of the runtime's supervisor, named by the runtime that
        // answers, not checked here: the registry's actors, their relays
        // and timers, or `any`.
        #[arg(help = format!(
            "{}, payment-relay, payment-deadlines, …, or `any`",
            actors::names().join(", ")
        ))]
        actor: String,
        /// The node whose actor to kill (default: this config's node).
        #[arg(long)]
        node: Option<String>,
    },
}

pub async fn run(settings: &Settings, verb: ChaosVerb, json: bool) -> Result<ExitCode> {
    match verb {
        ChaosVerb::Kill { actor, node } => kill(settings, &actor, node, json).await,
    }
}

async fn kill(
    settings: &Settings,
    actor: &str,
    node: Option<String>,
    json: bool,
) -> Result<ExitCode> {
    if actor.is_empty() || actor.contains(['.', '*', '>', ' ']) {
        bail!("{actor:?} is not an actor name");
    }
    let node = node.unwrap_or_else(|| settings.node.clone());
    let client = settings
        .connect_as(&settings.security.operator, "falcon-cli")
        .await?;
    let subject = falcon_runtime::runtime::kill_subject(&node, actor);
    let reply = tokio::time::timeout(ANSWER_WAIT, client.request(subject, "".into()))
        .await
        .with_context(|| {
            format!(
                "no answer from node {node} within {}",
                humantime::format_duration(ANSWER_WAIT)
            )
        })?
        .with_context(|| format!("no falcon run with chaos.enabled on node {node}"))?;
    let v: serde_json::Value = serde_json::from_slice(&reply.payload)?;
    if json {
        output::json(&v)?;
    } else {
        match v["killed"].as_str() {
            Some(name) => println!("killed {name}"),
            None => println!("no actor {actor} on node {node}"),
        }
    }
    Ok(if v["killed"].is_null() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
