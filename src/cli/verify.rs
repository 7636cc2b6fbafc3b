//! `falcon verify`: checks the money invariants (DESIGN.md) across every
//! registered actor's database and the streams; a non-zero exit when one
//! fails.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use falcon_kernel::verify::LISTED_PER_KIND_MAX;
use falcon_runtime::runtime::Stores;
use falcon_runtime::{invariants, Settings};

use crate::{actors, output};

/// `falcon verify` takes no arguments of its own.
#[derive(Debug, Args)]
pub struct VerifyArgs {}

pub async fn run(settings: &Settings, _args: VerifyArgs, json: bool) -> Result<ExitCode> {
    let stores = Stores::open(settings, &actors::all()).await?;
    let mut report = invariants::check(&stores, false).await?;
    let client = settings
        .connect_as(&settings.security.operator, "falcon-cli")
        .await?;
    let js = async_nats::jetstream::new(client);
    invariants::check_streams(&stores, settings, &js, &mut report).await?;
    if json {
        output::json(&report)?;
    } else {
        let c = &report.counts;
        println!(
            "wallets: {}  ledger entries: {}  holds open: {}",
            c.wallets, c.ledger_entries, c.holds_open
        );
        println!("payments: {:?}", c.payments_by_state);
        println!("refunds: {:?}", c.refunds_by_state);
        println!("outbox backlog: {:?}", c.outbox_backlog);
        println!("dead letters: {}", c.dlq_depth.unwrap_or(0));
        for v in &report.violations {
            println!(
                "VIOLATION invariant {} {}: {}",
                v.invariant, v.code, v.detail
            );
        }
        for (code, n) in &report.unlisted {
            println!("VIOLATION {code}: {n} more not listed (the first {LISTED_PER_KIND_MAX} are)");
        }
        println!(
            "{}",
            if report.ok() {
                "verify: ok"
            } else {
                "verify: FAILED"
            }
        );
    }
    if report.ok() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("falcon: {} money invariant violation(s)", report.found());
        Ok(ExitCode::FAILURE)
    }
}
