//! What `falcon recon` shows: the last runs, and the open mismatches.

use chrono::{DateTime, Utc};
use falcon_schemas::event::MismatchData;
use sea_orm::{
    ColumnTrait, DatabaseConnection, DbErr, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use serde::Serialize;

use crate::entity::{mismatch, run};

/// Open mismatches listed at most; the rest are counted.
pub const LISTED_MAX: u64 = 100;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The last runs, newest first.
    pub runs: Vec<Run>,
    /// The provider's change sequence read up to.
    pub provider_checkpoint: i64,
    /// Open mismatches, oldest first (at most [`LISTED_MAX`]).
    pub open: Vec<Open>,
    /// How many are open in all.
    pub open_count: u64,
    /// Payments whose facts changed and wait to be compared.
    pub pending: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub provider: String,
    pub provider_read: i64,
    pub checked: i64,
    pub opened: i64,
    pub resolved: i64,
    pub open: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Open {
    pub opened_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    #[serde(flatten)]
    pub mismatch: MismatchData,
}

/// The last `runs` runs and the open mismatches.
pub async fn report(db: &DatabaseConnection, runs: u64) -> Result<Report, DbErr> {
    let runs = run::Entity::find()
        .order_by_desc(run::Column::Id)
        .limit(runs)
        .all(db)
        .await?
        .into_iter()
        .map(|r| Run {
            started_at: r.started_at,
            finished_at: r.finished_at,
            provider: r.provider,
            provider_read: r.provider_read,
            checked: r.checked,
            opened: r.opened,
            resolved: r.resolved,
            open: r.open,
            error: r.error,
        })
        .collect();
    let open_rows = mismatch::Entity::find()
        .filter(mismatch::Column::ResolvedAt.is_null())
        .order_by_asc(mismatch::Column::OpenedAt)
        .order_by_asc(mismatch::Column::Key)
        .limit(LISTED_MAX)
        .all(db)
        .await?;
    let mut open = Vec::with_capacity(open_rows.len());
    for m in open_rows {
        let mismatch: MismatchData = serde_json::from_str(&m.data)
            .map_err(|e| DbErr::Custom(format!("mismatch {} {}: {e}", m.key, m.kind)))?;
        open.push(Open {
            opened_at: m.opened_at,
            last_seen_at: m.last_seen_at,
            mismatch,
        });
    }
    let open_count = mismatch::Entity::find()
        .filter(mismatch::Column::ResolvedAt.is_null())
        .count(db)
        .await?;
    Ok(Report {
        runs,
        provider_checkpoint: crate::run::checkpoint(db).await?,
        open,
        open_count,
        pending: crate::run::pending(db).await?,
    })
}
