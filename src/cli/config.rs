//! `falcon config show`: prints the effective configuration, as loaded by
//! `crate::config` (defaults < file < environment), passwords masked.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use falcon_runtime::Settings;

use crate::output;

#[derive(Debug, Subcommand)]
pub enum ConfigVerb {
    /// Print the effective configuration (defaults < file < environment),
    /// passwords masked: TOML, or JSON with --json.
    Show,
}

pub fn run(settings: &Settings, verb: ConfigVerb, json: bool) -> Result<ExitCode> {
    match verb {
        ConfigVerb::Show => show(settings, json),
    }
}

fn show(settings: &Settings, json: bool) -> Result<ExitCode> {
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
