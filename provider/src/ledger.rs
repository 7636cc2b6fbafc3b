//! The durable ledger: one SQLite table, `charges`, one row per
//! idempotency key, in WAL mode with `synchronous = FULL`, so a record the
//! provider has answered with survives a crash and a restart.
//!
//! Writes (a first charge, a void) are serialised by one mutex around the
//! check and the write, so concurrent first requests for a key make one
//! row; the `UNIQUE` constraint on `key` backs that up against a second
//! process on the same file. Reads take any connection of the pool.
//!
//! # The change journal: `rev`
//!
//! Every write of a record (a charge or a decline inserted, a key closed,
//! a charge voided) gives it the next `rev`, `MAX(rev) + 1` computed in
//! the writing statement itself, so `rev` increases strictly over the
//! whole ledger and a record's `rev` is that of its latest change. SQLite
//! takes its write lock at the start of that statement and holds it to
//! the commit, so revs are also committed in order: once a reader sees a
//! rev, no smaller one appears later. A reader that pages by `rev` from a
//! checkpoint thus sees every record written or changed since, each at its
//! latest state (a record changed twice shows once, at its last rev). A
//! `UNIQUE` index on `rev` backs the lock up against a second process: a
//! write whose rev was taken wrote nothing and is tried again, a few
//! times, then fails (an error, never a lost or doubled write).
//!
//! A ledger file from before `rev` is migrated when opened: the column is
//! added and every old record gets `rev = seq` (a charge voided before
//! the migration keeps the rev of its insert: its void is no change the
//! journal saw); then the unique index is made. Records a provider
//! without `rev` wrote into a migrated file get fresh revs above all
//! others at the next open (until then they are refused as corrupt).
//!
//! Every record read is checked ([`Record`]'s invariants): a row that breaks
//! them is [`Error::Corrupt`], never a panic and never served.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, QueryResult,
    SqlErr, SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait, Value,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::request::Charge;

/// Connections in the pool: readers run beside the one writer (WAL).
const POOL_MAX: u32 = 4;

/// How long a statement waits for another writer's lock (a second process
/// on the same file) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a request waits for a pooled connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// The reason stored with a simulated decline.
pub const DECLINE_REASON: &str = "simulated decline";
/// The reason on a key closed by a void before it charged.
pub const CLOSED_REASON: &str = "voided before any charge";

/// How many times a write is tried whose `rev` another process's write
/// took first. SQLite's write lock already rules that race out (the rev
/// is computed under the lock); the unique index is the backstop, and a
/// write refused by it wrote nothing, so trying it again is safe.
const REV_ATTEMPTS: u32 = 3;

/// The next rev, computed inside the statement that writes it.
const NEXT_REV: &str = "(SELECT COALESCE(MAX(rev), 0) + 1 FROM charges)";

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS charges (\
    seq INTEGER PRIMARY KEY AUTOINCREMENT, \
    key TEXT NOT NULL UNIQUE, \
    amount_minor INTEGER NOT NULL, \
    currency TEXT NOT NULL, \
    status TEXT NOT NULL, \
    settlement_id TEXT, \
    reason TEXT, \
    created_at TEXT NOT NULL, \
    voided_at TEXT, \
    rev INTEGER)";

/// The unique index on `rev`: two writes, even from two processes, never
/// share a rev, and pages by rev read it.
const CREATE_REV_INDEX: &str = "CREATE UNIQUE INDEX IF NOT EXISTS charges_rev ON charges (rev)";

/// The columns every read selects, in the order [`Record::from_row`] takes.
const COLUMNS: &str = "seq, key, amount_minor, currency, status, settlement_id, reason, \
     created_at, voided_at, rev";

/// A ledger failure: the database, or a row that breaks the invariants.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database")]
    Db(#[from] DbErr),
    #[error("ledger row {seq} is corrupt: {what}")]
    Corrupt { seq: i64, what: String },
}

fn corrupt(seq: i64, what: impl Into<String>) -> Error {
    Error::Corrupt {
        seq,
        what: what.into(),
    }
}

/// Where a charge stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Money moved; `settlement_id` names the settlement.
    Charged,
    /// Refused; `reason` says why; nothing moved.
    Declined,
    /// Charged, then voided at `voided_at`; nothing moved in the end.
    Voided,
}

impl Status {
    /// The word stored in the `status` column and sent in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Charged => "charged",
            Status::Declined => "declined",
            Status::Voided => "voided",
        }
    }

    fn parse(s: &str) -> Option<Status> {
        [Status::Charged, Status::Declined, Status::Voided]
            .into_iter()
            .find(|st| st.as_str() == s)
    }
}

/// One charge as stored and as sent.
///
/// Invariants, checked on every read: `rev` is set and `>= 1`;
/// `amount_minor >= 1`; a charged record has a `settlement_id` and no
/// `reason`; a declined one has a `reason` and no `settlement_id`; a voided
/// one has exactly one of them (a `settlement_id` when a charge was undone,
/// a `reason` when the key was closed before it charged); `voided_at` is
/// set exactly when voided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Position in the ledger, from 1, increasing, never reused.
    pub seq: i64,
    /// The ledger's change sequence: the rev of this record's latest
    /// write (insert or void), from 1, strictly increasing over the whole
    /// ledger, never reused. A void gives the record a new, larger rev.
    pub rev: i64,
    /// The caller's idempotency key.
    pub key: String,
    pub status: Status,
    /// The amount in minor units of `currency`.
    pub amount_minor: i64,
    pub currency: String,
    /// `"prv-<seq>"` for a charge (also once voided); null for a decline
    /// and for a key closed before it charged.
    pub settlement_id: Option<String>,
    /// Why a charge was declined, or why a key was closed before it
    /// charged; null otherwise.
    pub reason: Option<String>,
    /// When the record was made (UTC, microseconds).
    pub created_at: DateTime<Utc>,
    /// When the charge was voided; null unless voided.
    pub voided_at: Option<DateTime<Utc>>,
}

impl Record {
    /// Whether `charge` asks for what this record holds: the same amount in
    /// the same currency (a retry), rather than another charge under a
    /// reused key.
    pub fn same_request(&self, charge: &Charge) -> bool {
        self.amount_minor == charge.amount_minor && self.currency == charge.currency
    }

    fn from_row(row: &QueryResult) -> Result<Record, Error> {
        let seq: i64 = row.try_get_by_index(0)?;
        let status: String = row.try_get_by_index(4)?;
        let status =
            Status::parse(&status).ok_or_else(|| corrupt(seq, format!("status {status:?}")))?;
        let time = |s: String| {
            DateTime::parse_from_rfc3339(&s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| corrupt(seq, format!("timestamp {s:?}: {e}")))
        };
        let created_at: String = row.try_get_by_index(7)?;
        let voided_at: Option<String> = row.try_get_by_index(8)?;
        let rev: Option<i64> = row.try_get_by_index(9)?;
        let rev = rev.ok_or_else(|| corrupt(seq, "no rev"))?;
        let record = Record {
            seq,
            rev,
            key: row.try_get_by_index(1)?,
            amount_minor: row.try_get_by_index(2)?,
            currency: row.try_get_by_index(3)?,
            status,
            settlement_id: row.try_get_by_index(5)?,
            reason: row.try_get_by_index(6)?,
            created_at: time(created_at)?,
            voided_at: voided_at.map(time).transpose()?,
        };
        record.check()?;
        Ok(record)
    }

    fn check(&self) -> Result<(), Error> {
        let fail = |what: &str| Err(corrupt(self.seq, what));
        if self.rev < 1 {
            return fail("rev below 1");
        }
        if self.amount_minor < 1 {
            return fail("amount_minor below 1");
        }
        match self.status {
            Status::Charged if self.settlement_id.is_none() || self.reason.is_some() => {
                return fail("a charge without a settlement_id, or with a reason");
            }
            Status::Declined if self.settlement_id.is_some() || self.reason.is_none() => {
                return fail("a decline with a settlement_id, or without a reason");
            }
            Status::Voided if self.settlement_id.is_some() == self.reason.is_some() => {
                return fail("a void without exactly one of settlement_id and reason");
            }
            _ => {}
        }
        if (self.status == Status::Voided) != self.voided_at.is_some() {
            return fail("voided_at does not match the status");
        }
        Ok(())
    }
}

/// What a charge request found.
#[derive(Debug)]
pub enum Charged {
    /// The key was new: this record was just committed.
    New(Record),
    /// The key was already in the ledger with this record; nothing written.
    Existing(Record),
}

/// What a void request found.
#[derive(Debug)]
pub enum Voided {
    /// The charge was voided now.
    Now(Record),
    /// The charge had been voided before (or its key closed); nothing
    /// written.
    Already(Record),
    /// The record is a decline: there is nothing to void.
    NotCharged(Record),
    /// No record has this key.
    Unknown,
}

/// What closing a key found.
#[derive(Debug)]
pub enum Closed {
    /// No record had this key: it is closed now (a voided record without a
    /// charge), and a charge for it is answered with this record.
    New(Record),
    /// The key was settled already (charged, declined, voided or closed):
    /// its record stands as it is, nothing written.
    Existing(Record),
    /// The key is held for another amount or currency.
    Reused(Record),
}

/// The sums of one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurrencyTotal {
    pub currency: String,
    /// Records counted.
    pub count: i64,
    /// Their amounts summed, in minor units. Wider than one amount: a sum
    /// of amounts up to `i64::MAX` can pass it.
    pub amount_minor: i128,
}

/// `GET /v1/totals`: per currency, what is charged and what was voided, and
/// how many declines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Totals {
    /// Records now `charged`, by currency in code order.
    pub charged: Vec<CurrencyTotal>,
    /// Charges now `voided` (undone), by currency in code order.
    pub voided: Vec<CurrencyTotal>,
    pub declined_count: i64,
    /// Keys closed before they charged (voided without a charge).
    pub closed_count: i64,
}

/// The ledger: a pool on one SQLite file and the write lock.
pub struct Ledger {
    db: DatabaseConnection,
    write: Mutex<()>,
}

fn stmt(sql: &str, values: impl IntoIterator<Item = Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Sqlite, sql, values)
}

/// Whether `e` is a `UNIQUE` constraint refusing a write (of `key` or of
/// `rev`): the statement wrote nothing.
fn unique_violation(e: &DbErr) -> bool {
    matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}

fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The URL of the file at `path`, with the characters the URL would read as
/// syntax percent-encoded (sqlx decodes them).
fn url_of(path: &Path) -> Result<String, DbErr> {
    let path = path
        .to_str()
        .ok_or_else(|| DbErr::Custom(format!("the ledger path {} is not UTF-8", path.display())))?;
    let mut url = String::from("sqlite://");
    for c in path.chars() {
        match c {
            '%' => url.push_str("%25"),
            '?' => url.push_str("%3F"),
            '#' => url.push_str("%23"),
            c => url.push(c),
        }
    }
    url.push_str("?mode=rwc");
    Ok(url)
}

/// Creates the table if missing and brings an older one up to date, in
/// one `IMMEDIATE` transaction: it holds the write lock from its start, so
/// two processes opening one file migrate it one after the other, the
/// second finding nothing left to do.
///
/// A table from before `rev` gets the column; then records without a rev
/// get `rev = seq` (a file from before `rev` has no rev at all: its
/// records keep their order, and a charge voided there keeps the rev of
/// its insert), shifted above the largest rev when some records have one
/// (records a provider without `rev` wrote into a migrated file: they come
/// after every change a reader may have seen). Last the unique index.
async fn migrate(db: &DatabaseConnection) -> Result<(), Error> {
    let txn = db
        .begin_with_options(TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..TransactionOptions::default()
        })
        .await?;
    txn.execute_unprepared(CREATE_TABLE).await?;
    let count = |sql: &'static str| {
        let txn = &txn;
        async move {
            txn.query_one_raw(stmt(sql, []))
                .await?
                .map(|row| row.try_get_by_index::<Option<i64>>(0))
                .transpose()
                .map(|n| n.flatten().unwrap_or(0))
        }
    };
    if count("SELECT COUNT(*) FROM pragma_table_info('charges') WHERE name = 'rev'").await? == 0 {
        txn.execute_unprepared("ALTER TABLE charges ADD COLUMN rev INTEGER")
            .await?;
    }
    let unrevised = count("SELECT MAX(seq) FROM charges WHERE rev IS NULL").await?;
    if unrevised > 0 {
        let base = count("SELECT MAX(rev) FROM charges").await?;
        if base.checked_add(unrevised).is_none() {
            return Err(corrupt(unrevised, "no rev left to give it"));
        }
        txn.execute_raw(stmt(
            "UPDATE charges SET rev = seq + ? WHERE rev IS NULL",
            [base.into()],
        ))
        .await?;
    }
    txn.execute_unprepared(CREATE_REV_INDEX).await?;
    txn.commit().await?;
    Ok(())
}

impl Ledger {
    /// Opens the ledger at `path`, creating the file and the table if
    /// missing, and migrating a table from before `rev` (see the module
    /// doc).
    pub async fn open(path: &Path) -> Result<Ledger, Error> {
        let mut opts = ConnectOptions::new(url_of(path)?);
        opts.max_connections(POOL_MAX)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .sqlx_logging(false)
            .map_sqlx_sqlite_opts(|o| {
                o.journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(BUSY_TIMEOUT)
            });
        let db = Database::connect(opts).await?;
        migrate(&db).await?;
        let mode = db
            .query_one_raw(stmt("PRAGMA journal_mode", []))
            .await?
            .map(|row| row.try_get_by_index::<String>(0))
            .transpose()?;
        if !mode
            .as_deref()
            .is_some_and(|m| m.eq_ignore_ascii_case("wal"))
        {
            return Err(DbErr::Custom(format!("journal mode is {mode:?}, not WAL")).into());
        }
        Ok(Ledger {
            db,
            write: Mutex::new(()),
        })
    }

    /// Closes the pool (checkpointing the WAL when the last connection
    /// closes).
    pub async fn close(&self) -> Result<(), Error> {
        Ok(self.db.close_by_ref().await?)
    }

    /// The record of `key`, if any.
    pub async fn get(&self, key: &str) -> Result<Option<Record>, Error> {
        let sql = format!("SELECT {COLUMNS} FROM charges WHERE key = ?");
        self.db
            .query_one_raw(stmt(&sql, [key.into()]))
            .await?
            .map(|row| Record::from_row(&row))
            .transpose()
    }

    /// Charges `charge.key` once: the existing record if the key is known,
    /// otherwise a new record, `declined` if `decline` else `charged`,
    /// committed before this returns. `now` is the record's `created_at`.
    pub async fn charge(
        &self,
        charge: &Charge,
        decline: bool,
        now: DateTime<Utc>,
    ) -> Result<Charged, Error> {
        let _write = self.write.lock().await;
        if let Some(existing) = self.get(&charge.key).await? {
            return Ok(Charged::Existing(existing));
        }
        let (status, reason) = if decline {
            (Status::Declined, Some(DECLINE_REASON.to_owned()))
        } else {
            (Status::Charged, None)
        };
        let mut attempt = 1;
        let seq = loop {
            match self
                .insert_charge(charge, status, reason.as_deref(), now)
                .await
            {
                Ok(seq) => break seq,
                Err(e) if unique_violation(&e) => {
                    // Another process on the same file charged this key
                    // between our read and our insert: its record stands.
                    if let Some(existing) = self.get(&charge.key).await? {
                        return Ok(Charged::Existing(existing));
                    }
                    // Not the key, so the rev: taken by another process's
                    // write. Ours wrote nothing; it is tried again.
                    if attempt >= REV_ATTEMPTS {
                        return Err(e.into());
                    }
                    attempt += 1;
                }
                Err(e) => return Err(e.into()),
            }
        };
        // Read back what was committed and check it is what was asked: the
        // answer is the stored record, byte for byte what a replay sends.
        let record = self
            .get(&charge.key)
            .await?
            .ok_or_else(|| corrupt(seq, "missing right after its insert"))?;
        if record.seq != seq || record.status != status || !record.same_request(charge) {
            return Err(corrupt(seq, "differs from what was inserted"));
        }
        Ok(Charged::New(record))
    }

    /// Inserts the record of a new charge or decline, with the next rev, in
    /// one transaction (rolled back on any failure); returns its `seq`.
    async fn insert_charge(
        &self,
        charge: &Charge,
        status: Status,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<i64, DbErr> {
        let txn = self.db.begin().await?;
        let inserted = txn
            .execute_raw(stmt(
                &format!(
                    "INSERT INTO charges \
                     (key, amount_minor, currency, status, reason, created_at, rev) \
                     VALUES (?, ?, ?, ?, ?, ?, {NEXT_REV})"
                ),
                [
                    charge.key.clone().into(),
                    charge.amount_minor.into(),
                    charge.currency.clone().into(),
                    status.as_str().into(),
                    reason.map(str::to_owned).into(),
                    timestamp(now).into(),
                ],
            ))
            .await;
        let inserted = match inserted {
            Ok(r) => r,
            Err(e) => {
                txn.rollback().await?;
                return Err(e);
            }
        };
        let seq = i64::try_from(inserted.last_insert_id())
            .map_err(|_| DbErr::Custom("seq beyond i64".into()))?;
        if status == Status::Charged {
            // The same write as the insert, under the same rev.
            txn.execute_raw(stmt(
                "UPDATE charges SET settlement_id = ? WHERE seq = ?",
                [format!("prv-{seq}").into(), seq.into()],
            ))
            .await?;
        }
        txn.commit().await?;
        Ok(seq)
    }

    /// Voids the charge of `key`, at `now`: the money it moved is undone.
    pub async fn void(&self, key: &str, now: DateTime<Utc>) -> Result<Voided, Error> {
        let _write = self.write.lock().await;
        let Some(record) = self.get(key).await? else {
            return Ok(Voided::Unknown);
        };
        match record.status {
            Status::Voided => return Ok(Voided::Already(record)),
            Status::Declined => return Ok(Voided::NotCharged(record)),
            Status::Charged => {}
        }
        let mut attempt = 1;
        let done = loop {
            let done = self
                .db
                .execute_raw(stmt(
                    &format!(
                        "UPDATE charges SET status = 'voided', voided_at = ?, rev = {NEXT_REV} \
                         WHERE seq = ? AND status = 'charged'"
                    ),
                    [timestamp(now).into(), record.seq.into()],
                ))
                .await;
            match done {
                Ok(done) => break done,
                // The rev was taken by another process's write: the update
                // changed nothing; it is tried again.
                Err(e) if unique_violation(&e) && attempt < REV_ATTEMPTS => attempt += 1,
                Err(e) => return Err(e.into()),
            }
        };
        let after = self
            .get(key)
            .await?
            .ok_or_else(|| corrupt(record.seq, "vanished while voided"))?;
        if after.status != Status::Voided {
            return Err(corrupt(record.seq, "not voided after its void"));
        }
        // Zero rows: another process voided it between our read and write.
        Ok(if done.rows_affected() == 1 {
            Voided::Now(after)
        } else {
            Voided::Already(after)
        })
    }

    /// Settles `charge.key` for good without charging, at `now`: a key
    /// never seen is closed (a voided record without a charge, so that a
    /// charge still on its way for it charges nothing); a key already
    /// settled keeps its record, a charge included. Under the write lock a
    /// close and a charge of one key are ordered, and whichever comes
    /// first is the key's answer for both.
    pub async fn close_key(&self, charge: &Charge, now: DateTime<Utc>) -> Result<Closed, Error> {
        let _write = self.write.lock().await;
        if let Some(record) = self.get(&charge.key).await? {
            return Ok(if record.same_request(charge) {
                Closed::Existing(record)
            } else {
                Closed::Reused(record)
            });
        }
        let mut attempt = 1;
        loop {
            match self.insert_closed(charge, now).await {
                Ok(record) => return Ok(Closed::New(record)),
                Err(Error::Db(e)) if unique_violation(&e) => {
                    // Another process on the same file settled the key
                    // between our read and our insert: its record stands.
                    match self.get(&charge.key).await? {
                        Some(record) if record.same_request(charge) => {
                            return Ok(Closed::Existing(record));
                        }
                        Some(record) => return Ok(Closed::Reused(record)),
                        // Not the key, so the rev: taken by another
                        // process's write. Ours wrote nothing; it is tried
                        // again.
                        None if attempt < REV_ATTEMPTS => attempt += 1,
                        None => return Err(Error::Db(e)),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes the voided record that closes a key never charged (under the
    /// write lock, the key checked absent).
    async fn insert_closed(&self, charge: &Charge, now: DateTime<Utc>) -> Result<Record, Error> {
        self.db
            .execute_raw(stmt(
                &format!(
                    "INSERT INTO charges \
                     (key, amount_minor, currency, status, reason, created_at, voided_at, rev) \
                     VALUES (?, ?, ?, 'voided', ?, ?, ?, {NEXT_REV})"
                ),
                [
                    charge.key.clone().into(),
                    charge.amount_minor.into(),
                    charge.currency.clone().into(),
                    CLOSED_REASON.into(),
                    timestamp(now).into(),
                    timestamp(now).into(),
                ],
            ))
            .await?;
        self.get(&charge.key)
            .await?
            .ok_or_else(|| corrupt(0, "a closed key missing right after its insert"))
    }

    /// Up to `limit` records with `rev > after`, in `rev` order: every
    /// record written or changed after the change `after`, each once, at
    /// its latest state.
    pub async fn page(&self, after: i64, limit: u32) -> Result<Vec<Record>, Error> {
        let sql = format!("SELECT {COLUMNS} FROM charges WHERE rev > ? ORDER BY rev LIMIT ?");
        self.db
            .query_all_raw(stmt(&sql, [after.into(), i64::from(limit).into()]))
            .await?
            .iter()
            .map(Record::from_row)
            .collect()
    }

    /// The totals, by SQL aggregates.
    pub async fn totals(&self) -> Result<Totals, Error> {
        Ok(Totals {
            charged: self.sums(Status::Charged).await?,
            voided: self.sums(Status::Voided).await?,
            declined_count: self.count(Status::Declined, "").await?,
            closed_count: self
                .count(Status::Voided, " AND settlement_id IS NULL")
                .await?,
        })
    }

    /// Records of `status` matching the extra condition `and`.
    async fn count(&self, status: Status, and: &str) -> Result<i64, Error> {
        let sql = format!("SELECT COUNT(*) FROM charges WHERE status = ?{and}");
        Ok(self
            .db
            .query_one_raw(stmt(&sql, [status.as_str().into()]))
            .await?
            .map(|row| row.try_get_by_index::<i64>(0))
            .transpose()?
            .unwrap_or(0))
    }

    /// Count and sum per currency of the records in `status`. SQLite's
    /// `SUM` fails on overflowing i64 and amounts go up to `i64::MAX`, so it
    /// sums the high and low 32 bits apart (each fits for billions of rows)
    /// and they are joined in i128.
    async fn sums(&self, status: Status) -> Result<Vec<CurrencyTotal>, Error> {
        let rows = self
            .db
            .query_all_raw(stmt(
                "SELECT currency, COUNT(*), SUM(amount_minor >> 32), \
                 SUM(amount_minor & 4294967295) \
                 FROM charges WHERE status = ? AND settlement_id IS NOT NULL \
                 GROUP BY currency ORDER BY currency",
                [status.as_str().into()],
            ))
            .await?;
        rows.iter()
            .map(|row| {
                let high: i64 = row.try_get_by_index(2)?;
                let low: i64 = row.try_get_by_index(3)?;
                let amount_minor = i128::from(high)
                    .checked_mul(1_i128 << 32)
                    .and_then(|h| h.checked_add(i128::from(low)))
                    .ok_or_else(|| corrupt(0, "totals overflow i128"))?;
                Ok(CurrencyTotal {
                    currency: row.try_get_by_index(0)?,
                    count: row.try_get_by_index(1)?,
                    amount_minor,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge(key: &str, amount_minor: i64) -> Charge {
        Charge {
            key: key.into(),
            amount_minor,
            currency: "USD".into(),
        }
    }

    #[tokio::test]
    async fn totals_are_exact_past_i64() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let ledger = Ledger::open(&dir.path().join("l.db")).await.expect("open");
        for key in ["a", "b", "c"] {
            ledger
                .charge(&charge(key, i64::MAX), false, Utc::now())
                .await
                .expect("charge");
        }
        ledger
            .charge(&charge("d", 5), true, Utc::now())
            .await
            .expect("decline");
        let totals = ledger.totals().await.expect("totals");
        assert_eq!(
            totals.charged,
            vec![CurrencyTotal {
                currency: "USD".into(),
                count: 3,
                amount_minor: i128::from(i64::MAX) * 3,
            }]
        );
        assert_eq!(totals.declined_count, 1);
        assert!(totals.voided.is_empty());
    }

    #[test]
    fn urls_escape_what_sqlite_urls_read_as_syntax() {
        assert_eq!(
            url_of(Path::new("/tmp/a?b#c%d.db")).expect("utf-8"),
            "sqlite:///tmp/a%3Fb%23c%25d.db?mode=rwc"
        );
    }

    /// The table as it was before `rev`.
    const OLD_TABLE: &str = "CREATE TABLE charges (\
        seq INTEGER PRIMARY KEY AUTOINCREMENT, \
        key TEXT NOT NULL UNIQUE, \
        amount_minor INTEGER NOT NULL, \
        currency TEXT NOT NULL, \
        status TEXT NOT NULL, \
        settlement_id TEXT, \
        reason TEXT, \
        created_at TEXT NOT NULL, \
        voided_at TEXT)";

    const T: &str = "2024-05-01T10:00:00.000000Z";

    async fn raw(path: &Path) -> DatabaseConnection {
        Database::connect(url_of(path).expect("utf-8"))
            .await
            .expect("a raw connection")
    }

    async fn revs(ledger: &Ledger, after: i64) -> Vec<(String, i64, Status)> {
        ledger
            .page(after, 1000)
            .await
            .expect("a page")
            .into_iter()
            .map(|r| (r.key, r.rev, r.status))
            .collect()
    }

    /// A ledger file from before `rev`: opened, its records get
    /// `rev = seq` (the charge voided there keeps the rev of its insert),
    /// the unique index is made, and new writes get larger revs. Records a
    /// provider without `rev` writes into the migrated file are refused
    /// until the next open gives them revs above all others.
    #[tokio::test]
    async fn an_old_ledger_file_is_migrated() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("old.db");
        let old = raw(&path).await;
        old.execute_unprepared(OLD_TABLE).await.expect("old table");
        old.execute_unprepared(&format!(
            "INSERT INTO charges (key, amount_minor, currency, status, settlement_id, reason, \
             created_at, voided_at) VALUES \
             ('a', 100, 'USD', 'charged', 'prv-1', NULL, '{T}', NULL), \
             ('b', 200, 'USD', 'voided', 'prv-2', NULL, '{T}', '{T}'), \
             ('c', 300, 'USD', 'declined', NULL, 'simulated decline', '{T}', NULL)"
        ))
        .await
        .expect("old rows");
        old.close().await.expect("close");

        let ledger = Ledger::open(&path).await.expect("open an old file");
        assert_eq!(
            revs(&ledger, 0).await,
            vec![
                ("a".into(), 1, Status::Charged),
                ("b".into(), 2, Status::Voided),
                ("c".into(), 3, Status::Declined),
            ]
        );
        let Charged::New(d) = ledger
            .charge(&charge("d", 5), false, Utc::now())
            .await
            .expect("charge")
        else {
            panic!("d is new");
        };
        assert_eq!((d.seq, d.rev), (4, 4));
        let Voided::Now(a) = ledger.void("a", Utc::now()).await.expect("void") else {
            panic!("a is voided now");
        };
        assert_eq!((a.seq, a.rev), (1, 5));
        assert_eq!(
            revs(&ledger, 3).await,
            vec![
                ("d".into(), 4, Status::Charged),
                ("a".into(), 5, Status::Voided)
            ]
        );

        // The index is there and refuses a rev twice.
        let index = ledger
            .db
            .query_one_raw(stmt(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name = 'charges_rev'",
                [],
            ))
            .await
            .expect("schema")
            .map(|row| row.try_get_by_index::<i64>(0))
            .transpose()
            .expect("a count");
        assert_eq!(index, Some(1));
        let twice = ledger
            .db
            .execute_unprepared("UPDATE charges SET rev = 2 WHERE key = 'c'")
            .await
            .expect_err("a rev twice");
        assert!(unique_violation(&twice), "{twice:?}");
        // A rev below 1 is refused on read.
        ledger
            .db
            .execute_unprepared("UPDATE charges SET rev = 0 WHERE key = 'c'")
            .await
            .expect("rev 0");
        assert!(matches!(
            ledger.get("c").await,
            Err(Error::Corrupt { seq: 3, .. })
        ));
        ledger
            .db
            .execute_unprepared("UPDATE charges SET rev = 3 WHERE key = 'c'")
            .await
            .expect("rev 3 again");

        // A provider without `rev` on the same file writes a record
        // without one: refused as corrupt, never served without a rev.
        let old = raw(&path).await;
        old.execute_unprepared(&format!(
            "INSERT INTO charges (key, amount_minor, currency, status, settlement_id, \
             created_at) VALUES ('e', 7, 'USD', 'charged', 'prv-5', '{T}')"
        ))
        .await
        .expect("an old writer's row");
        old.close().await.expect("close");
        assert!(matches!(
            ledger.get("e").await,
            Err(Error::Corrupt { seq: 5, .. })
        ));
        ledger.close().await.expect("close");

        // Reopened: it comes after every change seen (5 + its seq 5), and
        // nothing else moves.
        let ledger = Ledger::open(&path).await.expect("reopen");
        let before = revs(&ledger, 0).await;
        assert_eq!(
            before,
            vec![
                ("b".into(), 2, Status::Voided),
                ("c".into(), 3, Status::Declined),
                ("d".into(), 4, Status::Charged),
                ("a".into(), 5, Status::Voided),
                ("e".into(), 10, Status::Charged),
            ]
        );
        ledger.close().await.expect("close");
        let ledger = Ledger::open(&path).await.expect("reopen again");
        assert_eq!(
            revs(&ledger, 0).await,
            before,
            "a second open changes nothing"
        );
        let Charged::New(f) = ledger
            .charge(&charge("f", 1), true, Utc::now())
            .await
            .expect("decline")
        else {
            panic!("f is new");
        };
        assert_eq!((f.seq, f.rev, f.status), (6, 11, Status::Declined));
        ledger.close().await.expect("close");
    }

    /// Two ledgers on one file (two processes): concurrent charges, voids
    /// and closes from both never share a rev and lose no write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_ledgers_on_one_file_never_share_a_rev() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("shared.db");
        let one = std::sync::Arc::new(Ledger::open(&path).await.expect("open one"));
        let two = std::sync::Arc::new(Ledger::open(&path).await.expect("open two"));
        let mut tasks = tokio::task::JoinSet::new();
        for (name, ledger) in [("one", &one), ("two", &two)] {
            for i in 0..15 {
                let ledger = ledger.clone();
                tasks.spawn(async move {
                    let key = format!("{name}-{i}");
                    ledger
                        .charge(&charge(&key, 10), false, Utc::now())
                        .await
                        .expect("charge");
                    ledger
                        .charge(&charge("shared", 10), false, Utc::now())
                        .await
                        .expect("the shared charge");
                    if i % 3 == 0 {
                        ledger.void(&key, Utc::now()).await.expect("void");
                    }
                    ledger
                        .close_key(&charge(&format!("{name}-closed-{i}"), 10), Utc::now())
                        .await
                        .expect("close");
                });
            }
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("a task");
        }
        let records = one.page(0, 1000).await.expect("a page");
        // 30 charges, the shared one, 30 closes; 10 voids changed charges.
        assert_eq!(records.len(), 61);
        let revs: Vec<i64> = records.iter().map(|r| r.rev).collect();
        assert!(revs.windows(2).all(|w| w[0] < w[1]), "{revs:?}");
        assert_eq!(
            revs.last().copied(),
            Some(71),
            "one rev per write, none lost"
        );
        let voided = records
            .iter()
            .filter(|r| r.status == Status::Voided && r.settlement_id.is_some())
            .count();
        assert_eq!(voided, 10);
        assert_eq!(two.page(0, 1000).await.expect("a page"), records);
    }

    /// A write whose rev is taken (here by a trigger that writes another
    /// record with the rev first, inside the same statement) is tried
    /// again, then fails: nothing written, nothing lost, no panic; the
    /// ledger goes on.
    #[tokio::test]
    async fn a_taken_rev_fails_the_write_and_writes_nothing() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let ledger = Ledger::open(&dir.path().join("l.db")).await.expect("open");
        let Charged::New(prey) = ledger
            .charge(&charge("prey", 3), false, Utc::now())
            .await
            .expect("charge")
        else {
            panic!("prey is new");
        };
        let thief = |event: &str, when: &str| {
            format!(
                "CREATE TRIGGER steal_{event} BEFORE {event} ON charges WHEN {when} BEGIN \
                 INSERT INTO charges (key, amount_minor, currency, status, reason, \
                 created_at, rev) VALUES ('thief-' || NEW.key, 1, 'USD', 'declined', \
                 'simulated decline', '{T}', NEW.rev); END"
            )
        };
        for sql in [
            thief("INSERT", "NEW.key LIKE 'victim%'"),
            thief("UPDATE", "NEW.key = 'prey'"),
        ] {
            ledger.db.execute_unprepared(&sql).await.expect("a trigger");
        }
        let taken = |r: Result<(), Error>| match r {
            Err(Error::Db(e)) => assert!(unique_violation(&e), "{e:?}"),
            other => panic!("expected a unique violation, got {other:?}"),
        };
        taken(
            ledger
                .charge(&charge("victim-1", 3), false, Utc::now())
                .await
                .map(drop),
        );
        taken(
            ledger
                .close_key(&charge("victim-2", 3), Utc::now())
                .await
                .map(drop),
        );
        taken(ledger.void("prey", Utc::now()).await.map(drop));
        assert_eq!(
            revs(&ledger, 0).await,
            vec![("prey".into(), prey.rev, Status::Charged)],
            "nothing written"
        );

        for event in ["INSERT", "UPDATE"] {
            ledger
                .db
                .execute_unprepared(&format!("DROP TRIGGER steal_{event}"))
                .await
                .expect("drop");
        }
        assert!(matches!(
            ledger
                .charge(&charge("victim-1", 3), false, Utc::now())
                .await,
            Ok(Charged::New(_))
        ));
        assert!(matches!(
            ledger.close_key(&charge("victim-2", 3), Utc::now()).await,
            Ok(Closed::New(_))
        ));
        assert!(matches!(
            ledger.void("prey", Utc::now()).await,
            Ok(Voided::Now(_))
        ));
        assert_eq!(
            revs(&ledger, 0).await,
            vec![
                ("victim-1".into(), 2, Status::Charged),
                ("victim-2".into(), 3, Status::Voided),
                ("prey".into(), 4, Status::Voided),
            ]
        );
    }

    #[tokio::test]
    async fn odd_paths_open() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("odd ?#% name.db");
        let ledger = Ledger::open(&path).await.expect("open");
        ledger
            .charge(&charge("k", 1), false, Utc::now())
            .await
            .expect("charge");
        ledger.close().await.expect("close");
        assert!(path.exists());
    }
}
