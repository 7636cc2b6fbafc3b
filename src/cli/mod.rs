//! The command line: the verbs of DESIGN.md ("Operator interface"), one
//! module each, and [`dispatch`] to them. This module only routes: each
//! verb's module owns its clap arguments and its `run(settings, args,
//! json)`.

mod auth;
mod bench;
mod chaos;
mod config;
mod dlq;
mod doctor;
mod pay;
mod recon;
mod refund;
mod replay;
mod run;
mod saga;
mod streams;
mod verify;
mod wallet;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use falcon_runtime::Settings;

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
    /// Connect as this identity instead of the one the verb uses (the
    /// client, the treasury for a deposit, the operator, provisioning);
    /// commands then name it as their principal. Not for `run`.
    #[arg(long = "as", global = true, value_name = "IDENTITY")]
    pub identity: Option<String>,
    #[command(subcommand)]
    pub verb: Verb,
}

/// Each verb, with the arguments its module defines.
#[derive(Debug, Subcommand)]
pub enum Verb {
    /// Start the supervised actors (all by default) until SIGINT/SIGTERM.
    Run(run::RunArgs),
    /// Identities, keys and the broker's permissions.
    #[command(subcommand)]
    Auth(auth::AuthVerb),
    /// Provision the JetStream streams and consumers.
    #[command(subcommand)]
    Streams(streams::StreamsVerb),
    /// Open, fund and inspect wallets.
    #[command(subcommand)]
    Wallet(wallet::WalletVerb),
    /// Pay from one wallet to another (publishes falcon.cmd.payment.create).
    Pay(pay::PayArgs),
    /// Refund all or part of a completed payment (falcon.cmd.payment.refund).
    Refund(refund::RefundArgs),
    /// Inspect sagas.
    #[command(subcommand)]
    Saga(saga::SagaVerb),
    /// Inspect, re-drive and purge dead letters (FALCON_DLQ).
    #[command(subcommand)]
    Dlq(dlq::DlqVerb),
    /// Re-deliver a stream range to one actor, or rebuild a read model from FALCON_EVT.
    Replay(replay::ReplayArgs),
    /// Fault injection (needs chaos.enabled in the running processes).
    #[command(subcommand)]
    Chaos(chaos::ChaosVerb),
    /// Say whether acknowledged messages are durable on the connected server.
    Doctor(doctor::DoctorArgs),
    /// Check the money invariants; non-zero exit when one fails.
    Verify(verify::VerifyArgs),
    /// The reconciliation actor's last runs and its open mismatches.
    Recon(recon::ReconArgs),
    /// The effective configuration.
    #[command(subcommand)]
    Config(config::ConfigVerb),
    /// Drive payment sagas and report throughput, latency, outcomes, messages
    /// per saga and the runtime's cost; ends by checking the money invariants.
    Bench(bench::BenchArgs),
}

impl Verb {
    /// The log level when `RUST_LOG` is not set: `falcon run` tells of its
    /// life (`info`); the other verbs speak only of trouble (`warn`).
    pub fn default_log_level(&self) -> &'static str {
        match self {
            Verb::Run(_) => "info",
            _ => "warn",
        }
    }
}

/// Runs the verb `cli` names with the loaded `settings`.
pub async fn dispatch(cli: Cli, settings: &Settings) -> Result<ExitCode> {
    let json = cli.json;
    let mut as_identity;
    let settings = match &cli.identity {
        Some(_) if matches!(cli.verb, Verb::Run(_)) => {
            anyhow::bail!("--as is not for `falcon run`: each actor connects as its own identity")
        }
        Some(name) if !falcon_schemas::ids::is_valid_id(name) => {
            anyhow::bail!(
                "--as {}: not 1-64 characters of [A-Za-z0-9_-]",
                falcon_schemas::shown(name)
            )
        }
        Some(name) => {
            as_identity = settings.clone();
            as_identity.nats.identity = name.clone();
            as_identity.security.treasury = name.clone();
            as_identity.security.operator = name.clone();
            as_identity.security.provisioning = name.clone();
            &as_identity
        }
        None => settings,
    };
    match cli.verb {
        Verb::Run(args) => run::run(settings, args, json).await,
        Verb::Auth(verb) => auth::run(settings, verb, json),
        Verb::Streams(verb) => streams::run(settings, verb, json).await,
        Verb::Wallet(verb) => wallet::run(settings, verb, json).await,
        Verb::Pay(args) => pay::run(settings, args, json).await,
        Verb::Refund(args) => refund::run(settings, args, json).await,
        Verb::Saga(verb) => saga::run(settings, verb, json).await,
        Verb::Dlq(verb) => dlq::run(settings, verb, json).await,
        Verb::Replay(args) => replay::run(settings, args, json).await,
        Verb::Chaos(verb) => chaos::run(settings, verb, json).await,
        Verb::Doctor(args) => doctor::run(settings, args, json).await,
        Verb::Verify(args) => verify::run(settings, args, json).await,
        Verb::Recon(args) => recon::run(settings, args, json).await,
        Verb::Config(verb) => config::run(settings, verb, json),
        // The bench alone needs the --config path: the `falcon run` it may
        // spawn must read the same file.
        Verb::Bench(args) => bench::run(settings, cli.config.as_deref(), args, json).await,
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// `falcon run` runs every registered actor unless told otherwise, and
    /// its help lists them.
    #[test]
    fn run_defaults_to_the_registry() {
        let cli = Cli::try_parse_from(["falcon", "run"]).expect("run takes no required flag");
        let Verb::Run(args) = cli.verb else {
            panic!("`falcon run` parses as another verb");
        };
        assert_eq!(args.actors, crate::actors::names());
        let help = Cli::command()
            .find_subcommand_mut("run")
            .expect("run is a verb")
            .render_long_help()
            .to_string();
        let names = falcon_runtime::registry::names();
        assert!(
            help.contains(&format!("comma-separated: {}\n", names.join(","))),
            "{help}"
        );
        assert!(
            help.contains(&format!("[default: {}]", names.join(" "))),
            "{help}"
        );
    }

    #[test]
    fn only_run_logs_at_info() {
        let level = |args: &[&str]| {
            Cli::try_parse_from(args)
                .expect("valid command line")
                .verb
                .default_log_level()
        };
        assert_eq!(level(&["falcon", "run"]), "info");
        assert_eq!(level(&["falcon", "verify"]), "warn");
        assert_eq!(level(&["falcon", "saga", "stuck"]), "warn");
    }
}
