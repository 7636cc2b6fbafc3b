//! `falcon recon`: the reconciliation actor's last runs and its open
//! mismatches, from its database.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use falcon_recon::report::{report, LISTED_MAX};
use falcon_runtime::runtime::Stores;
use falcon_runtime::Settings;
use falcon_sagas::Actor;

use crate::output;

#[derive(Debug, Args)]
pub struct ReconArgs {
    /// How many of the last runs to show.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub runs: u64,
}

pub async fn run(settings: &Settings, args: ReconArgs, json: bool) -> Result<ExitCode> {
    let stores = Stores::open(settings, &[Actor::Recon]).await?;
    let db = stores
        .get(Actor::Recon)
        .context("the reconciliation actor's database")?;
    let r = report(db, args.runs).await?;
    if json {
        output::json(&r)?;
        return Ok(ExitCode::SUCCESS);
    }
    if r.runs.is_empty() {
        println!("no reconciliation run yet (the recon actor runs every recon.interval_s)");
    }
    for run in &r.runs {
        println!(
            "{}  provider {} (+{} records)  checked {}  opened {}  resolved {}  open {}{}",
            run.finished_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            run.provider,
            run.provider_read,
            run.checked,
            run.opened,
            run.resolved,
            run.open,
            run.error
                .as_deref()
                .map(|e| format!("  error: {e}"))
                .unwrap_or_default()
        );
    }
    println!("provider checkpoint: {}", r.provider_checkpoint);
    println!(
        "waiting to be compared: {} (changed, compared once quiet for recon.settle_s)",
        r.pending
    );
    for o in &r.open {
        let m = &o.mismatch;
        println!(
            "OPEN {} {} since {}: {} (off by {}{}){}",
            m.kind,
            m.key,
            o.opened_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            m.message,
            m.difference_minor,
            m.currency.map(|c| format!(" {c}")).unwrap_or_default(),
            m.action
                .as_deref()
                .map(|a| format!(" [{a}]"))
                .unwrap_or_default()
        );
    }
    if r.open_count > r.open.len() as u64 {
        println!(
            "… {} more open (the first {LISTED_MAX} are listed)",
            r.open_count - r.open.len() as u64
        );
    }
    println!("open mismatches: {}", r.open_count);
    Ok(ExitCode::SUCCESS)
}
