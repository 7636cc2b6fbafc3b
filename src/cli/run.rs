//! `falcon run`: starts the registered actors (all by default, or those
//! `--actors` names) under one supervisor, with the HTTP endpoint, until
//! SIGINT or SIGTERM; then stops them within `shutdown.grace_ms`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use falcon_runtime::runtime::apply_topology;
use falcon_runtime::{Runtime, Settings};
use falcon_sagas::Actor;

use super::doctor;
use crate::actors;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Refuse to start unless `falcon doctor` finds acknowledged messages durable.
    #[arg(long)]
    pub require_durable: bool,
    // Names of the registry, which gives the default and the help; `run`
    // checks them (`actors::parse`), so that the error lists them.
    #[arg(
        long,
        value_delimiter = ',',
        default_values_t = actors::names(),
        help = format!("Actors to run, comma-separated: {}", actors::names().join(","))
    )]
    pub actors: Vec<String>,
}

/// Runs until a signal; `--json` changes nothing: `falcon run` prints no
/// result, only its log and the lines on stderr that say it started and
/// stopped.
pub async fn run(settings: &Settings, args: RunArgs, _json: bool) -> Result<ExitCode> {
    let actors = actors::parse(&args.actors)?;
    if args.require_durable {
        refuse_unless_durable(settings).await?;
    }
    // Listen first: liveness holds while the actors connect and migrate.
    let endpoint = if settings.http.listen.is_empty() {
        None
    } else {
        Some(crate::http::serve(&settings.http.listen).await?)
    };
    let runtime = Runtime::start(settings, &actors).await?;
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

/// `--require-durable`: provisions the topology (the doctor checks its
/// consumers) and fails unless the doctor finds acknowledged messages
/// durable.
async fn refuse_unless_durable(settings: &Settings) -> Result<()> {
    let client = settings
        .connect_as(&settings.security.provisioning, "falcon-doctor")
        .await?;
    apply_topology(&async_nats::jetstream::new(client), settings).await?;
    let report = doctor::report(settings).await?;
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
    Ok(())
}
