//! `falcon auth init`: writes every identity's nkey seed, every actor's
//! signing key, and the nats-server authorization that gives each identity
//! only what it needs (falcon_runtime::auth).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use falcon_runtime::auth;
use falcon_runtime::Settings;

use crate::output;

#[derive(Debug, Subcommand)]
pub enum AuthVerb {
    /// Write the keys and the server's authorization config (keeps existing
    /// keys and every client already issued; rewrites the permissions).
    Init(InitArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Where to write them (default: security.keys_dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// A client principal to issue an identity for (repeatable); the
    /// configured nats.identity always gets one.
    #[arg(long = "client", value_name = "NAME")]
    pub clients: Vec<String>,
    /// A client principal to issue a user and password for instead of an
    /// nkey (repeatable): for plain clients that cannot sign the server's
    /// nkey challenge. The password is written to <dir>/<NAME>.password.
    #[arg(long = "password-client", value_name = "NAME")]
    pub password_clients: Vec<String>,
}

pub fn run(settings: &Settings, verb: AuthVerb, json: bool) -> Result<ExitCode> {
    let AuthVerb::Init(args) = verb;
    let dir = args.dir.unwrap_or_else(|| settings.keys_dir());
    let report = auth::init_with(settings, &dir, &args.clients, &args.password_clients)
        .map_err(anyhow::Error::msg)?;
    if json {
        output::json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = report
        .identities
        .iter()
        .map(|i| {
            vec![
                i.name.clone(),
                format!("{:?}", i.role).to_lowercase(),
                i.public_key.clone(),
                if i.created { "created" } else { "kept" }.to_owned(),
            ]
        })
        .collect();
    output::table(&["IDENTITY", "ROLE", "PUBLIC KEY", "SEED"], &rows);
    if !report.signing_keys_created.is_empty() {
        println!(
            "signing keys created: {}",
            report.signing_keys_created.join(", ")
        );
    }
    println!(
        "server authorization: {} (include it from nats-server's config, then reload the server)",
        report.server_conf.display()
    );
    Ok(ExitCode::SUCCESS)
}
