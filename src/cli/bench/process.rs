//! The process a bench measures: a `falcon run` it starts and stops
//! (`--spawn`), and the peak RSS and CPU time of a pid, read from `/proc`.

// Floats here are seconds and megabytes: measurements, never money.
#![allow(clippy::float_arithmetic)]

use std::time::Duration;

use anyhow::{Context, Result};

use super::report::Usage;

/// Longest wait for the spawned `falcon run` to stop after SIGTERM before
/// it is killed.
const STOP_WAIT: Duration = Duration::from_secs(30);

/// Reads `/proc/<pid>`: the peak resident set (VmHWM) and user+system CPU.
pub fn usage(pid: u32) -> Result<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let hwm_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmHWM")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at ')'.
    let after = stat.rsplit_once(')').map(|(_, r)| r).context("bad stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> f64 { fields.get(i).and_then(|v| v.parse().ok()).unwrap_or(0.0) };
    // utime and stime are fields 14 and 15; `after` starts at field 3.
    let clk = clock_ticks();
    Ok(Usage {
        pid,
        peak_rss_mb: hwm_kb / 1024.0,
        cpu_s: (ticks(11) + ticks(12)) / clk,
    })
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A `falcon run` started by the bench; killed if dropped.
pub struct Spawned {
    pub child: tokio::process::Child,
}

/// Starts `falcon run` with this process's configuration; the wallet set-up
/// waits for its events, so no separate readiness check is needed.
pub async fn spawn_runtime(config: Option<&std::path::Path>) -> Result<Spawned> {
    let exe = std::env::current_exe()?;
    let mut cmd = tokio::process::Command::new(exe);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    // HTTP only where FALCON__HTTP__LISTEN says: the default port may be
    // taken by a runtime already serving on this machine.
    cmd.args(["run"])
        .env(
            "FALCON__HTTP__LISTEN",
            std::env::var("FALCON__HTTP__LISTEN").unwrap_or_default(),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true);
    let child = cmd.spawn().context("starting falcon run")?;
    Ok(Spawned { child })
}

/// Stops the spawned `falcon run`: SIGTERM, so that it drains, then a kill
/// after [`STOP_WAIT`].
pub async fn stop(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        if tokio::time::timeout(STOP_WAIT, child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
    }
}
