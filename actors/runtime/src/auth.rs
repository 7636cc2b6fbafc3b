//! `falcon auth init`: the keys and the broker's least-privilege
//! authorization, generated from the registry.
//!
//! It writes into one directory:
//! - `<identity>.nk`: an nkey user seed per identity (each actor, the
//!   provisioning identity, the treasury, the operator, every client);
//! - `<actor>.key`: each actor's HMAC key for signed events;
//! - `nats-auth.conf`: an `authorization { users = [...] }` block for
//!   nats-server (`include` it from the server's config), with each
//!   identity's public nkey and permissions.
//!
//! Existing seeds and keys are kept (running it again only adds what is
//! missing and rewrites the permissions), so a client added later does not
//! rotate anyone else's credentials, and every client already issued in
//! the directory stays (delete its `.nk` or `.password` to revoke it).
//! Secrets and a new directory are written owner-only.
//!
//! The permissions (docs/DESIGN.md, "Identities and permissions"):
//! - an actor publishes only its own events (`falcon.evt.<actor>.>`) and
//!   the dead letters of its own consumers, pulls and acks only its own
//!   durable consumers, reads any stream's messages and any consumer's
//!   info, and deletes a re-driven dead letter;
//! - the provisioning identity alone creates, updates and deletes streams
//!   and consumers (never deletes or purges FALCON_CMD or FALCON_EVT);
//! - the treasury alone deposits (`falcon.cmd.wallet.deposit.<treasury>`);
//! - a client publishes commands naming itself
//!   (`falcon.cmd.<aggregate>.<verb>.<client>`) and reads FALCON_EVT
//!   through ephemeral consumers, nothing else;
//! - the operator reads every stream, deletes and purges dead letters, and
//!   sends chaos kills (`falcon.ctl.>`, honoured only when enabled).
//!
//! Every identity subscribes only to its own inbox (`_INBOX_<name>.>`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use falcon_nats::identity::inbox_prefix;
use falcon_nats::ConsumerSpec;
use falcon_sagas::Actor;
use falcon_schemas::ids::is_valid_id;
use falcon_schemas::subject::{STREAM_CMD, STREAM_DLQ, STREAM_EVT};
use falcon_schemas::CommandKind;
use rand::RngCore;
use serde::Serialize;
use serde_json::{json, Value};

use crate::registry::REGISTRY;
use crate::settings::Settings;

/// The server's authorization file's name in the keys directory.
pub const SERVER_CONF: &str = "nats-auth.conf";

/// What one identity is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Actor,
    Provisioning,
    Treasury,
    Operator,
    Client,
}

/// One identity as `auth init` left it.
#[derive(Debug, Clone, Serialize)]
pub struct Issued {
    pub name: String,
    pub role: Role,
    /// Its public nkey (`U…`), as the server knows it.
    pub public_key: String,
    /// True when its seed was made now (false: kept from before).
    pub created: bool,
}

/// What `auth init` did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub dir: PathBuf,
    pub identities: Vec<Issued>,
    /// Signing keys made now (the others were kept).
    pub signing_keys_created: Vec<String>,
    pub server_conf: PathBuf,
}

/// Writes the keys and the server authorization for the registry's actors,
/// the settings' provisioning, treasury and operator identities, and
/// `clients` (the settings' `nats.identity` is always one of them).
pub fn init(settings: &Settings, dir: &Path, clients: &[String]) -> Result<Report, String> {
    init_with(settings, dir, clients, &[])
}

/// As [`init`], and `password_clients` get a user and password instead of
/// an nkey (`<dir>/<name>.password`), for plain clients that cannot sign an
/// nkey challenge (a shell script, a client without nkey support).
pub fn init_with(
    settings: &Settings,
    dir: &Path,
    clients: &[String],
    password_clients: &[String],
) -> Result<Report, String> {
    // Clients issued before stay: running it again without naming them
    // must not revoke them.
    let (kept_clients, kept_password_clients) = issued_clients(settings, dir)?;
    let mut password_clients: Vec<String> = password_clients.to_vec();
    for name in kept_password_clients {
        if !password_clients.contains(&name) {
            password_clients.push(name);
        }
    }
    let mut all: Vec<String> = Vec::new();
    for name in clients.iter().chain(&kept_clients).chain(&password_clients) {
        if !all.contains(name) {
            all.push(name.clone());
        }
    }
    let identities = plan(settings, &all)?;
    create_private_dir(dir)?;
    let mut issued = Vec::new();
    let mut users = Vec::new();
    for (name, role, permissions) in identities {
        if password_clients.contains(&name) {
            let (password, created) = password(dir, &name)?;
            users.push(json!({ "user": name, "password": password, "permissions": permissions }));
            issued.push(Issued {
                name,
                role,
                public_key: "(user and password)".into(),
                created,
            });
            continue;
        }
        let (public_key, created) = seed(dir, &name)?;
        users.push(json!({ "nkey": public_key, "permissions": permissions }));
        issued.push(Issued {
            name,
            role,
            public_key,
            created,
        });
    }
    let mut signing_keys_created = Vec::new();
    for actor in Actor::ALL {
        let path = dir.join(format!("{}.key", actor.as_str()));
        if !path.exists() {
            let mut key = [0u8; 32];
            rand::rng().fill_bytes(&mut key);
            write_secret(&path, &format!("{}\n", hex::encode(key)))?;
            signing_keys_created.push(actor.as_str().to_owned());
        }
    }
    let server_conf = dir.join(SERVER_CONF);
    let conf = format!(
        "# Generated by `falcon auth init`: FalconPay's identities and their\n# least-privilege permissions. Include it from nats-server's config\n# (`include \"{SERVER_CONF}\"`); run `falcon auth init` again to update it.\nauthorization {}\n",
        serde_json::to_string_pretty(&json!({ "users": users }))
            .map_err(|e| format!("rendering {SERVER_CONF}: {e}"))?
    );
    write_secret(&server_conf, &conf)?;
    Ok(Report {
        dir: dir.to_owned(),
        identities: issued,
        signing_keys_created,
        server_conf,
    })
}

/// The clients a directory already holds credentials for: `<name>.nk`
/// (nkey) and `<name>.password` files whose name is not an actor's or a
/// role's.
fn issued_clients(settings: &Settings, dir: &Path) -> Result<(Vec<String>, Vec<String>), String> {
    let sec = &settings.security;
    let roles = [&sec.provisioning, &sec.treasury, &sec.operator];
    let (mut nkey, mut password) = (Vec::new(), Vec::new());
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((nkey, password)),
        Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
    };
    for entry in entries {
        let path = entry
            .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
            .path();
        let (Some(stem), Some(ext)) = (
            path.file_stem().and_then(|s| s.to_str()),
            path.extension().and_then(|s| s.to_str()),
        ) else {
            continue;
        };
        let is_client = is_valid_id(stem)
            && Actor::parse(stem).is_none()
            && !roles.iter().any(|r| r.as_str() == stem);
        match ext {
            "nk" if is_client => nkey.push(stem.to_owned()),
            "password" if is_client => password.push(stem.to_owned()),
            _ => {}
        }
    }
    nkey.sort();
    password.sort();
    Ok((nkey, password))
}

/// Creates the keys directory, owner-only (on Unix) when it is new.
fn create_private_dir(dir: &Path) -> Result<(), String> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

/// The durable consumers the settings would run that the authorization in
/// `dir` (`nats-auth.conf`, as `auth init` wrote it) does not name: non-empty
/// when `consumer.partitions` changed since (each partition's durable is
/// named in its actor's permissions, so an actor could not pull it nor
/// dead-letter from it). `None` when `dir` holds no `nats-auth.conf`.
pub fn unnamed_consumers(settings: &Settings, dir: &Path) -> Option<Result<Vec<String>, String>> {
    let path = dir.join(SERVER_CONF);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => return Some(Err(format!("cannot read {}: {e}", path.display()))),
    };
    Some(Ok(REGISTRY
        .iter()
        .flat_map(|r| r.consumers(&settings.consumer))
        .filter(|c| {
            let pull = format!("\"$JS.API.CONSUMER.MSG.NEXT.{}.{}\"", c.stream, c.name);
            !text.contains(&pull)
        })
        .map(|c| c.name)
        .collect()))
}

/// Every identity with its role and permissions.
pub fn plan(settings: &Settings, clients: &[String]) -> Result<Vec<(String, Role, Value)>, String> {
    let sec = &settings.security;
    let consumers: Vec<(Actor, Vec<ConsumerSpec>)> = REGISTRY
        .iter()
        .map(|r| (r.actor(), r.consumers(&settings.consumer)))
        .collect();
    let durables: Vec<&ConsumerSpec> = consumers.iter().flat_map(|(_, c)| c).collect();
    let mut out = Vec::new();
    for (actor, own) in &consumers {
        // Others' durables are out of its reach; its own it pulls and acks.
        let others: Vec<&ConsumerSpec> = durables
            .iter()
            .copied()
            .filter(|d| !own.iter().any(|o| o.name == d.name))
            .collect();
        let mut p = reader_permissions(actor.as_str(), &[STREAM_CMD, STREAM_EVT], &others);
        merge(&mut p, actor_permissions(*actor, own));
        // Nor may it delete its own: only provisioning changes consumers.
        push(
            &mut p,
            ["publish", "deny"],
            own.iter().flat_map(|c| {
                [
                    format!("$JS.API.CONSUMER.DELETE.{}.{}", c.stream, c.name),
                    format!("$JS.API.CONSUMER.CREATE.{}.{}", c.stream, c.name),
                    format!("$JS.API.CONSUMER.CREATE.{}.{}.>", c.stream, c.name),
                ]
            }),
        );
        out.push((actor.as_str().to_owned(), Role::Actor, p));
    }
    out.push((
        sec.provisioning.clone(),
        Role::Provisioning,
        provisioning_permissions(&sec.provisioning),
    ));
    let mut treasury = reader_permissions(&sec.treasury, &[STREAM_EVT], &durables);
    allow_publish(
        &mut treasury,
        [CommandKind::WalletDeposit.subject(&sec.treasury)],
    );
    out.push((sec.treasury.clone(), Role::Treasury, treasury));
    let mut operator = reader_permissions(
        &sec.operator,
        &[STREAM_CMD, STREAM_EVT, STREAM_DLQ],
        &durables,
    );
    allow_publish(
        &mut operator,
        [
            format!("$JS.API.STREAM.MSG.DELETE.{STREAM_DLQ}"),
            format!("$JS.API.STREAM.PURGE.{STREAM_DLQ}"),
            "$JS.API.CONSUMER.INFO.*.*".into(),
            "$JS.API.STREAM.INFO.*".into(),
            "falcon.ctl.>".into(),
        ],
    );
    out.push((sec.operator.clone(), Role::Operator, operator));
    let mut names: Vec<String> = clients.to_vec();
    if !names.contains(&settings.nats.identity) {
        names.insert(0, settings.nats.identity.clone());
    }
    for client in names {
        let mut p = reader_permissions(&client, &[STREAM_EVT], &durables);
        allow_publish(
            &mut p,
            [
                CommandKind::WalletOpen,
                CommandKind::PaymentCreate,
                CommandKind::PaymentRefund,
            ]
            .map(|k| k.subject(&client)),
        );
        out.push((client, Role::Client, p));
    }
    let mut seen = BTreeMap::new();
    for (name, role, _) in &out {
        if !is_valid_id(name) {
            return Err(format!(
                "identity {name:?}: not 1-64 characters of [A-Za-z0-9_-]"
            ));
        }
        if let Some(other) = seen.insert(name.clone(), *role) {
            return Err(format!(
                "identity {name} would be both {other:?} and {role:?}; give each its own name"
            ));
        }
    }
    Ok(out)
}

fn permissions(name: &str) -> Value {
    json!({
        "publish": { "allow": [], "deny": [] },
        "subscribe": { "allow": [format!("{}.>", inbox_prefix(name))], "deny": [] },
    })
}

fn push(p: &mut Value, path: [&str; 2], subjects: impl IntoIterator<Item = String>) {
    if let Some(list) = p[path[0]][path[1]].as_array_mut() {
        list.extend(subjects.into_iter().map(Value::String));
    }
}

/// Adds `more`'s lists to `p`'s (and its `allow_responses`).
fn merge(p: &mut Value, more: Value) {
    for dir in ["publish", "subscribe"] {
        for kind in ["allow", "deny"] {
            let extra: Vec<String> = more[dir][kind]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            push(
                p,
                [dir, kind],
                extra.into_iter().filter(|s| !s.starts_with("_INBOX")),
            );
        }
    }
    if more.get("allow_responses").is_some() {
        p["allow_responses"] = more["allow_responses"].clone();
    }
}

fn allow_publish(p: &mut Value, subjects: impl IntoIterator<Item = String>) {
    push(p, ["publish", "allow"], subjects);
}

fn actor_permissions(actor: Actor, own: &[ConsumerSpec]) -> Value {
    let mut p = permissions(actor.as_str());
    allow_publish(
        &mut p,
        [
            format!("falcon.evt.{}.>", actor.as_str()),
            "$JS.API.INFO".into(),
            "$JS.API.STREAM.INFO.*".into(),
            "$JS.API.CONSUMER.INFO.*.*".into(),
            "$JS.API.DIRECT.GET.*".into(),
            "$JS.API.DIRECT.GET.*.>".into(),
            "$JS.API.STREAM.MSG.GET.*".into(),
            format!("$JS.API.STREAM.MSG.DELETE.{STREAM_DLQ}"),
        ],
    );
    // Its processes' membership beats (docs/DESIGN.md, "One owner per
    // partition"): only its own identity says who runs it.
    let members = falcon_kernel::owner::subject(actor);
    allow_publish(&mut p, [members.clone()]);
    push(&mut p, ["subscribe", "allow"], [members]);
    for c in own {
        allow_publish(
            &mut p,
            [
                format!("falcon.dlq.{}.>", c.name),
                format!("$JS.API.CONSUMER.MSG.NEXT.{}.{}", c.stream, c.name),
                format!("$JS.API.CONSUMER.UNPIN.{}.{}", c.stream, c.name),
                format!("$JS.ACK.{}.{}.>", c.stream, c.name),
            ],
        );
        push(
            &mut p,
            ["subscribe", "allow"],
            [format!(
                "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.{}",
                c.stream, c.name
            )],
        );
    }
    push(&mut p, ["subscribe", "allow"], ["falcon.ctl.>".to_owned()]);
    p["allow_responses"] = json!(true);
    p
}

fn provisioning_permissions(name: &str) -> Value {
    let mut p = permissions(name);
    allow_publish(&mut p, ["$JS.API.>".to_owned()]);
    push(
        &mut p,
        ["publish", "deny"],
        [STREAM_CMD, STREAM_EVT].into_iter().flat_map(|s| {
            [
                format!("$JS.API.STREAM.DELETE.{s}"),
                format!("$JS.API.STREAM.PURGE.{s}"),
                format!("$JS.API.STREAM.MSG.DELETE.{s}"),
            ]
        }),
    );
    p
}

/// Reading `streams` through ephemeral consumers (either create subject:
/// ordered consumers name themselves when they are recreated) and direct
/// gets, and any consumer's info; never creating, pulling from or deleting
/// one of `durables` (acks are not allowed at all).
fn reader_permissions(name: &str, streams: &[&str], durables: &[&ConsumerSpec]) -> Value {
    let mut p = permissions(name);
    // Every stream's info (its configuration and counts, no content):
    // what a client checks before it reads, and what `doctor` shows.
    allow_publish(
        &mut p,
        ["$JS.API.INFO".to_owned()].into_iter().chain(
            [STREAM_CMD, STREAM_EVT, STREAM_DLQ].map(|s| format!("$JS.API.STREAM.INFO.{s}")),
        ),
    );
    for s in streams {
        allow_publish(
            &mut p,
            [
                format!("$JS.API.CONSUMER.CREATE.{s}"),
                // The named form: an ordered consumer recreated after a
                // reconnect names itself (durable names are denied below).
                format!("$JS.API.CONSUMER.CREATE.{s}.*"),
                format!("$JS.API.CONSUMER.CREATE.{s}.*.>"),
                format!("$JS.API.CONSUMER.MSG.NEXT.{s}.*"),
                format!("$JS.API.CONSUMER.INFO.{s}.*"),
                format!("$JS.API.CONSUMER.DELETE.{s}.*"),
                format!("$JS.API.DIRECT.GET.{s}"),
                format!("$JS.API.DIRECT.GET.{s}.>"),
                format!("$JS.API.STREAM.MSG.GET.{s}"),
            ],
        );
    }
    push(
        &mut p,
        ["publish", "deny"],
        durables.iter().flat_map(|c| {
            [
                format!("$JS.API.CONSUMER.MSG.NEXT.{}.{}", c.stream, c.name),
                format!("$JS.API.CONSUMER.DELETE.{}.{}", c.stream, c.name),
                format!("$JS.API.CONSUMER.CREATE.{}.{}", c.stream, c.name),
                format!("$JS.API.CONSUMER.CREATE.{}.{}.>", c.stream, c.name),
            ]
        }),
    );
    p
}

/// The public key of `<dir>/<name>.nk`, made now when missing.
fn seed(dir: &Path, name: &str) -> Result<(String, bool), String> {
    let path = dir.join(format!("{name}.nk"));
    if path.exists() {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let pair = nkeys::KeyPair::from_seed(text.trim())
            .map_err(|e| format!("{} is not an nkey seed: {e}", path.display()))?;
        return Ok((pair.public_key(), false));
    }
    let pair = nkeys::KeyPair::new_user();
    let seed = pair
        .seed()
        .map_err(|e| format!("making the seed of {name}: {e}"))?;
    write_secret(&path, &format!("{seed}\n"))?;
    Ok((pair.public_key(), true))
}

/// The password of `<dir>/<name>.password`, made now when missing (32
/// random bytes, hex).
fn password(dir: &Path, name: &str) -> Result<(String, bool), String> {
    let path = dir.join(format!("{name}.password"));
    if path.exists() {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        return Ok((text.trim().to_owned(), false));
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let password = hex::encode(bytes);
    write_secret(&path, &format!("{password}\n"))?;
    Ok((password, true))
}

/// Writes a file readable by its owner only.
fn write_secret(path: &Path, text: &str) -> Result<(), String> {
    let err = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(err)?;
    file.write_all(text.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(p: &Value, dir: &str, subject: &str) -> bool {
        let list = |k: &str| -> Vec<String> {
            p[dir][k]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let hit = |l: Vec<String>| l.iter().any(|f| crate::dlq::subject_matches(f, subject));
        hit(list("allow")) && !hit(list("deny"))
    }

    fn perms(name: &str) -> Value {
        let plan = plan(&Settings::default(), &["alice".into()]).expect("a plan");
        plan.into_iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, p)| p)
            .unwrap_or_else(|| panic!("{name} is in the plan"))
    }

    #[test]
    fn actors_publish_only_their_own_events_and_use_only_their_own_consumers() {
        let wallet = perms("wallet");
        assert!(allowed(
            &wallet,
            "publish",
            "falcon.evt.wallet.funds_reserved.p1"
        ));
        assert!(!allowed(
            &wallet,
            "publish",
            "falcon.evt.payment.captured.p1"
        ));
        assert!(!allowed(
            &wallet,
            "publish",
            "falcon.cmd.wallet.deposit.treasury"
        ));
        assert!(allowed(
            &wallet,
            "publish",
            "$JS.API.CONSUMER.MSG.NEXT.FALCON_EVT.wallet-evt-0"
        ));
        assert!(!allowed(
            &wallet,
            "publish",
            "$JS.API.CONSUMER.MSG.NEXT.FALCON_EVT.payment-evt-0"
        ));
        assert!(!allowed(
            &wallet,
            "publish",
            "$JS.API.CONSUMER.DELETE.FALCON_EVT.wallet-evt-0"
        ));
        assert!(!allowed(
            &wallet,
            "publish",
            "$JS.API.STREAM.UPDATE.FALCON_EVT"
        ));
        assert!(!allowed(&wallet, "publish", "falcon.dlq.payment-evt-0.x"));
        assert!(!allowed(&wallet, "subscribe", "_INBOX_payment.x"));
        assert!(allowed(&wallet, "subscribe", "_INBOX_wallet.x"));
        // Replays and rebuilds read through ephemeral consumers.
        assert!(allowed(
            &wallet,
            "publish",
            "$JS.API.CONSUMER.CREATE.FALCON_EVT"
        ));
        assert!(allowed(
            &wallet,
            "publish",
            "$JS.API.CONSUMER.MSG.NEXT.FALCON_EVT.x7Yq"
        ));
        assert!(allowed(
            &wallet,
            "publish",
            "$JS.API.CONSUMER.MSG.NEXT.FALCON_EVT.wallet-evt-0"
        ));
        assert!(!allowed(
            &wallet,
            "publish",
            "$JS.API.CONSUMER.DELETE.FALCON_EVT.payment-evt-0"
        ));
    }

    #[test]
    fn clients_send_their_own_commands_and_read_events_only() {
        let alice = perms("alice");
        assert!(allowed(
            &alice,
            "publish",
            "falcon.cmd.payment.create.alice"
        ));
        assert!(!allowed(&alice, "publish", "falcon.cmd.payment.create.bob"));
        assert!(!allowed(
            &alice,
            "publish",
            "falcon.cmd.wallet.deposit.alice"
        ));
        assert!(!allowed(
            &alice,
            "publish",
            "falcon.evt.payment.refund_requested.x"
        ));
        assert!(allowed(
            &alice,
            "publish",
            "$JS.API.CONSUMER.CREATE.FALCON_EVT"
        ));
        assert!(!allowed(
            &alice,
            "publish",
            "$JS.API.CONSUMER.CREATE.FALCON_EVT.wallet-evt-0.x"
        ));
        assert!(allowed(
            &alice,
            "publish",
            "$JS.API.CONSUMER.CREATE.FALCON_EVT.rPpRXm36_1.falcon.evt.wallet.*.w1"
        ));
        let wallet = perms("wallet");
        assert!(!allowed(
            &wallet,
            "publish",
            "$JS.API.CONSUMER.CREATE.FALCON_EVT.wallet-evt-0.falcon.evt.>"
        ));
        assert!(!allowed(
            &alice,
            "publish",
            "$JS.API.CONSUMER.CREATE.FALCON_CMD"
        ));
        assert!(!allowed(
            &alice,
            "publish",
            "$JS.API.CONSUMER.DURABLE.CREATE.FALCON_EVT.x"
        ));
        assert!(!allowed(
            &alice,
            "publish",
            "$JS.API.CONSUMER.MSG.NEXT.FALCON_EVT.wallet-evt-0"
        ));
        assert!(!allowed(
            &alice,
            "publish",
            "$JS.API.CONSUMER.DELETE.FALCON_EVT.wallet-evt-0"
        ));
        assert!(!allowed(
            &alice,
            "publish",
            "$JS.API.STREAM.UPDATE.FALCON_EVT"
        ));
        assert!(!allowed(
            &alice,
            "publish",
            "$JS.API.STREAM.PURGE.FALCON_EVT"
        ));
        assert!(!allowed(
            &alice,
            "publish",
            "$JS.ACK.FALCON_EVT.wallet-evt-0.1.1.1.1.1"
        ));
        assert!(!allowed(&alice, "publish", "falcon.dlq.wallet-evt-0.x"));
        assert!(!allowed(&alice, "subscribe", "falcon.evt.>"));
        let treasury = perms("treasury");
        assert!(allowed(
            &treasury,
            "publish",
            "falcon.cmd.wallet.deposit.treasury"
        ));
        assert!(!allowed(
            &treasury,
            "publish",
            "falcon.cmd.payment.create.treasury"
        ));
    }

    #[test]
    fn only_provisioning_changes_topology_and_nobody_deletes_the_record() {
        let prov = perms("provisioning");
        assert!(allowed(
            &prov,
            "publish",
            "$JS.API.STREAM.UPDATE.FALCON_EVT"
        ));
        assert!(allowed(
            &prov,
            "publish",
            "$JS.API.CONSUMER.DURABLE.CREATE.FALCON_EVT.wallet-evt-0"
        ));
        assert!(!allowed(
            &prov,
            "publish",
            "$JS.API.STREAM.DELETE.FALCON_EVT"
        ));
        assert!(!allowed(
            &prov,
            "publish",
            "$JS.API.STREAM.PURGE.FALCON_EVT"
        ));
        assert!(!allowed(&prov, "publish", "falcon.evt.wallet.deposited.w1"));
        for name in [
            "payment", "risk", "wallet", "treasury", "operator", "alice", "client",
        ] {
            let p = perms(name);
            for s in [
                "$JS.API.STREAM.UPDATE.FALCON_EVT",
                "$JS.API.STREAM.DELETE.FALCON_EVT",
                "$JS.API.STREAM.PURGE.FALCON_EVT",
                "$JS.API.CONSUMER.DELETE.FALCON_EVT.wallet-evt-0",
            ] {
                assert!(!allowed(&p, "publish", s), "{name} may {s}");
            }
        }
    }

    #[test]
    fn init_keeps_what_exists_and_writes_secrets_owner_only() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let first = init(&Settings::default(), dir.path(), &["alice".into()]).expect("init");
        assert!(first.identities.iter().all(|i| i.created));
        let again = init(
            &Settings::default(),
            dir.path(),
            &["alice".into(), "bob".into()],
        )
        .expect("init again");
        let created: Vec<&str> = again
            .identities
            .iter()
            .filter(|i| i.created)
            .map(|i| i.name.as_str())
            .collect();
        assert_eq!(created, ["bob"]);
        assert!(again.signing_keys_created.is_empty());
        for i in &first.identities {
            let kept = again
                .identities
                .iter()
                .find(|j| j.name == i.name)
                .expect("kept");
            assert_eq!(kept.public_key, i.public_key);
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("wallet.nk"))
                .expect("written")
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "seeds are owner-only");
        }
        let ring = falcon_kernel::signing::KeyRing::load(dir.path()).expect("the keys load");
        assert!(ring.required());
        assert!(plan(&Settings::default(), &["wallet".into()]).is_err());
    }

    #[test]
    fn more_partitions_than_the_permissions_name_are_found() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut settings = Settings::default();
        assert!(unnamed_consumers(&settings, dir.path()).is_none());
        settings.consumer.partitions = 2;
        init(&settings, dir.path(), &[]).expect("init");
        let named = unnamed_consumers(&settings, dir.path()).expect("a conf");
        assert_eq!(named, Ok(Vec::new()));
        settings.consumer.partitions = 3;
        let mut missing = unnamed_consumers(&settings, dir.path())
            .expect("a conf")
            .expect("readable");
        missing.sort();
        assert_eq!(
            missing,
            [
                "payment-evt-2",
                "payment-view-2",
                "recon-evt-2",
                "risk-evt-2",
                "wallet-evt-2"
            ]
        );
        init(&settings, dir.path(), &[]).expect("init again");
        assert_eq!(
            unnamed_consumers(&settings, dir.path()).expect("a conf"),
            Ok(Vec::new())
        );
    }

    #[test]
    fn init_again_without_naming_earlier_clients_keeps_them() {
        let parent = tempfile::tempdir().expect("a temp dir");
        let dir = parent.path().join("keys");
        let settings = Settings::default();
        init_with(&settings, &dir, &["shop".into()], &["till".into()]).expect("init");
        let conf = || std::fs::read_to_string(dir.join(SERVER_CONF)).expect("the conf");
        let before = conf();
        let again = init_with(&settings, &dir, &[], &[]).expect("init again");
        let names: Vec<&str> = again.identities.iter().map(|i| i.name.as_str()).collect();
        for kept in ["shop", "till"] {
            assert!(names.contains(&kept), "{kept} was dropped: {names:?}");
        }
        assert!(again.identities.iter().all(|i| !i.created));
        assert_eq!(conf(), before, "the permissions changed");
        assert!(
            !names.contains(&"nats-auth"),
            "a file that is not a seed became a client"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&dir).expect("made").permissions().mode();
            assert_eq!(mode & 0o077, 0, "the keys directory is owner-only");
        }
    }
}
