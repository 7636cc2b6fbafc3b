//! Running the `falcon` binary in tests.

use std::process::{Command, Output};

use anyhow::{Context, Result};

use super::World;

/// Runs `falcon` with the world's settings in the environment, from an
/// empty directory (no stray `falcon.toml`).
pub fn falcon(w: &World, dir: &std::path::Path, args: &[&str]) -> Result<Output> {
    command(w, dir)
        .args(args)
        .output()
        .context("running falcon")
}

/// `falcon` with the world's settings in the environment, run from `dir`.
pub fn command(w: &World, dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_falcon"));
    cmd.current_dir(dir)
        .env("FALCON__NATS__URL", &w.settings.nats.url)
        .env("FALCON__SECURITY__KEYS_DIR", &w.settings.security.keys_dir)
        .env(
            "FALCON__PAYMENT__DATABASE_URL",
            &w.settings.payment.database_url,
        )
        .env("FALCON__RISK__DATABASE_URL", &w.settings.risk.database_url)
        .env(
            "FALCON__WALLET__DATABASE_URL",
            &w.settings.wallet.database_url,
        )
        .env(
            "FALCON__RECON__DATABASE_URL",
            &w.settings.recon.database_url,
        )
        .env_remove("RUST_LOG")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env("FALCON__HTTP__LISTEN", "")
        .env(
            "FALCON__CONSUMER__ACK_WAIT_MS",
            w.settings.consumer.ack_wait_ms.to_string(),
        )
        .env(
            "FALCON__RELAY__INTERVAL_MS",
            w.settings.relay.interval_ms.to_string(),
        )
        .env(
            "FALCON__CONSUMER__PARTITIONS",
            w.settings.consumer.partitions.to_string(),
        );
    cmd
}

/// A `falcon run` process, its stderr going to a file.
pub struct Running {
    pub child: tokio::process::Child,
    pub log: std::path::PathBuf,
}

impl Running {
    /// Provisions the streams (so that what a test publishes next is
    /// stored), then starts `falcon run` with `args` and `env`.
    pub fn start(
        w: &World,
        dir: &std::path::Path,
        args: &[&str],
        env: &[(&str, String)],
    ) -> Result<Running> {
        ok(falcon(w, dir, &["streams", "apply"])?)?;
        Self::spawn(w, dir, args, env)
    }

    /// Starts `falcon run` with `args` and `env`, provisioning nothing
    /// first.
    pub fn spawn(
        w: &World,
        dir: &std::path::Path,
        args: &[&str],
        env: &[(&str, String)],
    ) -> Result<Running> {
        let log = dir.join(format!("run-{}.log", uuid::Uuid::now_v7().simple()));
        let mut cmd = command(w, dir);
        cmd.arg("run").args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        let child = tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .spawn()
            .context("starting falcon run")?;
        Ok(Running { child, log })
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits (with the test deadline) for the exit.
    pub async fn terminate(mut self) -> Result<(std::process::ExitStatus, String)> {
        let pid = self.child.id().context("falcon run already exited")?;
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        anyhow::ensure!(sent.success(), "kill -TERM {pid} failed");
        let status = tokio::time::timeout(super::DEADLINE, self.child.wait())
            .await
            .context("falcon run did not exit after SIGTERM")??;
        Ok((status, self.stderr()))
    }
}

/// GET `url`: the status and the body (any status is an answer).
pub async fn http_get(url: &str) -> Result<(u16, String)> {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(5)))
            .build()
            .into();
        let mut resp = agent.get(&url).call()?;
        let status = resp.status().as_u16();
        let body = resp.body_mut().read_to_string()?;
        Ok((status, body))
    })
    .await?
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
