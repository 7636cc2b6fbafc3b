//! Write transactions, and the SQLite write gate: this process's writers of
//! one SQLite file take turns here before `BEGIN IMMEDIATE`.

use sea_orm::{
    DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, TransactionOptions, TransactionTrait,
};

/// Begins a write transaction. On SQLite it is `BEGIN IMMEDIATE`, taken
/// only once this process's other writers of the same file are done (see
/// [`write_gate`]); writers in other processes queue on the busy timeout
/// instead of one failing at its first write.
pub async fn begin_write(db: &DatabaseConnection) -> Result<WriteTxn, DbErr> {
    let gate = write_gate(db).await;
    let options = TransactionOptions {
        sqlite_transaction_mode: (db.get_database_backend() == DbBackend::Sqlite)
            .then_some(sea_orm::SqliteTransactionMode::Immediate),
        ..Default::default()
    };
    Ok(WriteTxn {
        txn: db.begin_with_options(options).await?,
        _gate: gate,
    })
}

/// A write transaction holding its database's [`WriteGate`] until it ends.
pub struct WriteTxn {
    txn: DatabaseTransaction,
    _gate: WriteGate,
}

impl std::ops::Deref for WriteTxn {
    type Target = DatabaseTransaction;

    fn deref(&self) -> &DatabaseTransaction {
        &self.txn
    }
}

impl WriteTxn {
    pub async fn commit(self) -> Result<(), DbErr> {
        self.txn.commit().await
    }

    pub async fn rollback(self) -> Result<(), DbErr> {
        self.txn.rollback().await
    }
}

/// This process's turn to write one SQLite file. SQLite lets one writer in
/// at a time, and one that finds the file locked polls with sleeps of up to
/// 100 ms (the busy handler); the actor loops, relays and sweepers of one
/// process that share a file queue here instead, and each is woken the
/// moment the one before it is done. Nothing on PostgreSQL (row locks).
pub struct WriteGate {
    _held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

/// Waits for this process's turn to write `db` (see [`WriteGate`]).
pub async fn write_gate(db: &DatabaseConnection) -> WriteGate {
    type Gates = std::sync::Mutex<
        std::collections::HashMap<std::path::PathBuf, std::sync::Arc<tokio::sync::Mutex<()>>>,
    >;
    static GATES: std::sync::OnceLock<Gates> = std::sync::OnceLock::new();
    if db.get_database_backend() != DbBackend::Sqlite {
        return WriteGate { _held: None };
    }
    let options = db.get_sqlite_connection_pool().connect_options();
    let file = options.get_filename();
    if file.as_os_str().is_empty() {
        return WriteGate { _held: None };
    }
    let gate = GATES
        .get_or_init(Gates::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .entry(file.to_path_buf())
        .or_default()
        .clone();
    WriteGate {
        _held: Some(gate.lock_owned().await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::SqliteSettings;
    use crate::store::connect;

    /// Writers of one SQLite file in one process take turns at the gate:
    /// the second waits while the first holds it and goes on as soon as it
    /// is released; a writer of another file does not wait.
    #[tokio::test]
    async fn writers_of_one_file_take_turns() {
        use futures::FutureExt;
        let dir = tempfile::tempdir().expect("a temp dir");
        let url = |name: &str| format!("sqlite://{}/{name}.db?mode=rwc", dir.path().display());
        let settings = SqliteSettings::default();
        let db = connect(&url("one"), &settings, 8).await.expect("one");
        let other = connect(&url("other"), &settings, 8).await.expect("other");
        let first = write_gate(&db).await;
        let mut second = Box::pin(write_gate(&db));
        assert!(
            (&mut second).now_or_never().is_none(),
            "waits for the first"
        );
        assert!(write_gate(&other).now_or_never().is_some(), "another file");
        drop(first);
        let second = second.now_or_never().expect("its turn");
        drop(second);
        // A write transaction holds its file's gate until it ends.
        let txn = begin_write(&db).await.expect("a write transaction");
        assert!(
            write_gate(&db).now_or_never().is_none(),
            "held by the transaction"
        );
        txn.commit().await.expect("commit");
        assert!(
            write_gate(&db).now_or_never().is_some(),
            "released by the commit"
        );
    }
}
