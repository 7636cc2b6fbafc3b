//! `falcon replay`: re-delivers a range of FALCON_EVT or FALCON_CMD (by
//! sequence or time) to one registered actor through the consumer its steps
//! read that stream with, or rebuilds a read model from FALCON_EVT alone.
//! What an actor already processed is not done twice (its inbox); a
//! non-zero exit when a message failed.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use falcon_runtime::Settings;

use crate::{actors, output};

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["actor", "rebuild"]))]
pub struct ReplayArgs {
    // One of the registry's names, which the help lists; `run` checks it.
    #[arg(
        long,
        requires = "from",
        help = format!("The actor to re-deliver to: {}", actors::one_of())
    )]
    pub actor: Option<String>,
    /// The stream: evt (FALCON_EVT) or cmd (FALCON_CMD).
    #[arg(long, default_value = "evt")]
    pub stream: String,
    /// First stream sequence.
    #[arg(long, group = "from")]
    pub from_seq: Option<u64>,
    /// Start time: RFC 3339 (2026-11-22T10:00:00Z) or a duration ago (10m).
    #[arg(long, group = "from")]
    pub since: Option<String>,
    /// Last stream sequence (inclusive).
    #[arg(long)]
    pub to_seq: Option<u64>,
    // The read models are the registry's, which the help lists.
    #[arg(
        long,
        conflicts_with_all = ["actor", "from_seq", "since", "to_seq"],
        help = format!(
            "Rebuild a read model from FALCON_EVT alone: {}",
            falcon_runtime::replay::read_models().join(", ")
        )
    )]
    pub rebuild: Option<String>,
    /// Rebuild even while the read model is being consumed live.
    #[arg(long, requires = "rebuild")]
    pub force: bool,
}

/// `--since`: an RFC 3339 time, or a duration before now.
fn parse_since(s: &str) -> Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let ago = humantime::parse_duration(s)
        .with_context(|| format!("--since {s:?} is neither RFC 3339 nor a duration"))?;
    chrono::Duration::from_std(ago)
        .ok()
        .and_then(|d| chrono::Utc::now().checked_sub_signed(d))
        .with_context(|| format!("--since {s:?} reaches back past any date FalconPay can hold"))
}

pub async fn run(settings: &Settings, a: ReplayArgs, json: bool) -> Result<ExitCode> {
    use falcon_nats::read::Start;
    use falcon_runtime::replay;
    // Everything is checked before connecting; then a replay connects as
    // the actor whose steps it runs and whose events it publishes (the read
    // model's, for a rebuild).
    enum Job {
        Rebuild(String),
        Redeliver(falcon_sagas::Actor, &'static str, Start),
    }
    let (job, actor) = if let Some(model) = &a.rebuild {
        let Some(entry) = falcon_runtime::registry::REGISTRY
            .iter()
            .find(|r| r.read_models().contains(&model.as_str()))
        else {
            bail!(
                "unknown read model {model:?}; one of {}",
                replay::read_models().join(", ")
            );
        };
        (Job::Rebuild(model.clone()), entry.actor())
    } else {
        let actor = actors::by_name(a.actor.as_deref().unwrap_or_default())?;
        let stream = match a.stream.as_str() {
            "evt" => falcon_schemas::subject::STREAM_EVT,
            "cmd" => falcon_schemas::subject::STREAM_CMD,
            other => bail!("unknown stream {other:?}; evt or cmd"),
        };
        let start = match (a.from_seq, &a.since) {
            (Some(seq), _) => Start::Seq(seq),
            (None, Some(since)) => Start::Time(parse_since(since)?),
            (None, None) => bail!("--from-seq or --since is required"),
        };
        (Job::Redeliver(actor, stream, start), actor)
    };
    let client = settings.connect_as(actor.as_str(), "falcon-replay").await?;
    let js = async_nats::jetstream::new(client);
    let (report, sagas) = match job {
        Job::Rebuild(model) => {
            let (report, sagas) = replay::rebuild(settings, &js, &model, a.force).await?;
            (report, Some(sagas))
        }
        Job::Redeliver(actor, stream, start) => (
            replay::redeliver(settings, &js, actor, stream, start, a.to_seq).await?,
            None,
        ),
    };
    if json {
        let mut v = serde_json::to_value(&report)?;
        if let Some(n) = sagas {
            v["sagas"] = n.into();
        }
        output::json(&v)?;
    } else {
        println!(
            "read {} messages (seq {}..{}): {} applied, {} already processed, {} failed",
            report.messages,
            report.first_seq.map_or("-".into(), |s| s.to_string()),
            report.last_seq.map_or("-".into(), |s| s.to_string()),
            report.applied,
            report.duplicates,
            report.failed.len()
        );
        if let Some(n) = sagas {
            println!("saga view rebuilt: {n} sagas");
        }
        for (seq, error) in &report.failed {
            println!("  seq {seq}: {error}");
        }
    }
    Ok(if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::parse_since;

    #[test]
    fn since_is_bounded_and_never_panics() {
        assert!(parse_since("10m").is_ok());
        assert!(parse_since("2026-01-01T00:00:00Z").is_ok());
        for bad in ["300000y", "99999999999999999999s", "yesterday", "", "-5m"] {
            assert!(parse_since(bad).is_err(), "{bad:?} accepted");
        }
    }
}
