//! `falcon dlq list | show | replay | purge`: inspects FALCON_DLQ, re-drives
//! dead letters through the handler of the consumer that dead-lettered
//! them (each leaves the DLQ only once it succeeded), and deletes them.

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Subcommand;
use falcon_nats::dlq::{self, DeadLetter};
use falcon_runtime::dlq::{replay, Replay};
use falcon_runtime::Settings;

use crate::output;

#[derive(Debug, Subcommand)]
pub enum DlqVerb {
    /// List dead letters, oldest first.
    List {
        /// Only those whose original subject matches, e.g. 'falcon.evt.wallet.>'.
        #[arg(long)]
        subject: Option<String>,
    },
    /// One dead letter with its headers and body.
    Show { seq: u64 },
    /// Re-drive dead letters through their actor; each leaves the DLQ only once it succeeded.
    Replay {
        /// The dead letter's sequence in FALCON_DLQ.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        seq: Option<u64>,
        /// Every dead letter (or every one matching --subject).
        #[arg(long)]
        all: bool,
        #[arg(long, requires = "all")]
        subject: Option<String>,
        /// Re-drive even when the saga is already terminal.
        #[arg(long)]
        force: bool,
    },
    /// Delete dead letters for good.
    Purge {
        #[arg(long)]
        subject: Option<String>,
        /// Confirms the deletion.
        #[arg(long)]
        yes: bool,
    },
}

fn letter_json(l: &DeadLetter) -> serde_json::Value {
    let mut v = serde_json::to_value(l).unwrap_or_default();
    v["body"] = match serde_json::from_slice::<serde_json::Value>(&l.payload) {
        Ok(json) => json,
        Err(_) => serde_json::Value::String(String::from_utf8_lossy(&l.payload).into_owned()),
    };
    v
}

pub async fn run(settings: &Settings, verb: DlqVerb, json: bool) -> Result<ExitCode> {
    let client = settings
        .connect_as(&settings.security.operator, "falcon-cli")
        .await?;
    let js = async_nats::jetstream::new(client);
    match verb {
        DlqVerb::List { subject } => {
            let letters = dlq::list(&js, subject.as_deref()).await?;
            if json {
                output::json(&letters.iter().map(letter_json).collect::<Vec<_>>())?;
            } else {
                let rows: Vec<Vec<String>> = letters
                    .iter()
                    .map(|l| {
                        vec![
                            l.seq.to_string(),
                            l.time
                                .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                                .unwrap_or_default(),
                            l.origin.consumer.clone(),
                            format!("{}#{}", l.origin.subject, l.origin.stream_seq),
                            l.origin.delivered.to_string(),
                            l.error.clone(),
                        ]
                    })
                    .collect();
                output::table(
                    &["SEQ", "TIME", "CONSUMER", "ORIGINAL", "DELIVERIES", "ERROR"],
                    &rows,
                );
            }
        }
        DlqVerb::Show { seq } => {
            let Some(l) = dlq::get(&js, seq).await? else {
                bail!("no dead letter at sequence {seq}");
            };
            let v = letter_json(&l);
            if json {
                output::json(&v)?;
            } else {
                println!(
                    "dead letter {seq} at {}",
                    l.time.map(|t| t.to_rfc3339()).unwrap_or_default()
                );
                println!("consumer:   {}", l.origin.consumer);
                println!(
                    "original:   {} (stream {} seq {})",
                    l.origin.subject, l.origin.stream, l.origin.stream_seq
                );
                println!("msg id:     {}", l.origin.msg_id.as_deref().unwrap_or("-"));
                println!("deliveries: {}", l.origin.delivered);
                println!("error:      {}", l.error);
                println!("body:\n{}", serde_json::to_string_pretty(&v["body"])?);
            }
        }
        DlqVerb::Replay {
            seq,
            all,
            subject,
            force,
        } => {
            let letters = if all {
                dlq::list(&js, subject.as_deref()).await?
            } else {
                let seq = seq.unwrap_or_default();
                match dlq::get(&js, seq).await? {
                    Some(l) => vec![l],
                    None => bail!("no dead letter at sequence {seq}"),
                }
            };
            let ring = settings.key_ring().map_err(anyhow::Error::msg)?;
            let mut outcomes = Vec::with_capacity(letters.len());
            for l in &letters {
                outcomes.push(replay(settings, &js, l, force, &ring).await?);
            }
            let failed = outcomes
                .iter()
                .filter(|o| matches!(o, Replay::Failed { .. } | Replay::Refused { .. }))
                .count();
            if json {
                output::json(&outcomes)?;
            } else {
                for o in &outcomes {
                    match o {
                        Replay::Replayed { seq, actor, saga_id } => println!("{seq}: replayed through {actor} (saga {})", saga_id.as_deref().unwrap_or("-")),
                        Replay::AlreadyProcessed { seq, actor, saga_id } => println!(
                            "{seq}: {actor} had already processed it (saga {}); nothing done twice, removed",
                            saga_id.as_deref().unwrap_or("-")
                        ),
                        Replay::Refused { seq, reason } => println!("{seq}: refused: {reason}"),
                        Replay::Failed { seq, error } => println!("{seq}: failed again, kept: {error}"),
                    }
                }
            }
            if failed > 0 {
                eprintln!(
                    "falcon: {failed} of {} dead letters not replayed",
                    outcomes.len()
                );
                return Ok(ExitCode::FAILURE);
            }
        }
        DlqVerb::Purge { subject, yes } => {
            if !yes {
                bail!("purge deletes dead letters for good; add --yes to confirm");
            }
            let n = dlq::purge(&js, subject.as_deref()).await?;
            if json {
                output::json(&serde_json::json!({ "purged": n }))?;
            } else {
                println!("purged {n} dead letters");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
