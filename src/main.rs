//! `falcon`: the FalconPay operator CLI, a thin binary over the library
//! crates. It parses the command line, starts logging, loads the
//! configuration and dispatches to the verb; the work lives in
//! `falcon-runtime` (the registry of actors and what runs them), the actor
//! crates, `falcon-nats` and `falcon-sagas`.
//!
//! The modules, as a map:
//!
//! - [`cli`]: the command line ([`cli::Cli`], [`cli::Verb`], `dispatch`),
//!   and under it one module per verb, each owning its clap arguments and
//!   its `run`: `run`, `streams`, `wallet`, `pay`, `refund`, `saga`
//!   (`saga::show`, and `list` and `stuck` in `saga::find`), `dlq`,
//!   `replay`, `chaos`, `doctor`, `verify`, `config`, `bench` (the driver,
//!   with `bench::load`, `bench::process` and `bench::report`);
//! - helpers the verbs call, which call no verb back:
//!   - [`send`]: publishing a command and, with `--wait`, following it to
//!     its outcome (it owns [`send::WaitArgs`]);
//!   - [`summary`]: one line about an event, for `--wait` and `saga show`;
//!   - [`actors`]: the actors as the registry names them: the default and
//!     the validation of `--actors` and `--actor`;
//!   - [`output`]: aligned tables and `--json`;
//!   - [`http`]: the `/metrics` and health endpoint of `falcon run`;
//!   - [`memory`]: the process's allocator (jemalloc on Linux) and its
//!     gauges on `/metrics`;
//! - and the process's own setup: [`config`] (loading the settings:
//!   defaults < file < environment) and [`telemetry`] (logs and traces).

mod actors;
mod cli;
mod config;
mod http;
mod memory;
mod output;
mod send;
mod summary;
mod telemetry;

use std::process::ExitCode;

use clap::Parser;

use cli::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let telemetry = match telemetry::init(cli.log_format, cli.verb.default_log_level()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("falcon: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = async {
        let settings = config::load(cli.config.as_deref())?;
        cli::dispatch(cli, &settings).await
    }
    .await;
    telemetry.shutdown().await;
    match result {
        Ok(code) => code,
        Err(e) => {
            // One clear line: the error and its causes.
            let mut line = e.to_string();
            for cause in e.chain().skip(1) {
                // An error that shows its source in its own message (those
                // of falcon-nats do, for logs) is not repeated.
                let cause = cause.to_string();
                if !line.ends_with(&cause) {
                    line.push_str(": ");
                    line.push_str(&cause);
                }
            }
            eprintln!("falcon: {line}");
            ExitCode::FAILURE
        }
    }
}
