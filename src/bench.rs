//! `falcon bench`: drives payment sagas and reports throughput, end-to-end
//! latency, outcomes, messages per saga and the runtime's cost, then checks
//! the money invariants (a fast wrong answer is a failure).
//!
//! Closed loop (`--concurrency C`): C payments in flight, a new one as soon
//! as one ends. Open loop (`--rate R`): R payments per second whatever the
//! system does, for latency at a given load. Latency is from just before
//! the command is published to the moment the bench receives the saga's
//! terminal event. The first `--warmup` payments are not measured.

// Floats here are seconds, megabytes and rates: measurements, never money.
#![allow(clippy::float_arithmetic)]

use std::collections::{BTreeMap, HashMap};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use async_nats::jetstream::{self, consumer, stream::Stream};
use bytes::Bytes;
use clap::Args;
use falcon_nats::publish::publish_all;
use falcon_nats::OutMsg;
use falcon_runtime::runtime::Stores;
use falcon_runtime::{invariants, Settings};
use falcon_sagas::Actor;
use falcon_schemas::subject::{STREAM_CMD, STREAM_EVT};
use falcon_schemas::{Event, EventData};
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::{oneshot, Semaphore};

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

#[derive(Debug, Serialize)]
pub struct Report {
    pub mode: String,
    pub payments: usize,
    pub terminal: usize,
    pub elapsed_s: f64,
    pub sagas_per_s: f64,
    pub latency_ms: Latency,
    pub outcomes: BTreeMap<String, usize>,
    pub messages_per_saga: f64,
    pub runtime: Option<Usage>,
    pub invariants_ok: bool,
    pub violations: Vec<String>,
}

#[derive(Debug, Serialize, Default)]
pub struct Latency {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Serialize, Clone, Copy)]
pub struct Usage {
    pub pid: u32,
    pub peak_rss_mb: f64,
    pub cpu_s: f64,
}

/// Reads `/proc/<pid>`: the peak resident set (VmHWM) and user+system CPU.
fn usage(pid: u32) -> Result<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let hwm_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmHWM")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at ')'.
    let after = stat.rsplit_once(')').map(|(_, r)| r).context("bad stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> f64 { fields.get(i).and_then(|v| v.parse().ok()).unwrap_or(0.0) };
    // utime and stime are fields 14 and 15; `after` starts at field 3.
    let clk = clock_ticks();
    Ok(Usage {
        pid,
        peak_rss_mb: hwm_kb / 1024.0,
        cpu_s: (ticks(11) + ticks(12)) / clk,
    })
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Waiters for terminal events, by payment id.
type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<String>>>>;

fn pay_msg(id: &str, from: &str, to: &str, amount: &str) -> OutMsg {
    let body = serde_json::json!({"payment_id": id, "from_wallet": from, "to_wallet": to, "amount": amount, "currency": "USD"});
    OutMsg {
        subject: "falcon.cmd.payment.create".into(),
        msg_id: uuid::Uuid::now_v7().to_string(),
        traceparent: Some(falcon_nats::trace::TraceParent::new_root().to_string()),
        payload: Bytes::from(serde_json::to_vec(&body).unwrap_or_default()),
    }
}

async fn stream_messages(js: &jetstream::Context, name: &str) -> Result<u64> {
    let mut s: Stream = js.get_stream(name).await?;
    Ok(s.info().await?.state.messages)
}

/// Follows every payment's terminal event from now on and wakes its waiter.
async fn follow_terminals(
    js: &jetstream::Context,
    waiters: Waiters,
) -> Result<tokio::task::JoinHandle<()>> {
    let stream = js.get_stream(STREAM_EVT).await?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subjects: vec![
                "falcon.evt.payment.completed.>".into(),
                "falcon.evt.payment.failed.>".into(),
                "falcon.evt.payment.rejected.>".into(),
            ],
            deliver_policy: consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    Ok(tokio::spawn(async move {
        while let Some(Ok(m)) = messages.next().await {
            let Ok(e) = Event::decode(&m.payload) else {
                continue;
            };
            let outcome = match &e.data {
                EventData::PaymentCompleted(_) => "completed".to_owned(),
                EventData::PaymentFailed(f) => format!("failed:{}", f.reason.as_str()),
                EventData::PaymentRejected(r) => format!("rejected:{}", r.reason.as_str()),
                _ => continue,
            };
            let waiter = waiters.lock().ok().and_then(|mut w| w.remove(&e.sagaid));
            if let Some(tx) = waiter {
                let _ = tx.send(outcome);
            }
        }
    }))
}

/// Opens and funds the wallets (idempotent: same ids, same references).
async fn setup(js: &jetstream::Context, wallets: usize, run_id: &str, funds: &str) -> Result<()> {
    let mut msgs = Vec::new();
    for i in 0..wallets {
        for side in ["payer", "payee"] {
            let id = format!("bench-{run_id}-{side}-{i}");
            msgs.push(OutMsg {
                subject: "falcon.cmd.wallet.open".into(),
                msg_id: format!("open-{id}"),
                traceparent: None,
                payload: Bytes::from(serde_json::to_vec(
                    &serde_json::json!({"wallet_id": id, "owner": "bench", "currency": "USD"}),
                )?),
            });
        }
    }
    for r in publish_all(js, &msgs).await {
        r?;
    }
    let deposits: Vec<OutMsg> = (0..wallets)
        .map(|i| {
            let id = format!("bench-{run_id}-payer-{i}");
            OutMsg {
                subject: "falcon.cmd.wallet.deposit".into(),
                msg_id: format!("deposit-{id}"),
                traceparent: None,
                payload: Bytes::from(
                    serde_json::to_vec(&serde_json::json!({"wallet_id": id, "amount": funds, "currency": "USD", "reference": format!("bench-{id}")}))
                        .unwrap_or_default(),
                ),
            }
        })
        .collect();
    // Wait for every deposit before paying.
    let stream = js.get_stream(STREAM_EVT).await?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: "falcon.evt.wallet.deposited.>".into(),
            deliver_policy: consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await?;
    let mut seen = consumer.messages().await?;
    for r in publish_all(js, &deposits).await {
        r?;
    }
    let mut left: std::collections::HashSet<String> = (0..wallets)
        .map(|i| format!("bench-{run_id}-payer-{i}"))
        .collect();
    tokio::time::timeout(Duration::from_secs(120), async {
        while !left.is_empty() {
            let m = seen.next().await.context("event stream ended")??;
            if let Ok(e) = Event::decode(&m.payload) {
                left.remove(&e.sagaid);
            }
        }
        Ok::<_, anyhow::Error>(())
    })
    .await
    .context("wallets not funded within 120 s: is `falcon run` running?")??;
    Ok(())
}

struct Spawned {
    child: tokio::process::Child,
}

/// Starts `falcon run` with this process's configuration; the wallet set-up
/// waits for its events, so no separate readiness check is needed.
async fn spawn_runtime(config: Option<&std::path::Path>) -> Result<Spawned> {
    let exe = std::env::current_exe()?;
    let mut cmd = tokio::process::Command::new(exe);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    // HTTP only where FALCON__HTTP__LISTEN says: the default port may be
    // taken by a runtime already serving on this machine.
    cmd.args(["run"])
        .env(
            "FALCON__HTTP__LISTEN",
            std::env::var("FALCON__HTTP__LISTEN").unwrap_or_default(),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true);
    let child = cmd.spawn().context("starting falcon run")?;
    Ok(Spawned { child })
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

pub async fn run(
    settings: &Settings,
    config: Option<&std::path::Path>,
    args: &BenchArgs,
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
    let client = falcon_nats::connect(&settings.nats.url, "falcon-bench").await?;
    let js = jetstream::new(client.clone());
    falcon_runtime::runtime::apply_topology(&js, settings).await?;
    let mut spawned = if args.spawn {
        Some(spawn_runtime(config).await?)
    } else {
        None
    };
    let pid = spawned.as_ref().and_then(|s| s.child.id()).or(args.pid);

    let run_id = format!("{}", uuid::Uuid::now_v7().simple());
    let run_id = &run_id[run_id.len() - 8..];
    let total = args.warmup + args.payments;
    // Enough for every payment from one wallet, with room.
    let per_wallet = total.div_ceil(args.wallets) + 1;
    let funds = amount.amount() * rust_decimal::Decimal::from(per_wallet as u64);
    setup(&js, args.wallets, run_id, &funds.to_string()).await?;

    let waiters: Waiters = Arc::default();
    let follower = follow_terminals(&js, waiters.clone()).await?;
    let mode = match (args.concurrency, args.rate) {
        (_, Some(r)) => format!("open loop, {r}/s"),
        (c, None) => format!("closed loop, concurrency {}", c.unwrap_or(256)),
    };

    let start_one = {
        let js = js.clone();
        let waiters = waiters.clone();
        let amount = args.amount.clone();
        move |i: usize| {
            let js = js.clone();
            let waiters = waiters.clone();
            let id = format!("bench-{run_id}-p{i}");
            let w = i % args.wallets;
            let msg = pay_msg(
                &id,
                &format!("bench-{run_id}-payer-{w}"),
                &format!("bench-{run_id}-payee-{w}"),
                &amount,
            );
            async move {
                let (tx, rx) = oneshot::channel();
                if let Ok(mut w) = waiters.lock() {
                    w.insert(id.clone(), tx);
                }
                let t0 = Instant::now();
                publish_all(&js, std::slice::from_ref(&msg))
                    .await
                    .into_iter()
                    .next()
                    .context("no publish result")??;
                Ok::<_, anyhow::Error>((t0, rx))
            }
        }
    };

    let run_phase = |from: usize, to: usize| {
        let start_one = start_one.clone();
        let concurrency = args.concurrency.unwrap_or(256);
        let rate = args.rate;
        let timeout = args.timeout;
        async move {
            let results: Arc<Mutex<Vec<(Duration, String)>>> = Arc::default();
            let mut tasks = tokio::task::JoinSet::new();
            let began = Instant::now();
            let permits = Arc::new(Semaphore::new(concurrency));
            let interval = rate.map(|r| Duration::from_secs_f64(1.0 / r));
            for i in from..to {
                // Open loop: start on the clock. Closed loop: when one ends.
                let permit = match interval {
                    Some(every) => {
                        let due = began + every.mul_f64((i - from) as f64);
                        tokio::time::sleep_until(due.into()).await;
                        None
                    }
                    None => Some(permits.clone().acquire_owned().await?),
                };
                let fut = start_one(i);
                let results = results.clone();
                tasks.spawn(async move {
                    let _permit = permit;
                    let (t0, rx) = fut.await?;
                    let outcome = tokio::time::timeout(timeout, rx).await??;
                    results
                        .lock()
                        .map_err(|_| anyhow::anyhow!("lock"))?
                        .push((t0.elapsed(), outcome));
                    Ok::<_, anyhow::Error>(())
                });
            }
            let mut errors = 0;
            while let Some(r) = tasks.join_next().await {
                if !matches!(r, Ok(Ok(()))) {
                    errors += 1;
                }
            }
            let elapsed = began.elapsed();
            let results =
                std::mem::take(&mut *results.lock().map_err(|_| anyhow::anyhow!("lock"))?);
            Ok::<_, anyhow::Error>((results, elapsed, errors))
        }
    };

    if args.warmup > 0 {
        let (_, _, errors) = run_phase(0, args.warmup).await?;
        ensure!(
            errors == 0,
            "{errors} warm-up payments did not end within {:?}",
            args.timeout
        );
    }
    let msgs_before =
        stream_messages(&js, STREAM_CMD).await? + stream_messages(&js, STREAM_EVT).await?;
    let cpu_before = pid.and_then(|p| usage(p).ok());
    let (results, elapsed, errors) = run_phase(args.warmup, total).await?;
    let cpu_after = pid.and_then(|p| usage(p).ok());
    follower.abort();
    // The relay publishes after the terminal event is out: settle a moment
    // for the counts by waiting until the outboxes are empty (bounded).
    let stores = Stores::open(settings, &Actor::ALL).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut report = loop {
        let report = invariants::check(&stores, true).await?;
        if report.ok() || Instant::now() > deadline {
            break report;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    invariants::check_streams(&stores, settings, &js, &mut report).await?;
    let msgs_after =
        stream_messages(&js, STREAM_CMD).await? + stream_messages(&js, STREAM_EVT).await?;

    let mut latencies: Vec<Duration> = results.iter().map(|(d, _)| *d).collect();
    latencies.sort();
    let mut outcomes = BTreeMap::new();
    for (_, o) in &results {
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
    let out = Report {
        mode,
        payments: args.payments,
        terminal: results.len(),
        elapsed_s: elapsed.as_secs_f64(),
        sagas_per_s: results.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        latency_ms: Latency {
            p50: percentile(&latencies, 50.0),
            p95: percentile(&latencies, 95.0),
            p99: percentile(&latencies, 99.0),
            max: latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        },
        outcomes,
        messages_per_saga: (msgs_after.saturating_sub(msgs_before)) as f64 / args.payments as f64,
        runtime,
        invariants_ok: report.ok(),
        violations: report
            .violations
            .iter()
            .map(|v| format!("invariant {} {}: {}", v.invariant, v.code, v.detail))
            .collect(),
    };
    if let Some(s) = spawned.as_mut() {
        stop(&mut s.child).await;
    }
    if json {
        crate::output::json(&out)?;
    } else {
        print_report(&out);
    }
    if errors > 0 {
        bail!(
            "{errors} of {} payments did not reach a terminal event within {:?}",
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

async fn stop(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        if tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
}

fn print_report(r: &Report) {
    println!("mode:              {}", r.mode);
    println!(
        "payments:          {} measured, {} terminal in {:.2} s",
        r.payments, r.terminal, r.elapsed_s
    );
    println!("throughput:        {:.0} sagas/s", r.sagas_per_s);
    println!(
        "latency (ms):      p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1}",
        r.latency_ms.p50, r.latency_ms.p95, r.latency_ms.p99, r.latency_ms.max
    );
    let outcomes: Vec<String> = r.outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!("outcomes:          {}", outcomes.join(", "));
    println!("messages per saga: {:.1}", r.messages_per_saga);
    match &r.runtime {
        Some(u) => println!(
            "runtime (pid {}):  peak RSS {:.0} MB, CPU {:.1} s",
            u.pid, u.peak_rss_mb, u.cpu_s
        ),
        None => println!("runtime:           not measured (use --spawn or --pid)"),
    }
    println!(
        "invariants:        {}",
        if r.invariants_ok { "ok" } else { "VIOLATED" }
    );
    for v in &r.violations {
        println!("  {v}");
    }
}
