//! `falcon`: the FalconPay operator CLI. It parses the command line, loads
//! the configuration, starts logging and calls the library crates; the
//! work lives in `falcon-actors`, `falcon-nats` and `falcon-sagas`.

mod bench;
mod cli;
mod config;
mod dlq;
mod http;
mod inspect;
mod output;
mod send;
mod telemetry;

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
    let telemetry = match telemetry::init(cli.log_format, default_level) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("falcon: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = cli::dispatch(cli).await;
    telemetry.shutdown().await;
    match result {
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
