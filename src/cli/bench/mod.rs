//! `falcon bench`: drives payment sagas and reports throughput, end-to-end
//! latency, outcomes, messages per saga and the runtime's cost, then checks
//! the money invariants (a fast wrong answer is a failure).
//!
//! Closed loop (`--concurrency C`): C payments in flight, a new one as soon
//! as one ends. Open loop (`--rate R`): R payments per second whatever the
//! system does, for latency at a given load. Latency is from just before
//! the command is published to the moment the bench receives the saga's
//! terminal event. The first `--warmup` payments are not measured.
//!
//! This module is the driver ([`run`]); [`load`] opens the wallets and
//! drives the payments, [`process`] starts and measures `falcon run`,
//! [`report`] is what is printed.

// Floats here are seconds, megabytes and rates: measurements, never money.
#![allow(clippy::float_arithmetic)]

mod load;
mod process;
mod report;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use async_nats::jetstream;
use clap::Args;
use falcon_runtime::runtime::Stores;
use falcon_runtime::{invariants, Settings};
use falcon_schemas::subject::{STREAM_CMD, STREAM_EVT};

use self::load::{stream_messages, Load, CONCURRENCY_DEFAULT};
use self::report::{Latency, Report, Usage};
use crate::actors;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Measured payments (after the warm-up).
    #[arg(long, default_value_t = 10_000)]
    pub payments: usize,
    /// Payments before measuring, not counted.
    #[arg(long, default_value_t = 500)]
    pub warmup: usize,
    /// Closed loop: payments in flight at once.
    #[arg(long, conflicts_with = "rate")]
    pub concurrency: Option<usize>,
    /// Open loop: payments started per second.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Payer wallets (each pays its own payee); more spreads row contention.
    #[arg(long, default_value_t = 64)]
    pub wallets: usize,
    /// Amount of each payment (USD).
    #[arg(long, default_value = "1.00")]
    pub amount: String,
    /// Start `falcon run` for the bench (same configuration), and report its
    /// peak RSS and CPU time; stop it after.
    #[arg(long)]
    pub spawn: bool,
    /// Report the peak RSS and CPU time of this running `falcon run` (its
    /// pid) instead.
    #[arg(long, conflicts_with = "spawn")]
    pub pid: Option<u32>,
    /// Give up waiting for terminal events after this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    pub timeout: Duration,
}

/// Longest wait, after the last payment ended, for the outboxes to empty
/// so that the invariants and message counts are settled.
const SETTLE_WAIT: Duration = Duration::from_secs(30);

/// `config` is the `--config` path, which a spawned `falcon run` reads too.
pub async fn run(
    settings: &Settings,
    config: Option<&std::path::Path>,
    args: BenchArgs,
    json: bool,
) -> Result<ExitCode> {
    ensure!(args.wallets > 0, "--wallets must be at least 1");
    ensure!(args.payments > 0, "--payments must be at least 1");
    if let Some(r) = args.rate {
        ensure!(r > 0.0 && r.is_finite(), "--rate must be a positive number");
    }
    let amount = falcon_schemas::Money::parse(
        &args.amount,
        falcon_schemas::Currency::from_code("USD").context("USD")?,
    )
    .map_err(|e| anyhow::anyhow!("--amount: {e}"))?;
    falcon_runtime::runtime::provision(settings, "bench").await?;
    let client = settings
        .connect_as(&settings.nats.identity, "falcon-bench")
        .await?;
    let js = jetstream::new(client.clone());
    let treasury = settings
        .connect_as(&settings.security.treasury, "falcon-bench-treasury")
        .await?;
    // Message counts of both streams: read as the operator.
    let operator = jetstream::new(
        settings
            .connect_as(&settings.security.operator, "falcon-bench-operator")
            .await?,
    );
    let mut spawned = if args.spawn {
        Some(process::spawn_runtime(config).await?)
    } else {
        None
    };
    let pid = spawned.as_ref().and_then(|s| s.child.id()).or(args.pid);

    let run_id = format!("{}", uuid::Uuid::now_v7().simple());
    let run_id = run_id[run_id.len() - 8..].to_owned();
    let total = args.warmup + args.payments;
    // Enough for every payment from one wallet, with room.
    let per_wallet = total.div_ceil(args.wallets) + 1;
    let funds = amount.amount() * rust_decimal::Decimal::from(per_wallet as u64);
    let concurrency = args.concurrency.unwrap_or(CONCURRENCY_DEFAULT);
    let load = Load::new(
        (js.clone(), settings.nats.identity.clone()),
        (jetstream::new(treasury), settings.security.treasury.clone()),
        run_id,
        args.wallets,
        args.amount.clone(),
        concurrency,
        args.rate,
        args.timeout,
    );
    load.setup(&funds.to_string()).await?;

    let follower = load.follow_terminals().await?;
    let mode = match args.rate {
        Some(r) => format!("open loop, {r}/s"),
        None => format!("closed loop, concurrency {concurrency}"),
    };

    if args.warmup > 0 {
        let warmup = load.phase(0, args.warmup).await?;
        ensure!(
            warmup.errors == 0,
            "{} warm-up payments did not end within {:?}",
            warmup.errors,
            args.timeout
        );
    }
    let msgs_before = stream_messages(&operator, STREAM_CMD).await?
        + stream_messages(&operator, STREAM_EVT).await?;
    let cpu_before = pid.and_then(|p| process::usage(p).ok());
    let measured = load.phase(args.warmup, total).await?;
    let cpu_after = pid.and_then(|p| process::usage(p).ok());
    follower.abort();
    // The relay publishes after the terminal event is out: settle a moment
    // for the counts by waiting until the outboxes are empty (bounded).
    let stores = Stores::open(settings, &actors::all()).await?;
    let deadline = Instant::now() + SETTLE_WAIT;
    let mut checked = loop {
        let checked = invariants::check(&stores, true).await?;
        if checked.ok() || Instant::now() > deadline {
            break checked;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    invariants::check_streams(&stores, settings, &operator, &mut checked).await?;
    let msgs_after = stream_messages(&operator, STREAM_CMD).await?
        + stream_messages(&operator, STREAM_EVT).await?;

    let results = &measured.results;
    let mut latencies: Vec<Duration> = results.iter().map(|(d, _)| *d).collect();
    latencies.sort();
    let mut outcomes = BTreeMap::new();
    for (_, o) in results {
        *outcomes.entry(o.clone()).or_insert(0) += 1;
    }
    let runtime = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) => Some(Usage {
            pid: a.pid,
            peak_rss_mb: a.peak_rss_mb,
            cpu_s: a.cpu_s - b.cpu_s,
        }),
        _ => None,
    };
    let elapsed = measured.elapsed;
    let out = Report {
        mode,
        payments: args.payments,
        terminal: results.len(),
        elapsed_s: elapsed.as_secs_f64(),
        sagas_per_s: results.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        latency_ms: Latency::of(&latencies),
        outcomes,
        messages_per_saga: (msgs_after.saturating_sub(msgs_before)) as f64 / args.payments as f64,
        runtime,
        invariants_ok: checked.ok(),
        violations: checked
            .violations
            .iter()
            .map(|v| format!("invariant {} {}: {}", v.invariant, v.code, v.detail))
            .collect(),
    };
    if let Some(s) = spawned.as_mut() {
        process::stop(&mut s.child).await;
    }
    if json {
        crate::output::json(&out)?;
    } else {
        report::print(&out);
    }
    if measured.errors > 0 {
        bail!(
            "{} of {} payments did not reach a terminal event within {:?}",
            measured.errors,
            args.payments,
            args.timeout
        );
    }
    if !out.invariants_ok {
        bail!(
            "money invariants violated after the bench: {}",
            out.violations.join("; ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
