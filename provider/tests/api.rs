//! The provider's HTTP API end to end: a server in-process on 127.0.0.1:0
//! with a fresh ledger per test, driven with reqwest. Every wait is on a
//! response or a task, with a deadline; nothing sleeps to synchronise.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use falcon_provider::{declines, Config, Faults, Record, Status, Totals};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

/// How long any one request or shutdown may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(10);

const REPLAYED: &str = "idempotent-replayed";

/// A provider running in this process.
struct Server {
    base: String,
    client: reqwest::Client,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), falcon_provider::Error>>,
}

impl Server {
    async fn start(config: Config) -> Result<Server> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(falcon_provider::serve(listener, config, async move {
            let _ = stopped.await;
        }));
        let server = Server {
            base: format!("http://{addr}"),
            client: reqwest::Client::builder().timeout(DEADLINE).build()?,
            stop,
            task,
        };
        // Ready once it answers: the ledger is opened before it serves.
        let health = server.get("/health").send().await?;
        ensure!(
            health.status() == StatusCode::OK,
            "health: {}",
            health.status()
        );
        Ok(server)
    }

    /// Stops the server and waits for it to drain and close its ledger.
    async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .context("the server did not stop in time")???;
        Ok(())
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn get(&self, path: &str) -> RequestBuilder {
        self.client.get(self.url(path))
    }

    fn post(&self, path: &str) -> RequestBuilder {
        self.client.post(self.url(path))
    }

    fn charge_request(&self, key: &str, amount_minor: i64, currency: &str) -> RequestBuilder {
        self.post("/v1/charges").json(&json!({
            "key": key,
            "amount_minor": amount_minor,
            "currency": currency,
        }))
    }

    async fn charge(&self, key: &str, amount_minor: i64, currency: &str) -> Result<Response> {
        Ok(self
            .charge_request(key, amount_minor, currency)
            .send()
            .await?)
    }

    async fn void(&self, key: &str) -> Result<Response> {
        Ok(self.post(&format!("/v1/charges/{key}/void")).send().await?)
    }

    async fn totals(&self) -> Result<Totals> {
        let r = self.get("/v1/totals").send().await?;
        ensure!(r.status() == StatusCode::OK, "totals: {}", r.status());
        Ok(r.json().await?)
    }

    async fn page(&self, query: &str) -> Result<Page> {
        let r = self.get(&format!("/v1/charges{query}")).send().await?;
        ensure!(r.status() == StatusCode::OK, "page {query}: {}", r.status());
        Ok(r.json().await?)
    }

    async fn set_faults(&self, patch: Value) -> Result<Faults> {
        let r = self
            .client
            .put(self.url("/admin/faults"))
            .json(&patch)
            .send()
            .await?;
        ensure!(r.status() == StatusCode::OK, "faults: {}", r.status());
        Ok(r.json().await?)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    charges: Vec<Record>,
    next: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Refusal {
    error: String,
    message: String,
}

fn ledger_config(dir: &Path) -> Config {
    Config {
        ledger: dir.join("ledger.db"),
        ..Config::default()
    }
}

/// A fresh ledger in a temp dir, removed when dropped.
fn fresh() -> Result<(TempDir, PathBuf)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().to_path_buf();
    Ok((dir, path))
}

async fn start_fresh() -> Result<(TempDir, Server)> {
    let (dir, path) = fresh()?;
    let server = Server::start(ledger_config(&path)).await?;
    Ok((dir, server))
}

fn replayed(r: &Response) -> bool {
    r.headers().get(REPLAYED).is_some_and(|v| v == "true")
}

/// The response's status and record.
async fn record(r: Response) -> Result<(StatusCode, bool, Record)> {
    let status = r.status();
    let replayed = replayed(&r);
    let text = r.text().await?;
    let record = serde_json::from_str(&text).with_context(|| format!("{status}: {text}"))?;
    Ok((status, replayed, record))
}

/// Checks `r` is a refusal with `status` and `code`; returns its message.
async fn refused(r: Response, status: StatusCode, code: &str) -> Result<String> {
    let got = r.status();
    let text = r.text().await?;
    ensure!(got == status, "expected {status}, got {got}: {text}");
    let body: Refusal = serde_json::from_str(&text).with_context(|| text.clone())?;
    ensure!(body.error == code, "expected {code}: {text}");
    Ok(body.message)
}

fn usd(count: i64, amount_minor: i128) -> Vec<falcon_provider::ledger::CurrencyTotal> {
    vec![falcon_provider::ledger::CurrencyTotal {
        currency: "USD".into(),
        count,
        amount_minor,
    }]
}

#[tokio::test]
async fn a_charge_and_its_replay() -> Result<()> {
    let (_dir, s) = start_fresh().await?;

    let (status, was_replayed, first) = record(s.charge("order-1", 1250, "USD").await?).await?;
    assert_eq!(status, StatusCode::CREATED);
    assert!(!was_replayed);
    assert_eq!(first.seq, 1);
    assert_eq!(first.rev, 1);
    assert_eq!(first.key, "order-1");
    assert_eq!(first.status, Status::Charged);
    assert_eq!(first.amount_minor, 1250);
    assert_eq!(first.currency, "USD");
    assert_eq!(first.settlement_id.as_deref(), Some("prv-1"));
    assert_eq!(first.reason, None);
    assert_eq!(first.voided_at, None);

    let (status, was_replayed, again) = record(s.charge("order-1", 1250, "USD").await?).await?;
    assert_eq!(status, StatusCode::OK);
    assert!(was_replayed);
    assert_eq!(again, first);

    let (status, _, got) = record(s.get("/v1/charges/order-1").send().await?).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got, first);

    let totals = s.totals().await?;
    assert_eq!(totals.charged, usd(1, 1250));
    assert!(totals.voided.is_empty());
    assert_eq!(totals.declined_count, 0);

    // The record's JSON, field by field as the wire has it.
    let raw: Value = s.get("/v1/charges/order-1").send().await?.json().await?;
    let fields: Vec<&str> = raw
        .as_object()
        .context("an object")?
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = vec![
        "amount_minor",
        "created_at",
        "currency",
        "key",
        "reason",
        "rev",
        "seq",
        "settlement_id",
        "status",
        "voided_at",
    ];
    let mut fields = fields;
    fields.sort_unstable();
    expected.sort_unstable();
    assert_eq!(fields, expected);
    assert_eq!(raw["status"], "charged");
    assert!(raw["created_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    s.stop().await
}

#[tokio::test]
async fn a_key_reused_for_another_charge_is_refused() -> Result<()> {
    let (_dir, s) = start_fresh().await?;
    assert_eq!(
        s.charge("k", 100, "USD").await?.status(),
        StatusCode::CREATED
    );
    let message = refused(
        s.charge("k", 101, "USD").await?,
        StatusCode::CONFLICT,
        "key_reused",
    )
    .await?;
    assert!(message.contains("100 USD"), "{message}");
    refused(
        s.charge("k", 100, "EUR").await?,
        StatusCode::CONFLICT,
        "key_reused",
    )
    .await?;
    assert_eq!(s.totals().await?.charged, usd(1, 100));
    s.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_requests_make_one_charge() -> Result<()> {
    let (_dir, s) = start_fresh().await?;
    let mut requests = JoinSet::new();
    for _ in 0..20 {
        let request = s.charge_request("race", 777, "GBP");
        requests.spawn(async move { record(request.send().await?).await });
    }
    let mut created = 0;
    let mut replays = 0;
    let mut records = Vec::new();
    while let Some(done) = tokio::time::timeout(DEADLINE, requests.join_next())
        .await
        .context("the requests did not finish in time")?
    {
        let (status, was_replayed, record) = done??;
        match (status, was_replayed) {
            (StatusCode::CREATED, false) => created += 1,
            (StatusCode::OK, true) => replays += 1,
            other => bail!("unexpected answer {other:?}"),
        }
        records.push(record);
    }
    assert_eq!((created, replays), (1, 19));
    assert!(records.iter().all(|r| *r == records[0]));
    let totals = s.totals().await?;
    assert_eq!(totals.charged.len(), 1);
    assert_eq!(totals.charged[0].count, 1);
    assert_eq!(totals.charged[0].amount_minor, 777);
    assert_eq!(s.page("").await?.charges.len(), 1);
    s.stop().await
}

#[tokio::test]
async fn declines_follow_the_key() -> Result<()> {
    const BPS: u32 = 5_000;
    let keys: Vec<String> = (0..20).map(|i| format!("det-{i}")).collect();
    let expected: Vec<bool> = keys.iter().map(|k| declines(k, BPS)).collect();
    assert!(expected.iter().any(|d| *d) && expected.iter().any(|d| !*d));

    let mut outcomes = Vec::new();
    for _ in 0..2 {
        // Two providers, two ledgers: the same keys, the same answers.
        let (dir, path) = fresh()?;
        let s = Server::start(Config {
            faults: Faults {
                decline_bps: BPS,
                ..Faults::default()
            },
            ..ledger_config(&path)
        })
        .await?;
        let mut statuses = Vec::new();
        for (key, decline) in keys.iter().zip(&expected) {
            let (status, _, r) = record(s.charge(key, 500, "EUR").await?).await?;
            if *decline {
                assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{key}");
                assert_eq!(r.status, Status::Declined);
                assert_eq!(r.reason.as_deref(), Some("simulated decline"));
                assert_eq!(r.settlement_id, None);
                // A decline replays as a decline.
                let (again, was_replayed, same) = record(s.charge(key, 500, "EUR").await?).await?;
                assert_eq!(again, StatusCode::PAYMENT_REQUIRED);
                assert!(was_replayed);
                assert_eq!(same, r);
            } else {
                assert_eq!(status, StatusCode::CREATED, "{key}");
                assert_eq!(r.status, Status::Charged);
            }
            statuses.push(status);
        }
        let declined = expected.iter().filter(|d| **d).count();
        let totals = s.totals().await?;
        assert_eq!(usize::try_from(totals.declined_count)?, declined);
        assert_eq!(
            usize::try_from(totals.charged[0].count)?,
            keys.len() - declined
        );
        outcomes.push(statuses);
        s.stop().await?;
        drop(dir);
    }
    assert_eq!(outcomes[0], outcomes[1]);

    // The edges: 10000 declines every key, and a key once declined stays
    // declined when declines are switched off.
    let (_dir, s) = start_fresh().await?;
    s.set_faults(json!({"decline_bps": 10_000})).await?;
    assert_eq!(
        s.charge("any", 1, "USD").await?.status(),
        StatusCode::PAYMENT_REQUIRED
    );
    s.set_faults(json!({"decline_bps": 0})).await?;
    assert_eq!(
        s.charge("any", 1, "USD").await?.status(),
        StatusCode::PAYMENT_REQUIRED
    );
    assert_eq!(
        s.charge("other", 1, "USD").await?.status(),
        StatusCode::CREATED
    );
    s.stop().await
}

#[tokio::test]
async fn an_outage_refuses_and_records_nothing() -> Result<()> {
    let (_dir, s) = start_fresh().await?;
    assert_eq!(
        s.charge("before", 5, "USD").await?.status(),
        StatusCode::CREATED
    );
    let faults = s.set_faults(json!({"outage": true})).await?;
    assert!(faults.outage);
    refused(
        s.charge("k", 5, "USD").await?,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    )
    .await?;
    refused(
        s.get("/v1/charges/before").send().await?,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    )
    .await?;
    refused(
        s.void("before").await?,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    )
    .await?;
    // The admin API and health stay up.
    assert_eq!(s.get("/health").send().await?.status(), StatusCode::OK);

    s.set_faults(json!({"outage": false})).await?;
    refused(
        s.get("/v1/charges/k").send().await?,
        StatusCode::NOT_FOUND,
        "unknown_key",
    )
    .await?;
    let (_, _, before) = record(s.get("/v1/charges/before").send().await?).await?;
    assert_eq!(before.status, Status::Charged);
    let totals = s.totals().await?;
    assert_eq!(totals.charged, usd(1, 5));
    s.stop().await?;

    // An outage from the start, as configured.
    let (_dir, path) = fresh()?;
    let s = Server::start(Config {
        faults: Faults {
            outage: true,
            ..Faults::default()
        },
        ..ledger_config(&path)
    })
    .await?;
    refused(
        s.charge("k", 5, "USD").await?,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    )
    .await?;
    s.set_faults(json!({"outage": false})).await?;
    assert_eq!(s.page("").await?.charges.len(), 0);
    s.stop().await
}

#[tokio::test]
async fn voids() -> Result<()> {
    let (_dir, s) = start_fresh().await?;
    let (_, _, charged) = record(s.charge("v", 900, "USD").await?).await?;

    let (status, was_replayed, voided) = record(s.void("v").await?).await?;
    assert_eq!(status, StatusCode::OK);
    assert!(!was_replayed);
    assert_eq!(voided.status, Status::Voided);
    assert!(voided.voided_at.is_some());
    assert_eq!(voided.settlement_id, charged.settlement_id);
    // The void is a change: the record gets the next rev.
    assert_eq!(voided.rev, charged.rev + 1);
    assert_eq!(
        Record {
            status: Status::Charged,
            voided_at: None,
            rev: charged.rev,
            ..voided.clone()
        },
        charged
    );

    let (status, was_replayed, again) = record(s.void("v").await?).await?;
    assert_eq!(status, StatusCode::OK);
    assert!(was_replayed);
    assert_eq!(again, voided);

    let (_, _, got) = record(s.get("/v1/charges/v").send().await?).await?;
    assert_eq!(got, voided);
    // A retried charge of a voided key answers with the voided record.
    let (status, was_replayed, retried) = record(s.charge("v", 900, "USD").await?).await?;
    assert_eq!(status, StatusCode::OK);
    assert!(was_replayed);
    assert_eq!(retried, voided);

    s.set_faults(json!({"decline_bps": 10_000})).await?;
    assert_eq!(
        s.charge("d", 1, "USD").await?.status(),
        StatusCode::PAYMENT_REQUIRED
    );
    refused(s.void("d").await?, StatusCode::CONFLICT, "not_charged").await?;
    refused(
        s.void("nobody").await?,
        StatusCode::NOT_FOUND,
        "unknown_key",
    )
    .await?;

    let totals = s.totals().await?;
    assert!(totals.charged.is_empty());
    assert_eq!(totals.voided, usd(1, 900));
    assert_eq!(totals.declined_count, 1);
    assert_eq!(totals.closed_count, 0);
    s.stop().await
}

/// A close settles a key for good without charging. A key never seen is
/// closed: a charge arriving for it afterwards (one still on its way when
/// its payment was given up) is answered with the voided record and
/// charges nothing. A key already settled keeps its record: a charge that
/// landed before the close stays charged, and the close answers with it,
/// so that whoever gave up learns the money moved. The body must be for
/// the key of the path and for the amount the key holds.
#[tokio::test]
async fn a_close_settles_a_key_for_good() -> Result<()> {
    let (_dir, s) = start_fresh().await?;
    let close = |key: &str, body: Value| {
        s.post(&format!("/v1/charges/{key}/close"))
            .json(&body)
            .send()
    };
    let body = |key: &str, amount_minor: i64| json!({"key": key, "amount_minor": amount_minor, "currency": "USD"});
    let (status, was_replayed, closed) = record(close("late", body("late", 700)).await?).await?;
    assert_eq!(status, StatusCode::OK);
    assert!(!was_replayed);
    assert_eq!(closed.status, Status::Voided);
    assert_eq!(closed.settlement_id, None);
    assert_eq!(closed.reason.as_deref(), Some("voided before any charge"));
    assert!(closed.voided_at.is_some());

    let (status, was_replayed, late) = record(s.charge("late", 700, "USD").await?).await?;
    assert_eq!(status, StatusCode::OK, "the late charge is answered voided");
    assert!(was_replayed);
    assert_eq!(late, closed);
    refused(
        s.charge("late", 701, "USD").await?,
        StatusCode::CONFLICT,
        "key_reused",
    )
    .await?;

    // Closing again is a replay.
    let (_, was_replayed, again) = record(close("late", body("late", 700)).await?).await?;
    assert!(was_replayed);
    assert_eq!(again, closed);

    // A charge that landed first stands: the close answers with it.
    let (status, _, paid) = record(s.charge("paid", 300, "USD").await?).await?;
    assert_eq!(status, StatusCode::CREATED);
    let (status, was_replayed, after) = record(close("paid", body("paid", 300)).await?).await?;
    assert_eq!(status, StatusCode::OK);
    assert!(was_replayed);
    assert_eq!(after, paid, "a close never undoes a charge");
    let (_, _, still) = record(s.get("/v1/charges/paid").send().await?).await?;
    assert_eq!(still.status, Status::Charged);

    // A decline stands too.
    s.set_faults(json!({"decline_bps": 10_000})).await?;
    let (status, _, declined) = record(s.charge("no", 5, "USD").await?).await?;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    s.set_faults(json!({"decline_bps": 0})).await?;
    let (status, was_replayed, after) = record(close("no", body("no", 5)).await?).await?;
    assert_eq!(status, StatusCode::OK);
    assert!(was_replayed);
    assert_eq!(after, declined);

    for (key, body, status, code) in [
        (
            "paid",
            body("paid", 301),
            StatusCode::CONFLICT,
            "key_reused",
        ),
        ("late", body("late", 1), StatusCode::CONFLICT, "key_reused"),
        (
            "paid",
            body("other", 300),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        ("x", body("x", 0), StatusCode::BAD_REQUEST, "bad_request"),
        (
            "x",
            json!({"key": "x"}),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
    ] {
        refused(close(key, body).await?, status, code).await?;
    }
    refused(
        s.post("/v1/charges/x/close").send().await?,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await?;
    // A void takes no body: closing is its own request.
    refused(
        s.post("/v1/charges/x/void")
            .json(&body("x", 300))
            .send()
            .await?,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await?;

    let totals = s.totals().await?;
    assert_eq!(totals.charged, usd(1, 300), "{totals:?}");
    assert!(
        totals.voided.is_empty(),
        "only charges undone count as voided"
    );
    assert_eq!(totals.closed_count, 1);
    assert_eq!(totals.declined_count, 1);
    assert_eq!(
        s.get("/v1/charges/x").send().await?.status(),
        StatusCode::NOT_FOUND
    );

    let stats: Value = s.get("/admin/stats").send().await?.json().await?;
    assert_eq!(stats["requests"]["close"], 10, "{stats}");
    assert_eq!(stats["requests"]["void"], 1, "{stats}");
    assert_eq!(stats["requests"]["charge"], 4, "{stats}");
    assert_eq!(stats["requests"]["lookup"], 2, "{stats}");
    assert_eq!(stats["refused_in_outage"]["close"], 0, "{stats}");
    s.set_faults(json!({"outage": true})).await?;
    assert_eq!(
        close("late", body("late", 700)).await?.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let stats: Value = s.get("/admin/stats").send().await?.json().await?;
    assert_eq!(stats["refused_in_outage"]["close"], 1, "{stats}");
    s.stop().await
}

#[tokio::test]
async fn pages_in_seq_order() -> Result<()> {
    let (_dir, s) = start_fresh().await?;
    for i in 1..=5 {
        assert_eq!(
            s.charge(&format!("p-{i}"), i, "USD").await?.status(),
            StatusCode::CREATED
        );
    }
    let seqs = |p: &Page| p.charges.iter().map(|r| r.seq).collect::<Vec<_>>();

    let all = s.page("").await?;
    assert_eq!(seqs(&all), vec![1, 2, 3, 4, 5]);
    // Charges only, nothing changed: each record's rev is its seq, and
    // `next` (a rev) is the last seq too.
    assert!(all.charges.iter().all(|r| r.rev == r.seq));
    assert_eq!(all.next, Some(5));
    assert_eq!(all.charges[2].key, "p-3");

    let mut after = 0;
    let mut walked = Vec::new();
    loop {
        let page = s.page(&format!("?after={after}&limit=2")).await?;
        assert!(page.charges.len() <= 2);
        walked.extend(seqs(&page));
        match page.next {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(walked, vec![1, 2, 3, 4, 5]);
    let last = s.page("?after=5").await?;
    assert!(last.charges.is_empty());
    assert_eq!(last.next, None);
    assert_eq!(seqs(&s.page("?limit=1000&after=3").await?), vec![4, 5]);

    for query in [
        "?limit=1001",
        "?limit=0",
        "?limit=x",
        "?after=-1",
        "?sort=seq",
    ] {
        refused(
            s.get(&format!("/v1/charges{query}")).send().await?,
            StatusCode::BAD_REQUEST,
            "bad_request",
        )
        .await
        .with_context(|| query.to_owned())?;
    }
    s.stop().await
}

/// The list is the ledger's change journal, by `rev`: a void moves a
/// charge to the end, at a new rev, so a reader paging from its checkpoint
/// sees it; a close and a decline are changes too; a replay is none.
#[tokio::test]
async fn the_list_shows_every_change_in_order() -> Result<()> {
    let (_dir, s) = start_fresh().await?;
    let view = |p: &Page| {
        p.charges
            .iter()
            .map(|r| (r.key.clone(), r.status))
            .collect::<Vec<_>>()
    };
    let revs = |p: &Page| p.charges.iter().map(|r| r.rev).collect::<Vec<_>>();
    let increasing = |revs: &[i64]| revs.windows(2).all(|w| w[0] < w[1]);
    let key = |k: &str, st: Status| (k.to_owned(), st);

    for k in ["a", "b", "c"] {
        assert_eq!(s.charge(k, 10, "USD").await?.status(), StatusCode::CREATED);
    }
    let (status, _, a) = record(s.void("a").await?).await?;
    assert_eq!(status, StatusCode::OK);

    let all = s.page("").await?;
    assert_eq!(
        view(&all),
        vec![
            key("b", Status::Charged),
            key("c", Status::Charged),
            key("a", Status::Voided)
        ]
    );
    assert!(increasing(&revs(&all)), "{:?}", revs(&all));
    assert_eq!(
        all.charges.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![2, 3, 1],
        "seq stays the place of the insert"
    );
    assert_eq!(all.charges[2], a, "the list has the record as it stands");
    assert_eq!(all.next, Some(a.rev));

    // A reader whose checkpoint is c sees the void of a, and only it.
    let c_rev = all.charges[1].rev;
    let since = s.page(&format!("?after={c_rev}")).await?;
    assert_eq!(view(&since), vec![key("a", Status::Voided)]);
    assert_eq!(since.next, Some(a.rev));
    let caught_up = s.page(&format!("?after={}", a.rev)).await?;
    assert!(caught_up.charges.is_empty());
    assert_eq!(caught_up.next, None);

    // Replays write nothing: no new rev.
    assert_eq!(s.charge("a", 10, "USD").await?.status(), StatusCode::OK);
    assert!(replayed(&s.void("a").await?));
    let close = |k: &str| {
        s.post(&format!("/v1/charges/{k}/close"))
            .json(&json!({"key": k, "amount_minor": 10, "currency": "USD"}))
            .send()
    };
    assert!(replayed(&close("c").await?), "c stays charged");
    assert_eq!(s.page("").await?.charges, all.charges);

    // A close of a key never seen is a change; so is a decline.
    let (status, was_replayed, d) = record(close("d").await?).await?;
    assert_eq!((status, was_replayed), (StatusCode::OK, false));
    assert_eq!(d.rev, a.rev + 1);
    s.set_faults(json!({"decline_bps": 10_000})).await?;
    assert_eq!(
        s.charge("e", 10, "USD").await?.status(),
        StatusCode::PAYMENT_REQUIRED
    );
    s.set_faults(json!({"decline_bps": 0})).await?;
    // And b voided after all of it comes last.
    record(s.void("b").await?).await?;

    let expected = vec![
        key("c", Status::Charged),
        key("a", Status::Voided),
        key("d", Status::Voided),
        key("e", Status::Declined),
        key("b", Status::Voided),
    ];
    let all = s.page("").await?;
    assert_eq!(view(&all), expected);
    assert!(increasing(&revs(&all)), "{:?}", revs(&all));
    let since = s.page(&format!("?after={c_rev}")).await?;
    assert_eq!(view(&since), expected[1..].to_vec());

    // Walked by pages of every size, from the start and from a
    // checkpoint: the same records in the same order, `next` the last rev
    // of each page, an empty page at the end.
    for limit in 1..=6 {
        for start in [0, c_rev] {
            let mut after = start;
            let mut walked = Vec::new();
            loop {
                let page = s.page(&format!("?after={after}&limit={limit}")).await?;
                assert!(page.charges.len() <= limit);
                assert_eq!(page.next, page.charges.last().map(|r| r.rev));
                assert!(page.charges.iter().all(|r| r.rev > after));
                walked.extend(page.charges);
                match page.next {
                    Some(next) => after = next,
                    None => break,
                }
            }
            let want: Vec<Record> = all
                .charges
                .iter()
                .filter(|r| r.rev > start)
                .cloned()
                .collect();
            assert_eq!(walked, want, "limit {limit}, after {start}");
        }
    }
    // Past the last rev, or far past it: nothing, and no `next`.
    for after in [revs(&all).last().copied().unwrap_or(0), i64::MAX] {
        let page = s.page(&format!("?after={after}")).await?;
        assert!(page.charges.is_empty());
        assert_eq!(page.next, None);
    }
    s.stop().await
}

#[tokio::test]
async fn keys_guard_the_api_and_the_admin_api_apart() -> Result<()> {
    let (_dir, path) = fresh()?;
    let s = Server::start(Config {
        api_key: Some("api-secret".into()),
        admin_key: Some("admin-secret".into()),
        ..ledger_config(&path)
    })
    .await?;
    let charge = || s.charge_request("auth-1", 10, "USD");
    let faults = || s.get("/admin/faults");
    let unauthenticated = |r: RequestBuilder| async move {
        refused(r.send().await?, StatusCode::UNAUTHORIZED, "unauthenticated").await
    };
    unauthenticated(charge()).await?;
    unauthenticated(charge().bearer_auth("wrong")).await?;
    unauthenticated(charge().bearer_auth("admin-secret")).await?;
    unauthenticated(s.get("/v1/totals")).await?;
    assert_eq!(
        charge().bearer_auth("api-secret").send().await?.status(),
        StatusCode::CREATED
    );
    unauthenticated(faults()).await?;
    unauthenticated(faults().bearer_auth("api-secret")).await?;
    let r = faults().bearer_auth("admin-secret").send().await?;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Faults>().await?, Faults::default());

    let health: Value = s.get("/health").send().await?.json().await?;
    assert_eq!(health, json!({"status": "ok"}));

    // Nothing was charged by the refused requests.
    let r = s.get("/v1/totals").bearer_auth("api-secret").send().await?;
    let totals: Totals = r.json().await?;
    assert_eq!(totals.charged, usd(1, 10));
    s.stop().await
}

#[tokio::test]
async fn bad_input_is_refused_and_records_nothing() -> Result<()> {
    let (_dir, s) = start_fresh().await?;
    let body = |v: Value| s.post("/v1/charges").json(&v);
    let bad = |r: Response, field: &'static str| async move {
        let message = refused(r, StatusCode::BAD_REQUEST, "bad_request").await?;
        ensure!(message.starts_with(field), "{field}: {message}");
        Ok::<_, anyhow::Error>(())
    };

    let oversized =
        json!({"key": "big", "amount_minor": 1, "currency": "USD", "pad": "x".repeat(5_000)});
    bad(body(oversized).send().await?, "body").await?;
    bad(
        body(json!({"key": "k", "amount_minor": 1, "currency": "USD", "extra": true}))
            .send()
            .await?,
        "body",
    )
    .await?;
    for currency in ["usd", "US", "USDX", ""] {
        bad(s.charge("k", 1, currency).await?, "currency").await?;
    }
    for amount in [0, -1, i64::MIN] {
        bad(s.charge("k", amount, "USD").await?, "amount_minor").await?;
    }
    bad(
        body(json!({"key": "k", "amount_minor": 1.5, "currency": "USD"}))
            .send()
            .await?,
        "amount_minor",
    )
    .await?;
    for key in ["a b", "tab\tkey", "", &"k".repeat(129)] {
        bad(s.charge(key, 1, "USD").await?, "key").await?;
    }
    bad(s.post("/v1/charges").body("not json").send().await?, "body").await?;
    bad(s.post("/v1/charges").send().await?, "body").await?;
    bad(s.get("/v1/charges/%FF").send().await?, "key").await?;
    bad(s.get("/v1/charges/a%20b").send().await?, "key").await?;

    // Faults out of range, or unknown, leave the faults as they were.
    for patch in [
        json!({"decline_bps": 10_001}),
        json!({"hang_after_charge_bps": -1}),
        json!({"outage": "yes"}),
        json!({"chaos": true}),
    ] {
        let r = s
            .client
            .put(s.url("/admin/faults"))
            .json(&patch)
            .send()
            .await?;
        refused(r, StatusCode::BAD_REQUEST, "bad_request").await?;
    }
    let faults: Faults = s.get("/admin/faults").send().await?.json().await?;
    assert_eq!(faults, Faults::default());

    refused(
        s.get("/v2/nothing").send().await?,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await?;
    refused(
        s.client.delete(s.url("/v1/charges")).send().await?,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await?;

    let totals = s.totals().await?;
    assert!(totals.charged.is_empty() && totals.voided.is_empty());
    assert_eq!(totals.declined_count, 0);
    assert!(s.page("").await?.charges.is_empty());
    s.stop().await
}

#[tokio::test]
async fn the_ledger_survives_a_restart() -> Result<()> {
    let (_dir, path) = fresh()?;
    let s = Server::start(ledger_config(&path)).await?;
    let (_, _, kept) = record(s.charge("r-1", 42, "JPY").await?).await?;
    record(s.charge("r-2", 7, "JPY").await?).await?;
    let (_, _, voided) = record(s.void("r-2").await?).await?;
    s.stop().await?;

    let s = Server::start(ledger_config(&path)).await?;
    let (status, was_replayed, again) = record(s.charge("r-1", 42, "JPY").await?).await?;
    assert_eq!(status, StatusCode::OK);
    assert!(was_replayed);
    assert_eq!(again, kept);
    let (_, _, still) = record(s.get("/v1/charges/r-2").send().await?).await?;
    assert_eq!(still, voided);
    let (status, _, next) = record(s.charge("r-3", 1, "JPY").await?).await?;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(next.seq, 3);
    // Two charges and a void before the restart: the next rev is 4.
    assert_eq!(next.rev, 4);
    let totals = s.totals().await?;
    assert_eq!(totals.charged.len(), 1);
    assert_eq!(
        (totals.charged[0].count, totals.charged[0].amount_minor),
        (2, 43)
    );
    assert_eq!(
        (totals.voided[0].count, totals.voided[0].amount_minor),
        (1, 7)
    );
    s.stop().await
}

#[tokio::test]
async fn a_timeout_after_charging_leaves_the_charge_standing() -> Result<()> {
    let (_dir, path) = fresh()?;
    let s = Server::start(Config {
        faults: Faults {
            hang_after_charge_bps: 10_000,
            hang_ms: 2_000,
            ..Faults::default()
        },
        ..ledger_config(&path)
    })
    .await?;

    let lost = s
        .charge_request("hung", 300, "USD")
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    match lost {
        Err(e) if e.is_timeout() => {}
        other => bail!("expected a timeout, got {other:?}"),
    }
    // The charge was committed before the hang.
    let (status, _, standing) = record(s.get("/v1/charges/hung").send().await?).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(standing.status, Status::Charged);

    let faults = s.set_faults(json!({"hang_after_charge_bps": 0})).await?;
    assert_eq!(faults.hang_after_charge_bps, 0);
    assert_eq!(faults.hang_ms, 2_000);
    let retried = s
        .charge_request("hung", 300, "USD")
        .timeout(Duration::from_millis(1_000))
        .send()
        .await?;
    let (status, was_replayed, same) = record(retried).await?;
    assert_eq!(status, StatusCode::OK);
    assert!(was_replayed);
    assert_eq!(same, standing);
    // New charges answer at once again.
    let fresh = s
        .charge_request("prompt", 1, "USD")
        .timeout(Duration::from_millis(1_000))
        .send()
        .await?;
    assert_eq!(fresh.status(), StatusCode::CREATED);
    assert_eq!(s.totals().await?.charged, usd(2, 301));
    s.stop().await
}

#[tokio::test]
async fn latency_delays_answers_and_faults_patch_in_part() -> Result<()> {
    let (_dir, s) = start_fresh().await?;
    let faults = s.set_faults(json!({"latency_ms": 150})).await?;
    assert_eq!(
        faults,
        Faults {
            latency_ms: 150,
            ..Faults::default()
        }
    );
    let started = Instant::now();
    assert_eq!(
        s.charge("slow", 1, "USD").await?.status(),
        StatusCode::CREATED
    );
    assert!(started.elapsed() >= Duration::from_millis(150));
    let faults: Faults = s.get("/admin/faults").send().await?.json().await?;
    assert_eq!(faults.latency_ms, 150);
    s.stop().await
}

#[tokio::test]
async fn bad_configurations_are_refused() -> Result<()> {
    let (_dir, path) = fresh()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let refused = falcon_provider::serve(
        listener,
        Config {
            faults: Faults {
                decline_bps: 10_001,
                ..Faults::default()
            },
            ..ledger_config(&path)
        },
        std::future::pending(),
    )
    .await;
    assert!(matches!(refused, Err(falcon_provider::Error::Config(_))));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let refused = falcon_provider::serve(
        listener,
        Config {
            api_key: Some("  ".into()),
            ..ledger_config(&path)
        },
        std::future::pending(),
    )
    .await;
    assert!(matches!(refused, Err(falcon_provider::Error::Config(_))));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let refused = falcon_provider::serve(
        listener,
        Config {
            ledger: path.join("no-such-dir").join("ledger.db"),
            ..Config::default()
        },
        std::future::pending(),
    )
    .await;
    assert!(matches!(
        refused,
        Err(falcon_provider::Error::Ledger { .. })
    ));
    Ok(())
}
