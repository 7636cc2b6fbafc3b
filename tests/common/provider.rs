//! A `falcon-provider` process for the tests that need a settlement
//! provider of its own.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;

/// The API key the payment and reconciliation actors are given.
pub const API_KEY: &str = "api-key-of-the-payment-actor";

/// A `falcon-provider` process on a port of its own, with API and admin
/// keys.
pub struct Provider {
    child: tokio::process::Child,
    pub url: String,
    pub api_key_file: String,
    pub client: reqwest::Client,
    _dir: tempfile::TempDir,
}

pub const ADMIN_KEY: &str = "admin-key-of-the-test";

impl Provider {
    /// Starts it on 127.0.0.1:0 with a fresh ledger, and reads the address
    /// it bound from its first line.
    pub async fn start() -> Result<Provider> {
        let dir = tempfile::tempdir()?;
        let api_key_file = dir.path().join("api.key");
        std::fs::write(&api_key_file, format!("{API_KEY}\n"))?;
        let admin_key_file = dir.path().join("admin.key");
        std::fs::write(&admin_key_file, ADMIN_KEY)?;
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_falcon-provider"))
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--ledger")
            .arg(dir.path().join("ledger.db"))
            .arg("--api-key-file")
            .arg(&api_key_file)
            .arg("--admin-key-file")
            .arg(&admin_key_file)
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("provider.log"))?)
            .kill_on_drop(true)
            .spawn()
            .context("starting falcon-provider")?;
        let stdout = child.stdout.take().context("its stdout")?;
        let mut first = String::new();
        tokio::time::timeout(
            super::DEADLINE,
            tokio::io::BufReader::new(stdout).read_line(&mut first),
        )
        .await
        .context("falcon-provider did not say where it listens")??;
        let addr = first
            .trim()
            .strip_prefix("falcon-provider listening on ")
            .with_context(|| format!("unexpected first line {first:?}"))?;
        Ok(Provider {
            child,
            url: format!("http://{addr}"),
            api_key_file: api_key_file.display().to_string(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            _dir: dir,
        })
    }

    /// The provider's ledger file.
    pub fn ledger(&self) -> std::path::PathBuf {
        self._dir.path().join("ledger.db")
    }

    /// Posts `body` to `path` with the API key; the status and the answer.
    pub async fn post(&self, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
        let mut r = self
            .client
            .post(format!("{}{path}", self.url))
            .bearer_auth(API_KEY);
        if let Some(body) = body {
            r = r.json(&body);
        }
        let r = r.send().await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    pub async fn admin(&self, request: reqwest::RequestBuilder) -> Result<Value> {
        let r = request.bearer_auth(ADMIN_KEY).send().await?;
        ensure!(r.status().is_success(), "admin: {}", r.status());
        Ok(r.json().await?)
    }

    pub async fn faults(&self, patch: Value) -> Result<Value> {
        self.admin(
            self.client
                .put(format!("{}/admin/faults", self.url))
                .json(&patch),
        )
        .await
    }

    pub async fn stats(&self) -> Result<Value> {
        self.admin(self.client.get(format!("{}/admin/stats", self.url)))
            .await
    }

    /// The provider's record of `key`, `None` when it has none.
    pub async fn record(&self, key: &str) -> Result<Option<Value>> {
        let r = self
            .client
            .get(format!("{}/v1/charges/{key}", self.url))
            .bearer_auth(API_KEY)
            .send()
            .await?;
        match r.status().as_u16() {
            200 => Ok(Some(r.json().await?)),
            404 => Ok(None),
            code => anyhow::bail!("lookup of {key}: {code}"),
        }
    }

    /// What it charged and still stands, in minor units, and how many
    /// charges: from its own totals.
    pub async fn charged(&self) -> Result<(i64, i64)> {
        let r = self
            .client
            .get(format!("{}/v1/totals", self.url))
            .bearer_auth(API_KEY)
            .send()
            .await?;
        ensure!(r.status().is_success(), "totals: {}", r.status());
        let totals: Value = r.json().await?;
        let charged = totals["charged"].as_array().context("charged")?;
        let mut count = 0;
        let mut minor = 0;
        for c in charged {
            ensure!(c["currency"] == "USD", "{totals}");
            count += c["count"].as_i64().context("count")?;
            minor += c["amount_minor"].as_i64().context("amount_minor")?;
        }
        Ok((count, minor))
    }

    pub async fn stop(mut self) -> Result<()> {
        let pid = self.child.id().context("falcon-provider exited")?;
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        ensure!(sent.success(), "kill -TERM {pid}");
        let status = tokio::time::timeout(super::DEADLINE, self.child.wait()).await??;
        ensure!(status.success(), "falcon-provider exited with {status}");
        Ok(())
    }
}
