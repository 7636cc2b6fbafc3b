//! `falcon`: the FalconPay operator CLI. It parses the command line, loads
//! the configuration, starts logging and calls the library crates; the
//! work lives in `falcon-actors`, `falcon-nats` and `falcon-sagas`.

mod cli;
mod config;
mod dlq;
mod inspect;
mod output;
mod send;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Verb};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = if matches!(cli.verb, Verb::Run(_)) {
        "info"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli::dispatch(cli).await {
        Ok(code) => code,
        Err(e) => {
            // One clear line: the error and its causes.
            let mut line = e.to_string();
            for cause in e.chain().skip(1) {
                line.push_str(": ");
                line.push_str(&cause.to_string());
            }
            eprintln!("falcon: {line}");
            ExitCode::FAILURE
        }
    }
}
