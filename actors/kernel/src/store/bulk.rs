//! Bulk SQL shared by the actors' fast paths: chunked and padded `IN`
//! reads, multi-row inserts that must all be new, and guarded multi-row
//! updates.

use sea_orm::{ConnectionTrait, DbBackend, DbErr, EntityTrait, TryInsertResult};

use crate::error::StepError;

/// Rows per multi-row INSERT at most (a power of two, see
/// [`insert_chunks`]): well under the bound on bind parameters.
pub const INSERT_CHUNK: usize = 128;
/// Values per `IN (…)` list (and rows per guarded multi-row update): well
/// under SQLite's and PostgreSQL's bound on bind parameters.
pub const IN_CHUNK: usize = 512;

/// `items` in chunks of at most [`IN_CHUNK`], each padded to a power of two
/// by repeating its last item, for statements where a repeat changes
/// nothing (`IN` lists, guarded updates). Each size is a distinct prepared
/// statement, which every connection keeps in its cache: ten sizes instead
/// of five hundred keep that cache small and always warm.
pub fn padded_chunks<T: Clone>(items: &[T]) -> impl Iterator<Item = Vec<T>> + '_ {
    items.chunks(IN_CHUNK).map(|chunk| {
        let mut padded = chunk.to_vec();
        if let Some(last) = chunk.last() {
            padded.resize(chunk.len().next_power_of_two(), last.clone());
        }
        padded
    })
}

/// Inserts rows that must all be new (many per statement). A row whose
/// `key` exists already is left alone and makes the whole call a conflict
/// ([`StepError::Conflict`]) naming `what`: another writer got there first, and a retry of the
/// batch sees its row.
pub async fn insert_all_new<A>(
    txn: &impl ConnectionTrait,
    rows: Vec<A>,
    key: <A::Entity as EntityTrait>::Column,
    what: &str,
) -> Result<(), StepError>
where
    A: sea_orm::ActiveModelTrait + Send,
{
    let expected = rows.len() as u64;
    let mut rows = rows;
    rows.sort_by_cached_key(|a| lock_order(a.get(key).into_value().as_ref()));
    let mut inserted = 0;
    for chunk in insert_chunks(rows) {
        inserted += match <A::Entity as EntityTrait>::insert_many(chunk)
            .on_conflict_do_nothing_on([key])
            .exec_without_returning(txn)
            .await?
        {
            TryInsertResult::Inserted(n) => n,
            TryInsertResult::Empty | TryInsertResult::Conflicted => 0,
        };
    }
    if inserted != expected {
        return Err(StepError::Conflict(format!(
            "{} of {expected} {what} written concurrently",
            expected - inserted
        )));
    }
    Ok(())
}

/// The order every writer takes row locks in: by key. Inserts and guarded
/// updates write a table's rows sorted by it (and every step writes its
/// tables in one fixed order), so two transactions that touch the same rows
/// wait for each other instead of deadlocking.
pub(crate) fn lock_order(key: Option<&sea_orm::Value>) -> String {
    match key {
        Some(sea_orm::Value::String(Some(s))) => s.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// An SQL identifier, double-quoted (both SQLite and PostgreSQL).
pub(crate) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Appends one `(…)` row of bind parameters to a `VALUES` list (after a
/// comma unless it is the first), in the backend's placeholder style.
pub(crate) fn push_tuple(
    sql: &mut String,
    values: &mut Vec<sea_orm::Value>,
    comma: bool,
    row: impl IntoIterator<Item = sea_orm::Value>,
    backend: DbBackend,
) {
    sql.push_str(if comma { ", (" } else { "(" });
    for (i, v) in row.into_iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        values.push(v);
        match backend {
            DbBackend::Postgres => sql.push_str(&format!("${}", values.len())),
            _ => sql.push('?'),
        }
    }
    sql.push(')');
}

/// Writes rows changed in memory back with one statement per chunk, each
/// row guarded by the values it was read with: `UPDATE t SET c = v.… FROM
/// (VALUES …) AS v WHERE t.key = v.… AND t.guard = v.…` (SQLite ≥ 3.33 and
/// PostgreSQL). `rows` are `(as read, as it is now)`; `set` are the columns
/// written from the second, `guard` the columns compared with the first
/// (never NULL ones: NULL equals nothing). A row another writer changed
/// since it was read is not written and makes the whole call a conflict
/// ([`StepError::Conflict`]) naming `what`, so the batch is retried and sees the change.
pub async fn update_guarded<E>(
    txn: &impl ConnectionTrait,
    key: E::Column,
    set: &[E::Column],
    guard: &[E::Column],
    rows: &[(&E::Model, &E::Model)],
    what: &str,
) -> Result<(), StepError>
where
    E: EntityTrait,
    E::Model: sea_orm::ModelTrait<Entity = E>,
{
    use sea_orm::IdenStatic;
    use sea_orm::ModelTrait;
    if rows.is_empty() {
        return Ok(());
    }
    let mut sorted: Vec<(&E::Model, &E::Model)> = rows.to_vec();
    sorted.sort_by_cached_key(|(_, after)| lock_order(Some(&after.get(key))));
    let rows = &sorted[..];
    let backend = txn.get_database_backend();
    let table = E::default().table_name().to_owned();
    let width = 1 + set.len() + guard.len();
    let mut head = format!("UPDATE {} SET ", quote(&table));
    let assigns: Vec<String> = set
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} = v.column{}", quote(c.as_str()), i + 2))
        .collect();
    head.push_str(&assigns.join(", "));
    let mut tail = format!(
        ") AS v WHERE {}.{} = v.column1",
        quote(&table),
        quote(key.as_str())
    );
    for (i, c) in guard.iter().enumerate() {
        tail.push_str(&format!(
            " AND {}.{} = v.column{}",
            quote(&table),
            quote(c.as_str()),
            set.len() + i + 2
        ));
    }
    // A power of two, so that padding stays under the bound.
    let per_statement = 1 << (30_000 / width).clamp(1, IN_CHUNK).ilog2();
    let mut written = 0;
    // Padded with repeats of a chunk's last row: a target row that joins
    // several identical rows of `v` is updated (and counted) once.
    for chunk in rows.chunks(per_statement) {
        let chunk = padded_chunks(chunk).flatten().collect::<Vec<_>>();
        let mut sql = head.clone();
        sql.push_str(" FROM (VALUES ");
        let mut values = Vec::with_capacity(chunk.len() * width);
        for (r, (before, after)) in chunk.iter().enumerate() {
            let row = std::iter::once(after.get(key))
                .chain(set.iter().map(|c| after.get(*c)))
                .chain(guard.iter().map(|c| before.get(*c)));
            push_tuple(&mut sql, &mut values, r > 0, row, backend);
        }
        sql.push_str(&tail);
        let r = txn
            .execute_raw(sea_orm::Statement::from_sql_and_values(
                backend, sql, values,
            ))
            .await?;
        written += r.rows_affected();
    }
    let expected = rows.len() as u64;
    if written != expected {
        return Err(StepError::Conflict(format!(
            "{} of {expected} {what} changed concurrently",
            expected.saturating_sub(written)
        )));
    }
    Ok(())
}

/// Rows grouped for multi-row inserts, in order: chunks of
/// [`INSERT_CHUNK`] rows, and the rest cut into powers of two (200 rows go
/// as 128, 64 and 8). Each size of a multi-row insert is a prepared
/// statement of its own, which every connection keeps in its statement
/// cache; on SQLite a cached insert of 200 rows of six columns holds about
/// 85 KB. With every size from 1 to 200 of every table's insert, each
/// connection's 256 cached statements filled with them, and the process's
/// memory crept for as long as the load brought sizes not seen yet (the
/// soak, docs/BENCHMARKS.md). Eight sizes a table fit the cache for good,
/// stay prepared, and hold a few hundred kilobytes; the price is up to
/// seven more statements for an odd batch, cheap next to preparing one.
pub fn insert_chunks<T>(rows: impl IntoIterator<Item = T>) -> impl Iterator<Item = Vec<T>> {
    let rows: Vec<T> = rows.into_iter().collect();
    let mut left = rows.len();
    let mut rows = rows.into_iter();
    std::iter::from_fn(move || {
        let size = match left {
            0 => return None,
            n if n >= INSERT_CHUNK => INSERT_CHUNK,
            n => 1 << n.ilog2(),
        };
        left -= size;
        Some(rows.by_ref().take(size).collect())
    })
}

/// The rows of `E` whose `column` holds one of `keys` (repeats allowed),
/// read with one query per [`IN_CHUNK`] keys, by that key (`key_of`).
pub async fn rows_by_key<'k, E, C>(
    txn: &impl ConnectionTrait,
    column: C,
    keys: impl Iterator<Item = &'k str>,
    key_of: impl Fn(&E::Model) -> String,
) -> Result<std::collections::HashMap<String, E::Model>, DbErr>
where
    E: EntityTrait,
    C: sea_orm::ColumnTrait,
{
    read_by_key::<E, C>(txn, column, keys, key_of, false).await
}

/// As [`rows_by_key`], and on PostgreSQL the rows are locked (`FOR
/// UPDATE`) as they are read, in key order: for rows that many batches
/// write at once (a wallet every partition's sagas pay from). A batch then
/// waits for the one before it instead of finding its guarded update
/// failed, and two batches never lock the same rows in opposite orders.
/// SQLite has one writer at a time already: a plain read.
pub async fn rows_by_key_locked<'k, E, C>(
    txn: &impl ConnectionTrait,
    column: C,
    keys: impl Iterator<Item = &'k str>,
    key_of: impl Fn(&E::Model) -> String,
) -> Result<std::collections::HashMap<String, E::Model>, DbErr>
where
    E: EntityTrait,
    C: sea_orm::ColumnTrait,
{
    let lock = txn.get_database_backend() == DbBackend::Postgres;
    read_by_key::<E, C>(txn, column, keys, key_of, lock).await
}

async fn read_by_key<'k, E, C>(
    txn: &impl ConnectionTrait,
    column: C,
    keys: impl Iterator<Item = &'k str>,
    key_of: impl Fn(&E::Model) -> String,
    lock: bool,
) -> Result<std::collections::HashMap<String, E::Model>, DbErr>
where
    E: EntityTrait,
    C: sea_orm::ColumnTrait,
{
    use sea_orm::{QueryFilter, QueryOrder, QuerySelect};
    let mut keys: Vec<&str> = keys.collect();
    keys.sort_unstable();
    keys.dedup();
    let mut rows = std::collections::HashMap::with_capacity(keys.len());
    for chunk in padded_chunks(&keys) {
        let query = E::find().filter(column.is_in(chunk));
        let found = if lock {
            query.order_by_asc(column).lock_exclusive().all(txn).await?
        } else {
            query.all(txn).await?
        };
        rows.extend(found.into_iter().map(|r| (key_of(&r), r)));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{inbox, memory_db};
    use chrono::Utc;

    #[test]
    fn chunks_are_padded_to_a_power_of_two_with_their_last_item() {
        let items: Vec<u32> = (0..1030).collect();
        let sizes: Vec<usize> = padded_chunks(&items).map(|c| c.len()).collect();
        assert_eq!(sizes, vec![512, 512, 8]);
        let last = padded_chunks(&items).last().expect("a chunk");
        assert_eq!(last, vec![1024, 1025, 1026, 1027, 1028, 1029, 1029, 1029]);
        assert_eq!(padded_chunks::<u32>(&[]).count(), 0);
    }

    #[test]
    fn insert_chunks_come_in_powers_of_two_in_order() {
        for n in [0usize, 1, 2, 3, 7, 127, 128, 129, 200, 300, 1000] {
            let rows: Vec<usize> = (0..n).collect();
            let chunks: Vec<Vec<usize>> = insert_chunks(rows.clone()).collect();
            assert_eq!(chunks.concat(), rows, "{n} rows, in order, each once");
            for c in &chunks {
                assert!(
                    c.len().is_power_of_two() && c.len() <= INSERT_CHUNK,
                    "{n}: {}",
                    c.len()
                );
            }
        }
        let sizes = |n: usize| insert_chunks(0..n).map(|c| c.len()).collect::<Vec<_>>();
        assert_eq!(sizes(200), vec![128, 64, 8]);
        assert_eq!(sizes(300), vec![128, 128, 32, 8, 4]);
        // Every batch of up to 256 rows uses one of eight statements.
        let shapes: std::collections::BTreeSet<usize> = (0..=256).flat_map(sizes).collect();
        assert_eq!(shapes.len(), 8);
    }

    /// Three rows go out as a padded chunk of four: each is written once
    /// and counted once; a row whose guard no longer holds is a conflict.
    #[tokio::test]
    async fn guarded_updates_write_each_row_once_and_catch_stale_ones() {
        let db = memory_db(inbox::Entity).await;
        let now = Utc::now();
        let row = |id: &str, seq: i64| inbox::Model {
            consumer: "c".into(),
            msg_id: id.into(),
            stream: "S".into(),
            stream_seq: seq,
            subject: "s".into(),
            processed_at: now,
        };
        let read: Vec<inbox::Model> = ["a", "b", "c"].iter().map(|id| row(id, 1)).collect();
        for r in &read {
            inbox::Entity::insert(sea_orm::IntoActiveModel::into_active_model(r.clone()))
                .exec(&db)
                .await
                .expect("a row");
        }
        let next: Vec<inbox::Model> = ["a", "b", "c"].iter().map(|id| row(id, 2)).collect();
        let pairs: Vec<_> = read.iter().zip(&next).collect();
        update_guarded::<inbox::Entity>(
            &db,
            inbox::Column::MsgId,
            &[inbox::Column::StreamSeq],
            &[inbox::Column::StreamSeq],
            &pairs,
            "rows",
        )
        .await
        .expect("written");
        let seqs: Vec<i64> = inbox::Entity::find()
            .all(&db)
            .await
            .expect("rows")
            .iter()
            .map(|r| r.stream_seq)
            .collect();
        assert_eq!(seqs, vec![2, 2, 2]);
        // Read before the write above: stale now.
        let again: Vec<inbox::Model> = ["a", "b", "c"].iter().map(|id| row(id, 3)).collect();
        let stale: Vec<_> = read.iter().zip(&again).collect();
        let err = update_guarded::<inbox::Entity>(
            &db,
            inbox::Column::MsgId,
            &[inbox::Column::StreamSeq],
            &[inbox::Column::StreamSeq],
            &stale,
            "rows",
        )
        .await
        .expect_err("stale");
        assert!(err.to_string().contains("3 of 3 rows"), "{err}");
    }
}
