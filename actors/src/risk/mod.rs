//! The risk actor: approves or rejects each requested payment by rules from
//! config (maximum amount per currency, velocity per source wallet over a
//! sliding window, blocked wallets) and stores every decision with its score
//! and reasons. A decision is keyed by payment id, so a redelivered request
//! gets no second decision; velocity counts approved decisions only.
//!
//! Shutdown and failure: as every actor, it stops between batches and is
//! restarted by its supervisor from the database.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use falcon_nats::{ConsumerSpec, Delivery};
use falcon_sagas::Actor;
use falcon_schemas::event::{PaymentData, RiskData};
use falcon_schemas::subject::STREAM_EVT;
use falcon_schemas::{Currency, EventData, EventType, Money, Reason};
use sea_orm::sea_query::{Expr, Func};
use sea_orm::{
    ColumnTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, FromQueryResult,
    QueryFilter, QuerySelect, Set, TryInsertResult,
};

use crate::batch::{consumer_spec, decode_event, Handler};
use crate::error::StepError;
use crate::settings::{ConsumerSettings, RiskSettings};
use crate::store::Outbox;

pub mod decision {
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
}

pub mod migration {
    use sea_orm_migration::prelude::*;

    pub struct Migrator;

    impl MigratorTrait for Migrator {
        fn migrations() -> Vec<Box<dyn MigrationTrait>> {
            vec![Box::new(Initial)]
        }
    }

    struct Initial;

    impl MigrationName for Initial {
        fn name(&self) -> &str {
            "m0001_risk_initial"
        }
    }

    #[async_trait::async_trait]
    impl MigrationTrait for Initial {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            crate::store::create_common_tables(manager).await?;
            crate::migration::create_entity_table(manager, super::decision::Entity).await
        }
    }
}

/// The rules, parsed and checked once at start.
#[derive(Debug, Clone)]
pub struct Rules {
    max_amount: BTreeMap<Currency, Money>,
    velocity_window: Duration,
    velocity_count_max: u64,
    velocity_sum_max: BTreeMap<Currency, Money>,
    blocked: HashSet<String>,
}

fn money_table(
    key: &str,
    table: &BTreeMap<String, String>,
) -> Result<BTreeMap<Currency, Money>, String> {
    table
        .iter()
        .map(|(code, amount)| {
            // Environment variables arrive lower-cased: codes are matched upper-case.
            let currency = Currency::from_code(&code.to_ascii_uppercase())
                .ok_or_else(|| format!("risk.{key}.{code}: unknown currency"))?;
            let money =
                Money::parse(amount, currency).map_err(|e| format!("risk.{key}.{code}: {e}"))?;
            Ok((currency, money))
        })
        .collect()
}

impl Rules {
    pub fn from_settings(s: &RiskSettings) -> Result<Rules, String> {
        Ok(Rules {
            max_amount: money_table("max_amount", &s.max_amount)?,
            velocity_window: Duration::from_secs(s.velocity_window_s),
            velocity_count_max: s.velocity_count_max,
            velocity_sum_max: money_table("velocity_sum_max", &s.velocity_sum_max)?,
            blocked: s.blocked_wallets.iter().cloned().collect(),
        })
    }
}

pub struct Risk {
    db: DatabaseConnection,
    rules: Rules,
}

impl Risk {
    pub fn new(db: DatabaseConnection, rules: Rules) -> Risk {
        Risk { db, rules }
    }
}

#[derive(Debug, FromQueryResult)]
struct Velocity {
    count: i64,
    sum: Option<i64>,
}

impl Handler for Risk {
    type Prepared = ();
    const ACTOR: Actor = Actor::Risk;
    const SOURCE: &'static str = "falcon/risk";

    fn consumers(s: &ConsumerSettings) -> Vec<ConsumerSpec> {
        vec![consumer_spec(
            "risk-evt",
            STREAM_EVT,
            vec![EventType::PaymentRequested.filter()],
            s,
        )]
    }

    fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    async fn prepare(&self, _batch: &[Delivery]) {}

    async fn apply(
        &self,
        txn: &DatabaseTransaction,
        delivery: &Delivery,
        _: &(),
        out: &mut Outbox,
    ) -> Result<(), StepError> {
        let event = decode_event(delivery)?;
        let EventData::PaymentRequested(p) = &event.data else {
            return Err(StepError::Poison(format!(
                "risk does not handle {}",
                event.ty
            )));
        };
        self.assess(txn, p, out).await
    }
}

impl Risk {
    async fn assess(
        &self,
        txn: &DatabaseTransaction,
        p: &PaymentData,
        out: &mut Outbox,
    ) -> Result<(), StepError> {
        let amount = p.money().map_err(|e| {
            StepError::Poison(format!(
                "payment {} has a malformed amount: {e}",
                p.payment_id
            ))
        })?;
        if decision::Entity::find_by_id(p.payment_id.clone())
            .one(txn)
            .await?
            .is_some()
        {
            return Ok(());
        }
        let mut reasons = Vec::new();
        if self.rules.blocked.contains(&p.from_wallet) || self.rules.blocked.contains(&p.to_wallet)
        {
            reasons.push(Reason::WalletBlocked);
        }
        if let Some(max) = self.rules.max_amount.get(&amount.currency()) {
            if amount.minor() > max.minor() {
                reasons.push(Reason::AmountLimitExceeded);
            }
        }
        let window =
            chrono::Duration::from_std(self.rules.velocity_window).unwrap_or(chrono::Duration::MAX);
        let since = out
            .now
            .checked_sub_signed(window)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        let velocity = decision::Entity::find()
            .select_only()
            .column_as(
                Expr::from(Func::count(Expr::col(decision::Column::PaymentId))),
                "count",
            )
            .column_as(
                // SUM of BIGINT is NUMERIC on PostgreSQL: cast back to BIGINT.
                Expr::from(Func::cast_as(
                    Func::sum(Expr::col(decision::Column::AmountMinor)),
                    "BIGINT",
                )),
                "sum",
            )
            .filter(decision::Column::FromWallet.eq(&p.from_wallet))
            .filter(decision::Column::Currency.eq(amount.currency().code()))
            .filter(decision::Column::Approved.eq(true))
            .filter(decision::Column::DecidedAt.gte(since))
            .into_model::<Velocity>()
            .one(txn)
            .await?
            .unwrap_or(Velocity {
                count: 0,
                sum: None,
            });
        let count_after = u64::try_from(velocity.count).unwrap_or(0).saturating_add(1);
        let sum_after = velocity.sum.unwrap_or(0).saturating_add(amount.minor());
        let sum_exceeded = self
            .rules
            .velocity_sum_max
            .get(&amount.currency())
            .is_some_and(|max| sum_after > max.minor());
        if count_after > self.rules.velocity_count_max || sum_exceeded {
            reasons.push(Reason::VelocityExceeded);
        }
        let score = score(&reasons);
        let approved = reasons.is_empty();
        let inserted = decision::Entity::insert(decision::ActiveModel {
            payment_id: Set(p.payment_id.clone()),
            from_wallet: Set(p.from_wallet.clone()),
            to_wallet: Set(p.to_wallet.clone()),
            amount_minor: Set(amount.minor()),
            currency: Set(amount.currency().code().to_owned()),
            approved: Set(approved),
            score: Set(i32::try_from(score).unwrap_or(100)),
            reasons: Set(serde_json::to_string(&reasons).expect("reasons serialize")),
            decided_at: Set(out.now),
        })
        .on_conflict_do_nothing_on([decision::Column::PaymentId])
        .exec(txn)
        .await?;
        if !matches!(inserted, TryInsertResult::Inserted(_)) {
            return Ok(());
        }
        let data = RiskData {
            payment: p.clone(),
            score,
            risk_reasons: reasons,
        };
        out.push(if approved {
            EventData::RiskApproved(data)
        } else {
            EventData::RiskRejected(data)
        });
        Ok(())
    }
}

/// 0 when no rule fired; each rule adds its weight, capped at 100.
fn score(reasons: &[Reason]) -> u32 {
    reasons
        .iter()
        .map(|r| match r {
            Reason::WalletBlocked => 100,
            Reason::AmountLimitExceeded => 60,
            Reason::VelocityExceeded => 50,
            _ => 20,
        })
        .sum::<u32>()
        .min(100)
}
