//! Running the `falcon` binary in tests.

use std::process::{Command, Output};

use anyhow::{Context, Result};

use super::World;

/// Runs `falcon` with the world's settings in the environment, from an
/// empty directory (no stray `falcon.toml`).
pub fn falcon(w: &World, dir: &std::path::Path, args: &[&str]) -> Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_falcon"))
        .args(args)
        .current_dir(dir)
        .env("FALCON__NATS__URL", &w.settings.nats.url)
        .env(
            "FALCON__PAYMENT__DATABASE_URL",
            &w.settings.payment.database_url,
        )
        .env("FALCON__RISK__DATABASE_URL", &w.settings.risk.database_url)
        .env(
            "FALCON__WALLET__DATABASE_URL",
            &w.settings.wallet.database_url,
        )
        .env_remove("RUST_LOG")
        .output()
        .context("running falcon")
}

pub fn json(out: &Output) -> Result<serde_json::Value> {
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "not JSON: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

pub fn ok(out: Output) -> Result<Output> {
    anyhow::ensure!(
        out.status.success(),
        "falcon failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}
