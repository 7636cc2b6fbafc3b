//! `falcon saga show | list | stuck`: one saga's timeline from FALCON_EVT
//! ([`show`]), and the sagas of the saga view found by state, age or
//! idleness ([`find`]). This module only routes.

mod find;
mod show;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Subcommand;
use falcon_runtime::Settings;

#[derive(Debug, Subcommand)]
pub enum SagaVerb {
    /// A saga's timeline: events, actors, step latency, compensation, state.
    Show { id: String },
    /// List sagas, newest first.
    List {
        /// Only sagas in this state (requested, completed, failed, …).
        #[arg(long)]
        state: Option<String>,
        /// Only sagas started within this duration, e.g. 10m.
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<Duration>,
        #[arg(long, default_value_t = 50)]
        limit: u64,
    },
    /// Sagas not terminal and unchanged for longer than --older-than, with what each waits on.
    Stuck {
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        older_than: Duration,
    },
}

pub async fn run(settings: &Settings, verb: SagaVerb, json: bool) -> Result<ExitCode> {
    match verb {
        SagaVerb::Show { id } => show::show(settings, &id, json).await,
        SagaVerb::List {
            state,
            since,
            limit,
        } => find::list(settings, state, since, limit, json).await,
        SagaVerb::Stuck { older_than } => find::stuck(settings, older_than, json).await,
    }
}
