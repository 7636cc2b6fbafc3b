//! The command line: verbs of DESIGN.md and their dispatch.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use falcon_runtime::runtime::{apply_topology, Stores};
use falcon_runtime::{invariants, Runtime, Settings};
use falcon_sagas::Actor;

use crate::{config, dlq, inspect, output, send};

#[derive(Debug, Parser)]
#[command(
    name = "falcon",
    version,
    about = "FalconPay: payment sagas on NATS JetStream"
)]
pub struct Cli {
    /// Configuration file (default: ./falcon.toml when present).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,
    /// Log lines on stderr: json, text, or auto (json unless stderr is a terminal).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "auto",
        env = "FALCON_LOG_FORMAT"
    )]
    pub log_format: crate::telemetry::LogFormat,
    #[command(subcommand)]
    pub verb: Verb,
}

#[derive(Debug, Subcommand)]
pub enum Verb {
    /// Start the supervised actors (all by default) until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Provision the JetStream streams and consumers.
    #[command(subcommand)]
    Streams(StreamsVerb),
    /// Open, fund and inspect wallets.
    #[command(subcommand)]
    Wallet(WalletVerb),
    /// Pay from one wallet to another (publishes falcon.cmd.payment.create).
    Pay(PayArgs),
    /// Refund all or part of a completed payment (falcon.cmd.payment.refund).
    Refund(RefundArgs),
    /// Inspect sagas.
    #[command(subcommand)]
    Saga(SagaVerb),
    /// Inspect, re-drive and purge dead letters (FALCON_DLQ).
    #[command(subcommand)]
    Dlq(DlqVerb),
    /// Re-deliver a stream range to one actor, or rebuild a read model from FALCON_EVT.
    Replay(ReplayArgs),
    /// Fault injection (needs chaos.enabled in the running processes).
    #[command(subcommand)]
    Chaos(ChaosVerb),
    /// Say whether acknowledged messages are durable on the connected server.
    Doctor,
    /// Check the money invariants; non-zero exit when one fails.
    Verify,
    /// The effective configuration.
    #[command(subcommand)]
    Config(ConfigVerb),
    /// Drive payment sagas and report throughput, latency, outcomes, messages
    /// per saga and the runtime's cost; ends by checking the money invariants.
    Bench(crate::bench::BenchArgs),
}

#[derive(Debug, Subcommand)]
pub enum ConfigVerb {
    /// Print the effective configuration (defaults < file < environment),
    /// passwords masked: TOML, or JSON with --json.
    Show,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["actor", "rebuild"]))]
pub struct ReplayArgs {
    /// The actor to re-deliver to: payment, risk or wallet.
    #[arg(long, requires = "from")]
    pub actor: Option<String>,
    /// The stream: evt (FALCON_EVT) or cmd (FALCON_CMD).
    #[arg(long, default_value = "evt")]
    pub stream: String,
    /// First stream sequence.
    #[arg(long, group = "from")]
    pub from_seq: Option<u64>,
    /// Start time: RFC 3339 (2026-11-22T10:00:00Z) or a duration ago (10m).
    #[arg(long, group = "from")]
    pub since: Option<String>,
    /// Last stream sequence (inclusive).
    #[arg(long)]
    pub to_seq: Option<u64>,
    /// Rebuild a read model from FALCON_EVT alone: saga-view.
    #[arg(long, conflicts_with_all = ["actor", "from_seq", "since", "to_seq"])]
    pub rebuild: Option<String>,
    /// Rebuild even while the read model is being consumed live.
    #[arg(long, requires = "rebuild")]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum ChaosVerb {
    /// Kill an actor of a running `falcon run` through falcon.ctl.<node>.kill.<actor>; its supervisor restarts it.
    Kill {
        /// payment, risk, wallet, payment-relay, payment-deadlines, …, or `any`.
        actor: String,
        /// The node whose actor to kill (default: this config's node).
        #[arg(long)]
        node: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum DlqVerb {
    /// List dead letters, oldest first.
    List {
        /// Only those whose original subject matches, e.g. 'falcon.evt.wallet.>'.
        #[arg(long)]
        subject: Option<String>,
    },
    /// One dead letter with its headers and body.
    Show { seq: u64 },
    /// Re-drive dead letters through their actor; each leaves the DLQ only once it succeeded.
    Replay {
        /// The dead letter's sequence in FALCON_DLQ.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        seq: Option<u64>,
        /// Every dead letter (or every one matching --subject).
        #[arg(long)]
        all: bool,
        #[arg(long, requires = "all")]
        subject: Option<String>,
        /// Re-drive even when the saga is already terminal.
        #[arg(long)]
        force: bool,
    },
    /// Delete dead letters for good.
    Purge {
        #[arg(long)]
        subject: Option<String>,
        /// Confirms the deletion.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Refuse to start unless `falcon doctor` finds acknowledged messages durable.
    #[arg(long)]
    pub require_durable: bool,
    /// Actors to run, comma-separated: payment,risk,wallet.
    #[arg(long, value_delimiter = ',', default_values_t = ["payment".to_string(), "risk".to_string(), "wallet".to_string()])]
    pub actors: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum StreamsVerb {
    /// Create or update streams and consumers (idempotent).
    Apply,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Wait for the outcome and print it.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Subcommand)]
pub enum WalletVerb {
    /// Open a wallet (falcon.cmd.wallet.open).
    Open {
        wallet_id: String,
        #[arg(long)]
        owner: String,
        #[arg(long)]
        currency: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Deposit into a wallet from the funding account (falcon.cmd.wallet.deposit).
    Deposit {
        wallet_id: String,
        /// Decimal string, e.g. 100.00.
        amount: String,
        #[arg(long)]
        currency: String,
        /// Idempotency key (default: generated).
        #[arg(long)]
        reference: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Show a wallet's balance, held and available amounts.
    Balance { wallet_id: String },
}

#[derive(Debug, Args)]
pub struct PayArgs {
    #[arg(long)]
    pub from: String,
    #[arg(long)]
    pub to: String,
    /// Decimal string, e.g. 12.50.
    #[arg(long)]
    pub amount: String,
    #[arg(long)]
    pub currency: String,
    /// Payment id, the idempotency key (default: generated).
    #[arg(long)]
    pub id: Option<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Args)]
pub struct RefundArgs {
    #[arg(long)]
    pub payment: String,
    /// Decimal string; the whole remaining amount when absent.
    #[arg(long)]
    pub amount: Option<String>,
    /// Refund id, the idempotency key (default: generated).
    #[arg(long)]
    pub id: Option<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

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

fn parse_actors(names: &[String]) -> Result<Vec<Actor>> {
    let mut actors = Vec::new();
    for n in names {
        let a = Actor::parse(n.trim())
            .with_context(|| format!("unknown actor {n:?} (payment, risk, wallet)"))?;
        if !actors.contains(&a) {
            actors.push(a);
        }
    }
    if actors.is_empty() {
        bail!("--actors names no actor");
    }
    Ok(actors)
}

pub async fn dispatch(cli: Cli) -> Result<ExitCode> {
    let settings = config::load(cli.config.as_deref())?;
    let json = cli.json;
    match cli.verb {
        Verb::Bench(args) => crate::bench::run(&settings, cli.config.as_deref(), &args, json).await,
        Verb::Run(args) => {
            run(
                &settings,
                &parse_actors(&args.actors)?,
                args.require_durable,
            )
            .await
        }
        Verb::Doctor => doctor(&settings, json).await,
        Verb::Streams(StreamsVerb::Apply) => streams_apply(&settings, json).await,
        Verb::Wallet(WalletVerb::Balance { wallet_id }) => {
            balance(&settings, &wallet_id, json).await
        }
        Verb::Wallet(WalletVerb::Open {
            wallet_id,
            owner,
            currency,
            wait,
        }) => {
            let body =
                serde_json::json!({ "wallet_id": wallet_id, "owner": owner, "currency": currency });
            send::command(&settings, "wallet.open", body, &wallet_id, &wait, json).await
        }
        Verb::Wallet(WalletVerb::Deposit {
            wallet_id,
            amount,
            currency,
            reference,
            wait,
        }) => {
            let reference = reference.unwrap_or_else(|| send::generated_id("dep"));
            let body = serde_json::json!({ "wallet_id": wallet_id, "amount": amount, "currency": currency, "reference": reference });
            send::command(&settings, "wallet.deposit", body, &wallet_id, &wait, json).await
        }
        Verb::Pay(a) => {
            let id = a.id.unwrap_or_else(|| send::generated_id("pay"));
            let body = serde_json::json!({ "payment_id": id, "from_wallet": a.from, "to_wallet": a.to, "amount": a.amount, "currency": a.currency });
            send::command(&settings, "payment.create", body, &id, &a.wait, json).await
        }
        Verb::Refund(a) => {
            let id = a.id.unwrap_or_else(|| send::generated_id("ref"));
            let mut body = serde_json::json!({ "payment_id": a.payment, "refund_id": id });
            if let Some(amount) = a.amount {
                body["amount"] = serde_json::Value::String(amount);
            }
            send::command(&settings, "payment.refund", body, &id, &a.wait, json).await
        }
        Verb::Saga(SagaVerb::Show { id }) => inspect::show(&settings, &id, json).await,
        Verb::Saga(SagaVerb::List {
            state,
            since,
            limit,
        }) => saga_list(&settings, state, since, limit, json).await,
        Verb::Saga(SagaVerb::Stuck { older_than }) => saga_stuck(&settings, older_than, json).await,
        Verb::Dlq(verb) => dlq::run(&settings, verb, json).await,
        Verb::Replay(args) => replay(&settings, args, json).await,
        Verb::Chaos(ChaosVerb::Kill { actor, node }) => {
            chaos_kill(&settings, &actor, node, json).await
        }
        Verb::Verify => verify(&settings, json).await,
        Verb::Config(ConfigVerb::Show) => {
            let masked = settings.masked();
            if json {
                output::json(&masked)?;
            } else {
                print!(
                    "{}",
                    toml::to_string(&masked).context("printing the configuration")?
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn doctor_report(settings: &Settings) -> Result<falcon_nats::doctor::Report> {
    let client = falcon_nats::connect(&settings.nats.url, "falcon-doctor").await?;
    let js = async_nats::jetstream::new(client.clone());
    let specs = falcon_runtime::runtime::consumer_specs(settings, &Actor::ALL);
    let consumers: Vec<(&str, String)> = specs.iter().map(|s| (s.stream, s.name.clone())).collect();
    Ok(
        falcon_nats::doctor::examine(&client, &js, Some(&settings.nats.monitor_url), &consumers)
            .await,
    )
}

async fn doctor(settings: &Settings, json: bool) -> Result<ExitCode> {
    let report = doctor_report(settings).await?;
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

async fn run(settings: &Settings, actors: &[Actor], require_durable: bool) -> Result<ExitCode> {
    if require_durable {
        let client = falcon_nats::connect(&settings.nats.url, "falcon-doctor").await?;
        apply_topology(&async_nats::jetstream::new(client), settings).await?;
        let report = doctor_report(settings).await?;
        if !report.durable {
            let failing: Vec<String> = report
                .checks
                .iter()
                .filter(|c| !c.ok)
                .map(|c| format!("{} = {}", c.name, c.value))
                .collect();
            bail!(
                "--require-durable: the server falls short ({}); run `falcon doctor`",
                failing.join("; ")
            );
        }
    }
    // Listen first: liveness holds while the actors connect and migrate.
    let endpoint = if settings.http.listen.is_empty() {
        None
    } else {
        Some(crate::http::serve(&settings.http.listen).await?)
    };
    let runtime = Runtime::start(settings, actors).await?;
    if let Some(e) = &endpoint {
        e.ready_with(runtime.probe().clone());
    }
    let names: Vec<&str> = actors.iter().map(Actor::as_str).collect();
    eprintln!(
        "falcon: running {} as {}{} (Ctrl-C to stop)",
        names.join(","),
        runtime.instance(),
        endpoint
            .as_ref()
            .map(|e| format!(", http on {}", e.addr))
            .unwrap_or_default()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let signal = tokio::select! {
        r = tokio::signal::ctrl_c() => { r?; "SIGINT" }
        _ = term.recv() => "SIGTERM",
    };
    let grace = Duration::from_millis(settings.shutdown.grace_ms);
    eprintln!(
        "falcon: {signal}: stopping (grace {})",
        humantime::format_duration(grace)
    );
    let started = std::time::Instant::now();
    let stopped = tokio::time::timeout(grace, runtime.shutdown()).await;
    if let Some(e) = endpoint {
        e.stop();
    }
    match stopped {
        Ok(flushed) => {
            eprintln!(
                "falcon: stopped in {} ms; in-flight batches settled, {flushed} outbox events published",
                started.elapsed().as_millis()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(_) => bail!(
            "shutdown did not finish within shutdown.grace_ms = {} (what was not acked is redelivered, what was not published is published by the next start)",
            settings.shutdown.grace_ms
        ),
    }
}

async fn streams_apply(settings: &Settings, json: bool) -> Result<ExitCode> {
    let client = falcon_nats::connect(&settings.nats.url, "falcon-cli").await?;
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

async fn balance(settings: &Settings, wallet_id: &str, json: bool) -> Result<ExitCode> {
    let db = falcon_runtime::runtime::open_store(Actor::Wallet, settings).await?;
    let Some(b) = falcon_wallet::balance(&db, wallet_id).await? else {
        bail!("wallet {wallet_id} does not exist");
    };
    if json {
        output::json(&b)?;
    } else {
        output::table(
            &[
                "WALLET",
                "OWNER",
                "CURRENCY",
                "BALANCE",
                "HELD",
                "AVAILABLE",
            ],
            &[vec![
                b.wallet_id,
                b.owner,
                b.currency,
                b.balance,
                b.held,
                b.available,
            ]],
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn saga_list(
    settings: &Settings,
    state: Option<String>,
    since: Option<Duration>,
    limit: u64,
    json: bool,
) -> Result<ExitCode> {
    if let Some(s) = &state {
        if falcon_sagas::State::parse(s).is_none() {
            let all: Vec<&str> = falcon_sagas::State::ALL
                .iter()
                .map(|s| s.as_str())
                .collect();
            bail!("unknown state {s:?}; one of {}", all.join(", "));
        }
    }
    let since = match since {
        Some(d) => Some(
            chrono::Utc::now() - chrono::Duration::from_std(d).context("--since is too long")?,
        ),
        None => None,
    };
    let db = falcon_runtime::runtime::open_store(Actor::Payment, settings).await?;
    let rows = falcon_payment::view::list(&db, state.as_deref(), since, limit).await?;
    if json {
        output::json(&rows)?;
    } else {
        let table: Vec<Vec<String>> = rows
            .into_iter()
            .map(|r| {
                vec![
                    r.saga_id,
                    r.kind,
                    r.state,
                    if r.amount.is_empty() {
                        "-".to_owned()
                    } else {
                        format!("{} {}", r.amount, r.currency)
                    },
                    if r.from_wallet.is_empty() {
                        "-".to_owned()
                    } else {
                        format!("{} -> {}", r.from_wallet, r.to_wallet)
                    },
                    r.reason.unwrap_or_default(),
                    r.created_at.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
                ]
            })
            .collect();
        output::table(
            &[
                "SAGA", "KIND", "STATE", "AMOUNT", "WALLETS", "REASON", "STARTED",
            ],
            &table,
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn saga_stuck(settings: &Settings, older_than: Duration, json: bool) -> Result<ExitCode> {
    let before = chrono::Utc::now()
        - chrono::Duration::from_std(older_than).context("--older-than is too long")?;
    let db = falcon_runtime::runtime::open_store(Actor::Payment, settings).await?;
    // The saga view is folded from the events, so its state is the truth
    // as far as FALCON_EVT has got.
    let rows = falcon_payment::view::stuck(&db, before).await?;
    let now = chrono::Utc::now();
    let with_wait: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| (r, falcon_sagas::State::parse(&r.state)))
        .map(|(r, state)| {
            let wait = state.and_then(|s| s.waits_on());
            serde_json::json!({
                "saga_id": r.saga_id, "kind": r.kind,
                "state": state.map(|s| s.as_str()).unwrap_or(r.state.as_str()),
                "waits_on": wait.map(|w| serde_json::json!({
                    "actor": w.actor.as_str(),
                    "events": w.events.iter().map(|e| e.short()).collect::<Vec<_>>(),
                    "compensating": w.compensating,
                })),
                "idle_ms": (now - r.updated_at).num_milliseconds(),
                "amount": r.amount, "currency": r.currency, "created_at": r.created_at,
            })
        })
        .collect();
    if json {
        output::json(&with_wait)?;
    } else {
        let table: Vec<Vec<String>> = with_wait
            .iter()
            .map(|v| {
                let waits = match &v["waits_on"] {
                    serde_json::Value::Null => String::new(),
                    w => format!(
                        "{} for {}",
                        w["actor"].as_str().unwrap_or_default(),
                        w["events"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|e| e.as_str())
                            .collect::<Vec<_>>()
                            .join(" | ")
                    ),
                };
                vec![
                    v["saga_id"].as_str().unwrap_or_default().to_owned(),
                    v["kind"].as_str().unwrap_or_default().to_owned(),
                    v["state"].as_str().unwrap_or_default().to_owned(),
                    format!("{}s", v["idle_ms"].as_i64().unwrap_or(0) / 1000),
                    waits,
                ]
            })
            .collect();
        output::table(&["SAGA", "KIND", "STATE", "IDLE", "WAITS ON"], &table);
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_since(s: &str) -> Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let ago = humantime::parse_duration(s)
        .with_context(|| format!("--since {s:?} is neither RFC 3339 nor a duration"))?;
    Ok(chrono::Utc::now() - chrono::Duration::from_std(ago).context("--since is too long")?)
}

async fn replay(settings: &Settings, a: ReplayArgs, json: bool) -> Result<ExitCode> {
    use falcon_nats::read::Start;
    use falcon_runtime::replay;
    let client = falcon_nats::connect(&settings.nats.url, "falcon-cli").await?;
    let js = async_nats::jetstream::new(client);
    let (report, sagas) = if let Some(model) = &a.rebuild {
        if !replay::read_models().contains(&model.as_str()) {
            bail!(
                "unknown read model {model:?}; one of {}",
                replay::read_models().join(", ")
            );
        }
        let (report, sagas) = replay::rebuild(settings, &js, model, a.force).await?;
        (report, Some(sagas))
    } else {
        let actor = parse_actors(std::slice::from_ref(&a.actor.clone().unwrap_or_default()))?[0];
        let stream = match a.stream.as_str() {
            "evt" => falcon_schemas::subject::STREAM_EVT,
            "cmd" => falcon_schemas::subject::STREAM_CMD,
            other => bail!("unknown stream {other:?}; evt or cmd"),
        };
        let start = match (a.from_seq, &a.since) {
            (Some(seq), _) => Start::Seq(seq),
            (None, Some(since)) => Start::Time(parse_since(since)?),
            (None, None) => bail!("--from-seq or --since is required"),
        };
        (
            replay::redeliver(settings, &js, actor, stream, start, a.to_seq).await?,
            None,
        )
    };
    if json {
        let mut v = serde_json::to_value(&report)?;
        if let Some(n) = sagas {
            v["sagas"] = n.into();
        }
        output::json(&v)?;
    } else {
        println!(
            "read {} messages (seq {}..{}): {} applied, {} already processed, {} failed",
            report.messages,
            report.first_seq.map_or("-".into(), |s| s.to_string()),
            report.last_seq.map_or("-".into(), |s| s.to_string()),
            report.applied,
            report.duplicates,
            report.failed.len()
        );
        if let Some(n) = sagas {
            println!("saga view rebuilt: {n} sagas");
        }
        for (seq, error) in &report.failed {
            println!("  seq {seq}: {error}");
        }
    }
    Ok(if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn chaos_kill(
    settings: &Settings,
    actor: &str,
    node: Option<String>,
    json: bool,
) -> Result<ExitCode> {
    if actor.is_empty() || actor.contains(['.', '*', '>', ' ']) {
        bail!("{actor:?} is not an actor name");
    }
    let node = node.unwrap_or_else(|| settings.node.clone());
    let client = falcon_nats::connect(&settings.nats.url, "falcon-cli").await?;
    let subject = falcon_runtime::runtime::kill_subject(&node, actor);
    let reply = tokio::time::timeout(Duration::from_secs(5), client.request(subject, "".into()))
        .await
        .with_context(|| format!("no answer from node {node} within 5s"))?
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

async fn verify(settings: &Settings, json: bool) -> Result<ExitCode> {
    let stores = Stores::open(settings, &Actor::ALL).await?;
    let mut report = invariants::check(&stores, false).await?;
    let client = falcon_nats::connect(&settings.nats.url, "falcon-cli").await?;
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
        eprintln!(
            "falcon: {} money invariant violation(s)",
            report.violations.len()
        );
        Ok(ExitCode::FAILURE)
    }
}
