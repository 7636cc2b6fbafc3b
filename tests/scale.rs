//! More than one `falcon run` on the same databases and streams.

mod common;

use anyhow::{ensure, Context, Result};
use common::cli::{falcon, http_get, ok, Running};
use common::{eventually, Backend, World};

backend_tests!(
    three_processes_start_at_once_on_fresh_databases,
    a_killed_process_hands_its_loops_to_the_survivors,
    two_relays_over_one_outbox_publish_every_row
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

/// Two relays (two processes) drain one actor's outbox at the same time.
/// Every row is published and marked. On PostgreSQL each relay claims the
/// rows it publishes (`FOR UPDATE SKIP LOCKED`), so together they publish
/// each row exactly once; on SQLite (one writer per file) a row both read
/// may go out twice, which the broker's duplicate window absorbs.
async fn two_relays_over_one_outbox_publish_every_row(b: Backend) -> Result<()> {
    use falcon_kernel::relay::{drain, Poke, RelayArgs};
    use falcon_kernel::store::outbox;
    use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, Set};

    let postgres = matches!(b, Backend::Postgres(_));
    let w = World::new(b).await?;
    let stores = w.stores().await?;
    let db = stores
        .get(falcon_sagas::Actor::Wallet)
        .context("the wallet's database")?
        .clone();
    let n: usize = 3_000;
    let now = chrono::Utc::now();
    let rows: Vec<outbox::ActiveModel> = (0..n)
        .map(|i| outbox::ActiveModel {
            event_id: Set(format!("relay-race-{i}")),
            subject: Set(format!("falcon.evt.wallet.funds_released.relay-race-{i}")),
            payload: Set(format!(r#"{{"race":{i}}}"#)),
            traceparent: Set(None),
            created_at: Set(now),
            published_at: Set(None),
            ..Default::default()
        })
        .collect();
    for chunk in rows.chunks(500) {
        outbox::Entity::insert_many(chunk.to_vec())
            .exec(&db)
            .await?;
    }
    // Each relay as its own process would run it: its own connection as
    // the wallet (the only identity that may publish its events).
    let ring = std::sync::Arc::new(w.ring()?);
    let mut relays = Vec::new();
    for name in ["relay-a", "relay-b"] {
        relays.push(RelayArgs {
            actor: falcon_sagas::Actor::Wallet,
            ring: ring.clone(),
            db: db.clone(),
            js: w.connect_as("wallet").await?,
            batch_max: 100,
            interval: std::time::Duration::ZERO,
            poke: Poke::new(name.into()),
        });
    }
    let (a, b) = (&relays[0], &relays[1]);
    let (pa, pb) = tokio::try_join!(drain(a), drain(b))?;
    let unpublished = outbox::Entity::find()
        .filter(outbox::Column::PublishedAt.is_null())
        .count(&db)
        .await?;
    ensure!(unpublished == 0, "{unpublished} rows left unpublished");
    ensure!(pa + pb >= n, "{pa} + {pb} publishes for {n} rows");
    if postgres {
        ensure!(
            pa + pb == n,
            "two relays published {pa} + {pb} times for {n} rows: a row went out twice"
        );
    }
    let stored =
        w.js.get_stream("FALCON_EVT")
            .await?
            .info()
            .await?
            .state
            .messages;
    ensure!(stored == n as u64, "{stored} events stored for {n} rows");
    Ok(())
}

/// Three processes started together on databases nobody has migrated: the
/// migrations are serialised, so all three come up, and together they pay.
async fn three_processes_start_at_once_on_fresh_databases(b: Backend) -> Result<()> {
    let w = World::new(b).await?;
    let dir = tempfile::tempdir()?;
    let (running, bases, _one_at_a_time) = processes(&w, dir.path(), "start").await?;
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

/// Held by a test while its three processes run. Three processes of four
/// actors hold up to about 100 PostgreSQL connections under load (each
/// actor's pool is a connection per consumer loop and four more); two such
/// tests at once (the suite runs two tests at a time) passed PostgreSQL's
/// default `max_connections` of 100 ("sorry, too many clients already") and
/// the test's own checks timed out waiting for a connection.
static THREE_PROCESSES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Three `falcon run` processes, nodes `<node>-<i>`, each with its HTTP
/// endpoints on a port of its own: the processes, their base URLs, and the
/// guard that keeps other three-process tests waiting while it is held.
async fn processes(
    w: &World,
    dir: &std::path::Path,
    node: &str,
) -> Result<(
    Vec<Running>,
    Vec<String>,
    tokio::sync::MutexGuard<'static, ()>,
)> {
    let guard = THREE_PROCESSES.lock().await;
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
    Ok((running, bases, guard))
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

/// Which process (by index in `procs`) owns each loop, once every loop
/// has exactly one owner among them and each of them owns at least one.
/// When that never happens, the error says what each process last
/// reported and what their logs say about the loops they owned.
async fn settled_owners(
    procs: &[(&str, &Running)],
) -> Result<std::collections::BTreeMap<String, usize>> {
    let seen = std::sync::Mutex::new(String::new());
    let settled = eventually(|| async {
        let mut owners: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
        let mut report = String::new();
        for (i, (base, _)) in procs.iter().enumerate() {
            let loops = match loops_of(base).await {
                Ok(loops) => loops,
                Err(e) => {
                    report.push_str(&format!("process {i}: {e:#}\n"));
                    continue;
                }
            };
            for (l, owns) in loops {
                let entry = owners.entry(l).or_default();
                if owns {
                    entry.push(i);
                }
            }
        }
        report.push_str(&format!("owners: {owners:?}\n"));
        *seen.lock().unwrap_or_else(|p| p.into_inner()) = report;
        let one_each = owners.values().all(|o| o.len() == 1);
        let everyone = (0..procs.len()).all(|i| owners.values().any(|o| o == &[i]));
        Ok((one_each && everyone).then(|| owners.into_iter().map(|(l, o)| (l, o[0])).collect()))
    })
    .await;
    settled.with_context(|| {
        let mut why = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (i, (_, run)) in procs.iter().enumerate() {
            let log = run.stderr();
            let owned: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("loops owned") || l.contains("ERROR") || l.contains("WARN"))
                .collect();
            let tail = owned.len().saturating_sub(12);
            why.push_str(&format!("process {i} log:\n{}\n", owned[tail..].join("\n")));
        }
        format!("the loops never had one owner each, spread over every process\n{why}")
    })
}

/// Three processes share the loops, one owner each. One is killed with
/// SIGKILL while payments are in flight: the survivors take its loops
/// over, every payment ends once, and the money adds up.
async fn a_killed_process_hands_its_loops_to_the_survivors(b: Backend) -> Result<()> {
    let w = World::new(b).await?;
    let dir = tempfile::tempdir()?;
    ok(falcon(&w, dir.path(), &["streams", "apply"])?)?;
    let (mut running, bases, _one_at_a_time) = processes(&w, dir.path(), "own").await?;
    let all: Vec<(&str, &Running)> = bases.iter().map(String::as_str).zip(&running).collect();
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

    let survivors: Vec<(&str, &Running)> = bases
        .iter()
        .map(String::as_str)
        .zip(&running)
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, p)| p)
        .collect();
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
