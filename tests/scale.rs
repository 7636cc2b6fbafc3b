//! More than one `falcon run` on the same databases and streams.

mod common;

use anyhow::{ensure, Context, Result};
use common::cli::{falcon, http_get, ok, Running};
use common::{eventually, Backend, World};

backend_tests!(
    three_processes_start_at_once_on_fresh_databases,
    a_killed_process_hands_its_loops_to_the_survivors
);

/// More messages than async-nats keeps acks in flight for (5,000) in one
/// `publish_all`, as the bench's set-up with 4,096 wallets and the relay
/// with a large `relay.batch_max` do: every one is stored, none waits for
/// ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_all_outlasts_the_clients_ack_window() -> Result<()> {
    let w = World::new(Backend::Sqlite).await?;
    let n = 6_000;
    let msgs: Vec<falcon_nats::OutMsg> = (0..n)
        .map(|i| falcon_nats::OutMsg {
            subject: falcon_schemas::CommandKind::WalletOpen.subject(common::CLIENT),
            msg_id: format!("window-{i}"),
            traceparent: None,
            payload: bytes::Bytes::from(format!(
                r#"{{"wallet_id":"window-{i}","owner":"o","currency":"USD"}}"#
            )),
        })
        .collect();
    let results = tokio::time::timeout(
        common::DEADLINE,
        falcon_nats::publish::publish_all(&w.client, &msgs),
    )
    .await
    .context("publish_all did not finish")?;
    let mut seqs = Vec::with_capacity(n);
    for r in results {
        seqs.push(r?.stream_seq);
    }
    seqs.sort_unstable();
    seqs.dedup();
    ensure!(
        seqs.len() == n,
        "{} distinct stream sequences of {n}",
        seqs.len()
    );
    Ok(())
}

/// Three processes started together on databases nobody has migrated: the
/// migrations are serialised, so all three come up, and together they pay.
async fn three_processes_start_at_once_on_fresh_databases(b: Backend) -> Result<()> {
    let w = World::new(b).await?;
    let dir = tempfile::tempdir()?;
    let (running, bases) = processes(&w, dir.path(), "start")?;
    for (base, run) in bases.iter().zip(&running) {
        eventually(|| async {
            Ok(http_get(&format!("{base}/health/ready"))
                .await
                .ok()
                .filter(|(s, _)| *s == 200))
        })
        .await
        .with_context(|| format!("{base} never became ready: {}", run.stderr()))?;
    }
    w.open_wallet("s-a", "USD").await?;
    w.open_wallet("s-b", "USD").await?;
    w.deposit("s-a", "100.00", "USD").await?;
    let bodies: Vec<serde_json::Value> = (0..30)
        .map(|i| World::pay_body(&format!("s-{i}"), "s-a", "s-b", "1.00", "USD"))
        .collect();
    let terminal = common::pay_many(&w.client, &w.js, &bodies).await?;
    let completed = terminal
        .values()
        .filter(|e| matches!(e.data, falcon_schemas::EventData::PaymentCompleted(_)))
        .count();
    ensure!(
        completed == bodies.len(),
        "{completed} of {} completed",
        bodies.len()
    );
    w.assert_invariants().await?;
    for run in running {
        let (status, stderr) = run.terminate().await?;
        ensure!(status.success(), "exited with {status}: {stderr}");
        ensure!(!stderr.contains("duplicate key"), "{stderr}");
    }
    Ok(())
}

/// Three `falcon run` processes, nodes `<node>-<i>`, each with its HTTP
/// endpoints on a port of its own: the processes and their base URLs.
fn processes(w: &World, dir: &std::path::Path, node: &str) -> Result<(Vec<Running>, Vec<String>)> {
    let mut running = Vec::new();
    let mut bases = Vec::new();
    for i in 0..3 {
        let port = common::nats::free_port()?;
        bases.push(format!("http://127.0.0.1:{port}"));
        let env = vec![
            ("FALCON__HTTP__LISTEN", format!("127.0.0.1:{port}")),
            ("FALCON__NODE", format!("{node}-{i}")),
        ];
        running.push(Running::spawn(w, dir, &[], &env)?);
    }
    Ok((running, bases))
}

/// The loops a process reports on `/health/ready`, each with whether it
/// owns it (`bound, owner`) or stands by.
async fn loops_of(base: &str) -> Result<Vec<(String, bool)>> {
    let (status, body) = http_get(&format!("{base}/health/ready")).await?;
    ensure!(status == 200, "{base}/health/ready: {status} {body}");
    let v: serde_json::Value = serde_json::from_str(&body)?;
    let mut out = Vec::new();
    for c in v["checks"].as_array().context("checks")? {
        let name = c["name"].as_str().unwrap_or_default();
        if let Some(l) = name.strip_prefix("consumer:") {
            let detail = c["detail"].as_str().unwrap_or_default();
            out.push((l.to_owned(), detail == "bound, owner"));
        }
    }
    ensure!(!out.is_empty(), "no consumer loops in {body}");
    Ok(out)
}

/// Which process (by index in `bases`) owns each loop, once every loop
/// has exactly one owner among them and each of them owns at least one.
async fn settled_owners(bases: &[&str]) -> Result<std::collections::BTreeMap<String, usize>> {
    eventually(|| async {
        let mut owners: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
        for (i, base) in bases.iter().enumerate() {
            let Ok(loops) = loops_of(base).await else {
                return Ok(None);
            };
            for (l, owns) in loops {
                let entry = owners.entry(l).or_default();
                if owns {
                    entry.push(i);
                }
            }
        }
        let one_each = owners.values().all(|o| o.len() == 1);
        let everyone = (0..bases.len()).all(|i| owners.values().any(|o| o == &[i]));
        Ok((one_each && everyone).then(|| owners.into_iter().map(|(l, o)| (l, o[0])).collect()))
    })
    .await
    .context("the loops never had one owner each, spread over every process")
}

/// Three processes share the loops, one owner each. One is killed with
/// SIGKILL while payments are in flight: the survivors take its loops
/// over, every payment ends once, and the money adds up.
async fn a_killed_process_hands_its_loops_to_the_survivors(b: Backend) -> Result<()> {
    let w = World::new(b).await?;
    let dir = tempfile::tempdir()?;
    ok(falcon(&w, dir.path(), &["streams", "apply"])?)?;
    let (mut running, bases) = processes(&w, dir.path(), "own")?;
    let all: Vec<&str> = bases.iter().map(String::as_str).collect();
    let before = settled_owners(&all).await?;
    let victim = 0;
    let lost: Vec<&String> = before
        .iter()
        .filter(|(_, o)| **o == victim)
        .map(|(l, _)| l)
        .collect();
    ensure!(!lost.is_empty(), "the victim owns nothing: {before:?}");

    w.open_wallet("k-a", "USD").await?;
    w.open_wallet("k-b", "USD").await?;
    w.deposit("k-a", "1000.00", "USD").await?;
    let bodies: Vec<serde_json::Value> = (0..600)
        .map(|i| World::pay_body(&format!("k-{i}"), "k-a", "k-b", "1.00", "USD"))
        .collect();
    let (client, js) = (w.client.clone(), w.js.clone());
    let paying = tokio::spawn(async move { common::pay_many(&client, &js, &bodies).await });
    // Killed while it works: after the first payment completed.
    w.wait_event("falcon.evt.payment.completed.>", |_| true)
        .await?;
    let pid = running[victim].child.id().context("victim exited early")?;
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()?;
    ensure!(killed.success(), "kill -KILL {pid}");
    running[victim].child.wait().await?;

    let survivors: Vec<&str> = all.iter().copied().filter(|b| *b != all[victim]).collect();
    let after = settled_owners(&survivors).await?;
    ensure!(
        after.keys().eq(before.keys()),
        "loops differ: {before:?} / {after:?}"
    );
    let terminal = paying.await??;
    let completed = terminal
        .values()
        .filter(|e| matches!(e.data, falcon_schemas::EventData::PaymentCompleted(_)))
        .count();
    ensure!(completed == 600, "{completed} of 600 completed");
    w.assert_invariants().await?;
    let paid = w.balance("k-b").await?;
    ensure!(paid.balance_minor == 60_000, "k-b holds {paid:?}");
    for run in running.into_iter().skip(1) {
        let (status, stderr) = run.terminate().await?;
        ensure!(status.success(), "exited with {status}: {stderr}");
    }
    Ok(())
}
