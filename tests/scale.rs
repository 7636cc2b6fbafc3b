//! More than one `falcon run` on the same databases and streams.

mod common;

use anyhow::{ensure, Context, Result};
use common::cli::{http_get, Running};
use common::{eventually, Backend, World};

backend_tests!(three_processes_start_at_once_on_fresh_databases);

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
    let mut running = Vec::new();
    let mut bases = Vec::new();
    for i in 0..3 {
        let port = common::nats::free_port()?;
        bases.push(format!("http://127.0.0.1:{port}"));
        let env = vec![
            ("FALCON__HTTP__LISTEN", format!("127.0.0.1:{port}")),
            ("FALCON__NODE", format!("start-{i}")),
        ];
        running.push(Running::spawn(&w, dir.path(), &[], &env)?);
    }
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
