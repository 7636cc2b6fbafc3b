//! The risk actor's table: one decision per payment.

use sea_orm::entity::prelude::*;

/// One decision per payment.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "decisions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub payment_id: String,
    #[sea_orm(indexed)]
    pub from_wallet: String,
    pub to_wallet: String,
    pub amount_minor: i64,
    pub currency: String,
    pub approved: bool,
    /// 0–100, higher is riskier.
    pub score: i32,
    /// The rules that fired, as a JSON array of reason strings.
    pub reasons: String,
    #[sea_orm(indexed)]
    pub decided_at: ChronoDateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
