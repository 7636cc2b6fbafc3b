//! The `falcon` binary against a real nats-server and real databases.

mod common;

use std::process::Command;

use anyhow::Result;
use common::cli::{falcon, json, ok};
use common::{Backend, NatsOptions, NatsServer, World};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_apply_is_idempotent() -> Result<()> {
    let w = World::new(Backend::Sqlite).await?;
    let dir = tempfile::tempdir()?;
    let first = json(&ok(falcon(
        &w,
        dir.path(),
        &["--json", "streams", "apply"],
    )?)?)?;
    let second = json(&ok(falcon(
        &w,
        dir.path(),
        &["--json", "streams", "apply"],
    )?)?)?;
    let actions = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|c| c["action"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    // Two command consumers, five event consumers per partition (payment,
    // the saga view, risk, wallet, recon).
    let consumers = 2 + 5 * w.settings.consumer.partitions as usize;
    assert_eq!(
        actions(&first).len(),
        3 + consumers,
        "3 streams and {consumers} consumers: {first}"
    );
    // The world provisioned the topology with the same code as it started
    // (as `falcon streams apply` would have): nothing is left to create.
    assert!(actions(&first).iter().all(|a| a == "unchanged"), "{first}");
    assert!(
        actions(&second).iter().all(|a| a == "unchanged"),
        "{second}"
    );
    let info =
        w.js.get_stream("FALCON_CMD")
            .await?
            .info()
            .await?
            .config
            .clone();
    assert!(info.duplicate_window >= std::time::Duration::from_secs(120));
    assert_eq!(
        info.storage,
        async_nats::jetstream::stream::StorageType::File
    );
    Ok(())
}

/// An install provisioned before consumers had an owner (no priority group)
/// is upgraded in place by `streams apply`: the durable keeps its place in
/// the stream (ack floor, pending messages) and gains the `owner` group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_apply_upgrades_a_durable_made_without_an_owner() -> Result<()> {
    use async_nats::jetstream::consumer::{self, PriorityPolicy};
    let w = World::new(Backend::Sqlite).await?;
    let dir = tempfile::tempdir()?;
    let provisioning = w.connect_as("provisioning").await?;
    let wallet = w.connect_as("wallet").await?;
    let stream = provisioning.get_stream("FALCON_CMD").await?;
    let pinned = stream.consumer_info("wallet-cmd").await?.config.clone();
    assert_eq!(pinned.priority_policy, PriorityPolicy::PinnedClient);
    // The durable as the earlier release made it.
    let old = consumer::pull::Config {
        durable_name: pinned.durable_name.clone(),
        description: pinned.description.clone(),
        ack_policy: pinned.ack_policy,
        ack_wait: pinned.ack_wait,
        max_deliver: pinned.max_deliver,
        max_ack_pending: pinned.max_ack_pending,
        filter_subject: pinned.filter_subject.clone(),
        filter_subjects: pinned.filter_subjects.clone(),
        ..Default::default()
    };
    stream.create_consumer(old).await?;
    assert_eq!(
        stream
            .consumer_info("wallet-cmd")
            .await?
            .config
            .priority_policy,
        PriorityPolicy::None
    );
    // Five commands; the old reader handles (acks) two of them.
    for i in 0..5 {
        let body = format!(r#"{{"wallet_id":"upgrade-{i}","owner":"o","currency":"USD"}}"#);
        w.client
            .publish(
                falcon_schemas::CommandKind::WalletOpen.subject(common::CLIENT),
                body.into(),
            )
            .await?
            .await?;
    }
    let reader: consumer::PullConsumer = wallet
        .get_stream("FALCON_CMD")
        .await?
        .get_consumer("wallet-cmd")
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut batch = reader.fetch().max_messages(2).messages().await?;
    let mut acked = 0;
    while let Some(m) = futures::StreamExt::next(&mut batch).await {
        m.map_err(|e| anyhow::anyhow!("{e}"))?
            .double_ack()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        acked += 1;
    }
    assert_eq!(acked, 2);
    let before = stream.consumer_info("wallet-cmd").await?.clone();

    let out = json(&ok(falcon(
        &w,
        dir.path(),
        &["--json", "streams", "apply"],
    )?)?)?;
    let changed: Vec<String> = out
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["action"] != "unchanged")
        .map(|c| format!("{} {}", c["name"], c["action"]))
        .collect();
    assert_eq!(
        changed,
        vec!["\"FALCON_CMD/wallet-cmd\" \"updated\"".to_owned()],
        "{out}"
    );

    let after = stream.consumer_info("wallet-cmd").await?.clone();
    assert_eq!(after.config.priority_policy, PriorityPolicy::PinnedClient);
    assert_eq!(after.config.priority_groups, vec!["owner".to_owned()]);
    assert_eq!(after.config.priority_timeout, pinned.priority_timeout);
    assert_eq!(
        after.ack_floor.stream_sequence,
        before.ack_floor.stream_sequence
    );
    assert_eq!(after.num_pending, before.num_pending);
    assert_eq!(
        after.num_pending, 3,
        "the three unhandled commands wait for the owner"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_verbs_end_to_end() -> Result<()> {
    let w = World::new(Backend::Sqlite).await?;
    let rt = w.start().await?;
    let dir = tempfile::tempdir()?;
    let run = |args: &[&str]| falcon(&w, dir.path(), args);
    ok(run(&[
        "wallet",
        "open",
        "alice",
        "--owner",
        "Alice",
        "--currency",
        "USD",
        "--wait",
    ])?)?;
    ok(run(&[
        "wallet",
        "open",
        "bob",
        "--owner",
        "Bob",
        "--currency",
        "USD",
        "--wait",
    ])?)?;
    ok(run(&[
        "wallet",
        "deposit",
        "alice",
        "50.00",
        "--currency",
        "USD",
        "--reference",
        "d1",
        "--wait",
    ])?)?;
    // A resent deposit finds its first outcome and moves nothing.
    ok(run(&[
        "wallet",
        "deposit",
        "alice",
        "50.00",
        "--currency",
        "USD",
        "--reference",
        "d1",
        "--wait",
    ])?)?;
    let paid = json(&ok(run(&[
        "--json",
        "pay",
        "--from",
        "alice",
        "--to",
        "bob",
        "--amount",
        "20.00",
        "--currency",
        "USD",
        "--id",
        "p1",
        "--wait",
    ])?)?)?;
    assert_eq!(paid["type"], "falcon.payment.completed.v1");

    let show = json(&ok(run(&["--json", "saga", "show", "p1"])?)?)?;
    assert_eq!(show["state"], "completed");
    assert_eq!(show["terminal"], true);
    assert_eq!(show["steps"].as_array().map(Vec::len), Some(6));
    assert_eq!(show["steps"][2]["actor"], "wallet");
    assert_eq!(show["steps"][2]["step"], "reserve_funds");
    let human = ok(run(&["saga", "show", "p1"])?)?;
    let text = String::from_utf8(human.stdout)?;
    assert!(
        text.contains("wallet.funds_reserved") && text.contains("state: completed"),
        "{text}"
    );

    let list = json(&ok(run(&[
        "--json",
        "saga",
        "list",
        "--state",
        "completed",
        "--limit",
        "18446744073709551615",
    ])?)?)?;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    let balance = json(&ok(run(&["--json", "wallet", "balance", "alice"])?)?)?;
    assert_eq!(
        (balance["balance"].as_str(), balance["available"].as_str()),
        (Some("30.00"), Some("30.00"))
    );

    // A rejected command: exit code 2 and the reason.
    let rejected = run(&[
        "pay",
        "--from",
        "alice",
        "--to",
        "bob",
        "--amount",
        "1.001",
        "--currency",
        "USD",
        "--id",
        "p2",
        "--wait",
    ])?;
    assert_eq!(rejected.status.code(), Some(2));
    assert!(String::from_utf8(rejected.stdout)?.contains("amount_scale_exceeds_currency"));

    // Errors: one line on stderr, non-zero exit.
    for args in [
        &["wallet", "balance", "ghost"][..],
        &["saga", "show", "nothing-here"],
        &["saga", "list", "--state", "bogus"],
        &["run", "--actors", "ledger"],
    ] {
        let out = run(args)?;
        let err = String::from_utf8(out.stderr)?;
        assert!(!out.status.success(), "{args:?} should fail");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("falcon: "), "{args:?}: {err}");
    }
    w.assert_invariants().await?;
    let verify = ok(run(&["verify"])?)?;
    assert!(String::from_utf8(verify.stdout)?.contains("verify: ok"));
    rt.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_fails_with_the_key() -> Result<()> {
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let out = Command::new(env!("CARGO_BIN_EXE_falcon"))
        .args(["streams", "apply"])
        .current_dir(dir.path())
        .env("FALCON__NATS__URL", nats.url())
        .env("FALCON__STREAMS__DUPLICATE_WINDOW_S", "5")
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr)?;
    assert!(err.contains("streams.duplicate_window_s"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_says_whether_acks_are_durable() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let keys = dir.path().join("keys");
    let doctor_in = |mode: &'static str| {
        let dir = dir.path().to_owned();
        let keys = keys.clone();
        move |url: String, monitor: Option<String>, args: &[&str]| {
            Command::new(env!("CARGO_BIN_EXE_falcon"))
                .args(args)
                .current_dir(&dir)
                .env("FALCON__NATS__URL", url)
                .env("FALCON__NATS__MONITOR_URL", monitor.unwrap_or_default())
                .env("FALCON__SECURITY__MODE", mode)
                .env("FALCON__SECURITY__KEYS_DIR", &keys)
                .env(
                    "FALCON__PAYMENT__DATABASE_URL",
                    format!("sqlite://{}/p.db?mode=rwc", dir.display()),
                )
                .env(
                    "FALCON__RISK__DATABASE_URL",
                    format!("sqlite://{}/r.db?mode=rwc", dir.display()),
                )
                .env(
                    "FALCON__WALLET__DATABASE_URL",
                    format!("sqlite://{}/w.db?mode=rwc", dir.display()),
                )
                .output()
        }
    };
    let check = |v: &serde_json::Value, list: &str, name: &str| -> Option<(String, bool)> {
        v[list]
            .as_array()?
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| {
                (
                    c["value"].as_str().unwrap_or_default().to_owned(),
                    c["ok"] == true,
                )
            })
    };

    // The set-up for money: `falcon auth init`'s identities on a server
    // that fsyncs before every ack.
    let doctor = doctor_in("secure");
    ok(doctor(String::new(), None, &["auth", "init"])?)?;
    let durable = NatsServer::start_with(NatsOptions {
        sync_always: true,
        monitor: true,
        auth: Some(keys.join("nats-auth.conf")),
    })
    .await?;
    let before = doctor(durable.url(), durable.monitor_url(), &["--json", "doctor"])?;
    assert!(!before.status.success(), "no streams yet");
    ok(doctor(
        durable.url(),
        durable.monitor_url(),
        &["streams", "apply"],
    )?)?;
    let report = json(&ok(doctor(
        durable.url(),
        durable.monitor_url(),
        &["--json", "doctor"],
    )?)?)?;
    assert_eq!(report["durable"], true, "{report}");
    assert_eq!(report["secure"], true, "{report}");
    assert_eq!(
        check(&report, "security", "identities").map(|c| c.1),
        Some(true)
    );
    assert_eq!(
        check(&report, "security", "signatures").map(|c| c.1),
        Some(true)
    );
    // The generated permissions name every partition's consumers.
    assert_eq!(
        check(&report, "security", "permissions").map(|c| c.1),
        Some(true),
        "{report}"
    );
    assert_eq!(
        check(&report, "checks", "jetstream sync_interval"),
        Some(("always".into(), true))
    );
    assert_eq!(
        check(&report, "checks", "payment-evt-0 max_deliver"),
        Some(("10".into(), true))
    );
    assert_eq!(
        check(&report, "checks", "FALCON_EVT dedup window"),
        Some(("120s".into(), true))
    );
    assert_eq!(
        check(&report, "checks", "FALCON_EVT size").map(|c| c.1),
        Some(true)
    );

    // An open server with the default periodic fsync: doctor says both, and
    // run refuses to start when asked for durability.
    let check = |v: &serde_json::Value, name: &str| check(v, "checks", name);
    let doctor = doctor_in("open");
    let lax = NatsServer::start_with(NatsOptions {
        sync_always: false,
        monitor: true,
        auth: None,
    })
    .await?;
    ok(doctor(lax.url(), lax.monitor_url(), &["streams", "apply"])?)?;
    let report = json(&doctor(
        lax.url(),
        lax.monitor_url(),
        &["--json", "doctor"],
    )?)?;
    assert_eq!(report["durable"], false);
    assert_eq!(report["secure"], false);
    let security = |name: &str| {
        report["security"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == name))
            .map(|c| c["ok"] == true)
    };
    assert_eq!(security("security mode"), Some(false), "{report}");
    assert_eq!(security("identities"), Some(false), "{report}");
    assert_eq!(security("signatures"), Some(false), "{report}");
    assert_eq!(
        check(&report, "jetstream sync_interval").map(|c| c.1),
        Some(false)
    );
    let refused = doctor(lax.url(), lax.monitor_url(), &["run", "--require-durable"])?;
    assert!(!refused.status.success());
    let err = String::from_utf8(refused.stderr)?;
    assert!(
        err.contains("--require-durable") && err.contains("sync_interval"),
        "{err}"
    );
    Ok(())
}

/// `falcon config show`: the effective configuration, layered, with
/// secrets masked; a bad value names its key in one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_show_masks_secrets_and_bad_values_name_the_key() -> Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("falcon.toml"),
        "[consumer]\nbatch_max = 64\n[wallet]\ndatabase_url = \"postgres://falcon:file-secret@db/wallet\"\n",
    )?;
    let show = |env: &[(&str, &str)], args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_falcon"));
        cmd.args(["config", "show"])
            .args(args)
            .current_dir(dir.path());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output()
    };
    let out = ok(show(
        &[
            (
                "FALCON__NATS__URL",
                "nats://ops:env-secret@n1:4222,nats://ops:env-secret@n2:4222",
            ),
            ("FALCON__CONSUMER__MAX_DELIVER", "7"),
        ],
        &["--json"],
    )?)?;
    let v = json(&out)?;
    assert_eq!(v["consumer"]["batch_max"], 64, "from the file");
    assert_eq!(v["consumer"]["max_deliver"], 7, "from the environment");
    assert_eq!(v["consumer"]["ack_wait_ms"], 30000, "the default");
    assert_eq!(
        v["wallet"]["database_url"],
        "postgres://falcon:****@db/wallet"
    );
    assert_eq!(
        v["nats"]["url"],
        "nats://ops:****@n1:4222,nats://ops:****@n2:4222"
    );
    let text = String::from_utf8(out.stdout)?;
    assert!(
        !text.contains("env-secret") && !text.contains("file-secret"),
        "{text}"
    );
    // TOML by default, which parses back.
    let out = ok(show(&[], &[])?)?;
    let toml_text = String::from_utf8(out.stdout)?;
    assert!(toml_text.contains("batch_max = 64"), "{toml_text}");
    assert!(!toml_text.contains("file-secret"));

    for (key, value, names) in [
        ("FALCON__CONSUMER__BATCH_MAX", "lots", "consumer.batch_max"),
        ("FALCON__HTTP__LISTEN", "port nine", "http.listen"),
        ("FALCON__SHUTDOWN__GRACE_MS", "0", "shutdown.grace_ms"),
        (
            "FALCON__RISK__DATABASE_URL",
            "mysql://r@db/risk",
            "risk.database_url",
        ),
    ] {
        let out = show(&[(key, value)], &[])?;
        assert!(!out.status.success(), "{key}={value} accepted");
        let err = String::from_utf8(out.stderr)?;
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.contains(names), "{key}={value}: {err}");
    }
    Ok(())
}

/// `falcon bench --spawn` runs a small load, closed and open loop, and
/// reports it with the invariants checked.
async fn bench_runs_a_small_load(backend: Backend) -> Result<()> {
    let w = World::new(backend).await?;
    let dir = tempfile::tempdir()?;
    for mode in [&["--concurrency", "8"][..], &["--rate", "100"][..]] {
        let args = [
            &[
                "--json",
                "bench",
                "--spawn",
                "--payments",
                "40",
                "--warmup",
                "5",
                "--wallets",
                "4",
            ][..],
            mode,
        ]
        .concat();
        let out = ok(falcon(&w, dir.path(), &args)?)?;
        let r = json(&out)?;
        assert_eq!(r["terminal"], 40, "{r}");
        assert_eq!(r["outcomes"]["completed"], 40, "{r}");
        assert_eq!(r["invariants_ok"], true, "{r}");
        assert_eq!(r["messages_per_saga"], 7.0, "{r}");
        assert!(r["sagas_per_s"].as_f64().is_some_and(|s| s > 0.0), "{r}");
        let lat = &r["latency_ms"];
        assert!(
            lat["p50"].as_f64() <= lat["p99"].as_f64()
                && lat["p99"].as_f64() <= lat["max"].as_f64(),
            "{r}"
        );
        assert!(
            r["runtime"]["peak_rss_mb"]
                .as_f64()
                .is_some_and(|m| m > 1.0),
            "{r}"
        );
    }
    w.assert_invariants().await?;
    Ok(())
}

/// `falcon doctor` checks each actor's database: on PostgreSQL it reports
/// the server's autovacuum as the server has it (read here, not set: the
/// server is shared) and how many processes its connections admit at the
/// pools a process opens, `postgres.pool_max` capping them.
async fn doctor_checks_each_database(backend: Backend) -> Result<()> {
    use falcon_runtime::registry::REGISTRY;
    let w = World::new(backend.clone()).await?;
    let dir = tempfile::tempdir()?;
    let doctor = |pool_max: &str| -> Result<serde_json::Value> {
        let out = common::cli::command(&w, dir.path())
            .env("FALCON__POSTGRES__POOL_MAX", pool_max)
            .args(["--json", "doctor"])
            .output()?;
        json(&out)
    };
    let report = doctor("0")?;
    let checks = report["databases"].as_array().cloned().unwrap_or_default();
    let find = |checks: &[serde_json::Value], name: &str| {
        checks.iter().find(|c| c["name"] == name).map(|c| {
            (
                c["value"].as_str().unwrap_or_default().to_owned(),
                c["ok"] == true,
            )
        })
    };
    let Backend::Postgres(admin) = backend else {
        for entry in REGISTRY {
            let name = format!("{} database", entry.actor());
            assert_eq!(find(&checks, &name).map(|c| c.1), Some(true), "{report}");
        }
        assert_eq!(report["databases_ok"], true, "{report}");
        return Ok(());
    };
    let admin_db = sea_orm::Database::connect(&admin).await?;
    let autovacuum = sea_orm::ConnectionTrait::query_one_raw(
        &admin_db,
        sea_orm::Statement::from_string(
            sea_orm::DatabaseBackend::Postgres,
            "SELECT current_setting('autovacuum') AS v",
        ),
    )
    .await?
    .map(|r| r.try_get::<String>("", "v"))
    .transpose()?
    .unwrap_or_default();
    for entry in REGISTRY {
        let actor = entry.actor();
        let (db, ok) = find(&checks, &format!("{actor} database")).unwrap_or_default();
        assert!(ok && db.starts_with("postgresql "), "{actor}: {db}");
        assert_eq!(
            find(&checks, &format!("{actor} autovacuum")),
            Some((autovacuum.clone(), autovacuum != "off")),
            "{report}"
        );
    }
    // One server for the four databases: one connections check, counting
    // each actor's pool (a connection per consumer loop, four more).
    let per_process: u32 = REGISTRY
        .iter()
        .map(|e| {
            falcon_kernel::store::connect::postgres_pool(e.consumers(&w.settings.consumer).len(), 0)
        })
        .sum();
    let connections: Vec<&serde_json::Value> = checks
        .iter()
        .filter(|c| {
            c["name"]
                .as_str()
                .is_some_and(|n| n.ends_with(" connections"))
        })
        .collect();
    assert_eq!(connections.len(), 1, "{report}");
    let value = connections[0]["value"].as_str().unwrap_or_default();
    assert!(
        value.starts_with(&format!("a process opens up to {per_process} (")),
        "{value}"
    );
    // A cap below the migrations' two connections is refused; a cap of
    // three is three a pool.
    let refused = common::cli::command(&w, dir.path())
        .env("FALCON__POSTGRES__POOL_MAX", "1")
        .args(["--json", "doctor"])
        .output()?;
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("postgres.pool_max"),
        "{err}"
    );
    let capped = doctor("3")?;
    let value = capped["databases"]
        .as_array()
        .and_then(|c| {
            c.iter().find(|c| {
                c["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with(" connections"))
            })
        })
        .and_then(|c| c["value"].as_str())
        .unwrap_or_default()
        .to_owned();
    let all = 3 * REGISTRY.len();
    assert!(
        value.starts_with(&format!("a process opens up to {all} (")),
        "{value}"
    );
    assert_eq!(
        report["databases_ok"] == true,
        checks.iter().all(|c| c["ok"] == true),
        "{report}"
    );
    Ok(())
}

backend_tests!(bench_runs_a_small_load, doctor_checks_each_database);
