//! `falcon-provider`: the settlement-provider simulator as a process, a thin
//! binary over `falcon_provider`. It parses the command line, reads the key
//! files, starts logging (stderr), opens the ledger, binds, prints
//! `falcon-provider listening on <addr>` on stdout, and serves until
//! SIGTERM or Ctrl-C.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use falcon_provider::{Config, Faults, Provider};
use tracing_subscriber::EnvFilter;

/// A settlement-provider simulator with a durable ledger, for testing
/// FalconPay.
#[derive(Debug, Parser)]
#[command(name = "falcon-provider", version)]
struct Args {
    /// Address to listen on; port 0 picks a free port (printed at start).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The ledger's SQLite file; created if missing.
    #[arg(long)]
    ledger: PathBuf,
    /// File holding the API key that `/v1/...` requests must bear;
    /// without it the API is open.
    #[arg(long)]
    api_key_file: Option<PathBuf>,
    /// File holding the admin key that `/admin/...` requests must bear;
    /// without it the admin API is open.
    #[arg(long)]
    admin_key_file: Option<PathBuf>,
    /// Delay before every `/v1/...` request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Share of new keys declined, in basis points (0..=10000).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    decline_bps: u32,
    /// Share of new charges whose answer hangs for --hang-ms after the
    /// charge is committed, in basis points (0..=10000).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    hang_after_charge_bps: u32,
    /// How long a hang after a charge lasts, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    hang_ms: u64,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) if !e.use_stderr() => {
            // --help and --version: print as clap would, succeed.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("falcon-provider: {}", one_line(&e.render().to_string()));
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("falcon-provider: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("falcon-provider: {}", falcon_provider::report(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Clap's error as one line: its message without the usage that follows.
fn one_line(rendered: &str) -> String {
    rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
        .trim_start_matches("error: ")
        .to_owned()
}

fn read_key(flag: &str, path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{flag}: cannot read {}", path.display()))?;
    let key = text.trim();
    if key.is_empty() {
        bail!("{flag}: {} is empty", path.display());
    }
    Ok(key.to_owned())
}

async fn run(args: Args) -> Result<()> {
    let api_key = args
        .api_key_file
        .as_deref()
        .map(|p| read_key("--api-key-file", p))
        .transpose()?;
    let admin_key = args
        .admin_key_file
        .as_deref()
        .map(|p| read_key("--admin-key-file", p))
        .transpose()?;
    let config = Config {
        ledger: args.ledger,
        api_key,
        admin_key,
        faults: Faults {
            latency_ms: args.latency_ms,
            decline_bps: args.decline_bps,
            hang_after_charge_bps: args.hang_after_charge_bps,
            hang_ms: args.hang_ms,
            outage: false,
        },
    };
    // Signals first, so that one sent as soon as the line is read is
    // caught.
    let shutdown = shutdown_signal()?;
    let provider = Provider::open(config).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen: cannot listen on {}", args.listen))?;
    let addr = listener.local_addr().context("the bound address")?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "falcon-provider listening on {addr}")
        .and_then(|()| stdout.flush())
        .context("writing the listening line")?;
    drop(stdout);
    provider.serve(listener, shutdown).await?;
    Ok(())
}

/// Completes on SIGTERM or SIGINT (Ctrl-C). On Unix both handlers are
/// installed here, before the listening line, not at the first poll.
#[cfg(unix)]
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Completes on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()> + Send + 'static> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
