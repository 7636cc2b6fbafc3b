//! The risk actor's steps: each requested payment decided by the rules,
//! in order within a batch (each sees the velocity the ones before it
//! approved), with one read of the batch's decisions, one of its wallets'
//! velocity and one multi-row insert.

use std::collections::{HashMap, HashSet};

use falcon_kernel::handler::{consumer_spec, decode_event, events_for, Handler, Item};
use falcon_kernel::settings::ConsumerSettings;
use falcon_kernel::store::Outbox;
use falcon_kernel::StepError;
use falcon_nats::{ConsumerSpec, Delivery};
use falcon_sagas::Actor;
use falcon_schemas::event::{PaymentData, RiskData};
use falcon_schemas::subject::STREAM_EVT;
use falcon_schemas::{EventData, Money, Reason};
use sea_orm::sea_query::{Expr, Func};
use sea_orm::{
    ColumnTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, FromQueryResult,
    QueryFilter, QuerySelect, Set,
};

use crate::entity as decision;
use crate::rules::{score, Rules};

pub struct Risk {
    db: DatabaseConnection,
    rules: Rules,
}

impl Risk {
    pub fn new(db: DatabaseConnection, rules: Rules) -> Risk {
        Risk { db, rules }
    }
}

/// Approved decisions of one source wallet in one currency inside the
/// velocity window.
#[derive(Debug, FromQueryResult)]
struct Velocity {
    from_wallet: String,
    currency: String,
    count: i64,
    sum: Option<i64>,
}

impl Handler for Risk {
    type Prepared = ();
    const ACTOR: Actor = Actor::Risk;
    const SOURCE: &'static str = "falcon/risk";
    const LABEL: &'static str = "risk";

    fn consumers(s: &ConsumerSettings) -> Vec<ConsumerSpec> {
        vec![consumer_spec(
            "risk-evt",
            STREAM_EVT,
            events_for(Actor::Risk).iter().map(|e| e.filter()).collect(),
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
        let request = requested(delivery)?;
        self.assess(txn, vec![(request, out)]).await
    }

    /// The whole batch with one read of its decisions, one of its wallets'
    /// velocity and one multi-row insert.
    async fn apply_batch(
        &self,
        txn: &DatabaseTransaction,
        items: &mut [Item<'_>],
        _: &(),
    ) -> Result<(), StepError> {
        let mut requests = Vec::with_capacity(items.len());
        for item in items.iter_mut() {
            requests.push((requested(item.delivery)?, &mut item.out));
        }
        self.assess(txn, requests).await
    }
}

/// A payment request with its amount, as the risk actor reads it.
struct Request {
    payment: PaymentData,
    amount: Money,
}

fn requested(delivery: &Delivery) -> Result<Request, StepError> {
    let event = decode_event(Actor::Risk, delivery)?;
    let EventData::PaymentRequested(payment) = event.data else {
        return Err(StepError::Poison(format!(
            "risk does not handle {}",
            event.ty
        )));
    };
    // Validated as a command's amount is: a payment of nothing, of less
    // than nothing or finer than its currency is no payment to decide.
    let amount = falcon_kernel::handler::payment_amount(&payment)?;
    Ok(Request { payment, amount })
}

impl Risk {
    /// Decides each request in order, each seeing the velocity the ones
    /// before it approved; a payment decided already gets no second
    /// decision. A decision another process inserted meanwhile is a
    /// transient error (the retry finds it).
    async fn assess(
        &self,
        txn: &DatabaseTransaction,
        requests: Vec<(Request, &mut Outbox)>,
    ) -> Result<(), StepError> {
        let Some(now) = requests.first().map(|(_, out)| out.now) else {
            return Ok(());
        };
        let mut decided: HashSet<String> =
            falcon_kernel::store::rows_by_key::<decision::Entity, _>(
                txn,
                decision::Column::PaymentId,
                requests.iter().map(|(r, _)| r.payment.payment_id.as_str()),
                |d| d.payment_id.clone(),
            )
            .await?
            .into_keys()
            .collect();
        let mut velocity = self
            .velocity(
                txn,
                requests.iter().map(|(r, _)| r.payment.from_wallet.as_str()),
                now,
            )
            .await?;
        let mut rows = Vec::new();
        for (Request { payment: p, amount }, out) in requests {
            if !decided.insert(p.payment_id.clone()) {
                continue;
            }
            let mut reasons = Vec::new();
            if self.rules.blocked.contains(&p.from_wallet)
                || self.rules.blocked.contains(&p.to_wallet)
            {
                reasons.push(Reason::WalletBlocked);
            }
            if let Some(max) = self.rules.max_amount.get(&amount.currency()) {
                if amount.minor() > max.minor() {
                    reasons.push(Reason::AmountLimitExceeded);
                }
            }
            let key = (p.from_wallet.clone(), amount.currency().code().to_owned());
            let (count, sum) = velocity.get(&key).copied().unwrap_or((0, 0));
            let count_after = count.saturating_add(1);
            let sum_after = sum.saturating_add(amount.minor());
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
            if approved {
                velocity.insert(key, (count_after, sum_after));
            }
            rows.push(decision::ActiveModel {
                payment_id: Set(p.payment_id.clone()),
                from_wallet: Set(p.from_wallet.clone()),
                to_wallet: Set(p.to_wallet.clone()),
                amount_minor: Set(amount.minor()),
                currency: Set(amount.currency().code().to_owned()),
                approved: Set(approved),
                score: Set(i32::try_from(score).unwrap_or(100)),
                reasons: Set(serde_json::to_string(&reasons).expect("reasons serialize")),
                decided_at: Set(out.now),
            });
            let data = RiskData {
                payment: p,
                score,
                risk_reasons: reasons,
            };
            out.push(if approved {
                EventData::RiskApproved(data)
            } else {
                EventData::RiskRejected(data)
            });
        }
        falcon_kernel::store::insert_all_new(
            txn,
            rows,
            decision::Column::PaymentId,
            "risk decisions",
        )
        .await
    }

    /// Approved decisions per (source wallet, currency) inside the window
    /// that ends at `now`: count and sum of minor units.
    async fn velocity<'w>(
        &self,
        txn: &DatabaseTransaction,
        wallets: impl Iterator<Item = &'w str>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<HashMap<(String, String), (u64, i64)>, StepError> {
        let window =
            chrono::Duration::from_std(self.rules.velocity_window).unwrap_or(chrono::Duration::MAX);
        let since = now
            .checked_sub_signed(window)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        let mut wallets: Vec<&str> = wallets.collect();
        wallets.sort_unstable();
        wallets.dedup();
        let mut velocity = HashMap::with_capacity(wallets.len());
        for chunk in falcon_kernel::store::padded_chunks(&wallets) {
            let rows = decision::Entity::find()
                .select_only()
                .column(decision::Column::FromWallet)
                .column(decision::Column::Currency)
                .column_as(
                    // A column of the velocity index (never NULL), so
                    // the read needs nothing but the index.
                    Expr::from(Func::count(Expr::col(decision::Column::AmountMinor))),
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
                .filter(decision::Column::FromWallet.is_in(chunk))
                .filter(decision::Column::Approved.eq(true))
                .filter(decision::Column::DecidedAt.gte(since))
                .group_by(decision::Column::FromWallet)
                .group_by(decision::Column::Currency)
                .into_model::<Velocity>()
                .all(txn)
                .await?;
            velocity.extend(rows.into_iter().map(|v| {
                (
                    (v.from_wallet, v.currency),
                    (u64::try_from(v.count).unwrap_or(0), v.sum.unwrap_or(0)),
                )
            }));
        }
        Ok(velocity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::RiskSettings;
    use falcon_nats::dlq::Origin;
    use falcon_schemas::Currency;
    use falcon_schemas::EventType;
    use rust_decimal::Decimal;
    use sea_orm::TransactionTrait;

    fn request(payment_id: &str, from: &str, amount: &str) -> (Request, Delivery) {
        let currency = Currency::from_code("USD").expect("USD");
        let money = Money::parse(amount, currency).expect("an amount");
        let payment = PaymentData {
            payment_id: payment_id.into(),
            from_wallet: from.into(),
            to_wallet: "payee".into(),
            amount: money.wire_amount(),
            currency,
            principal: Some(format!("{from}-principal")),
        };
        let origin = Origin {
            subject: format!("falcon.evt.payment.requested.{payment_id}"),
            stream: STREAM_EVT.into(),
            stream_seq: 1,
            consumer: "risk-evt".into(),
            delivered: 1,
            msg_id: Some(format!("evt-{payment_id}")),
            traceparent: None,
        };
        let delivery = Delivery::detached(&origin, bytes::Bytes::new());
        (
            Request {
                payment,
                amount: money,
            },
            delivery,
        )
    }

    /// One batch: each request sees the velocity the ones before it
    /// approved, a payment decided earlier or twice in the batch gets no
    /// second decision, and the decisions are stored.
    #[tokio::test]
    async fn a_batch_decides_in_order_with_its_own_velocity() {
        let db = falcon_kernel::store::memory_db(decision::Entity).await;
        let settings = RiskSettings {
            velocity_count_max: 2,
            ..RiskSettings::default()
        };
        let risk = Risk::new(db.clone(), Rules::from_settings(&settings).expect("rules"));
        let now = chrono::Utc::now();
        let run = |ids: &[(&str, &str)]| {
            ids.iter()
                .map(|(id, from)| request(id, from, "1.00"))
                .collect::<Vec<_>>()
        };
        // p0 is decided in an earlier batch.
        let first = run(&[("p0", "alice")]);
        let txn = db.begin().await.expect("txn");
        let (r, d) = first.into_iter().next().expect("one");
        let mut out = Outbox::new("test", &d, now, falcon_nats::trace::TraceParent::new_root());
        risk.assess(&txn, vec![(r, &mut out)])
            .await
            .expect("decided");
        txn.commit().await.expect("commit");
        assert_eq!(out.events.len(), 1);

        let batch = run(&[
            ("p0", "alice"),
            ("p1", "alice"),
            ("p2", "bob"),
            ("p1", "alice"),
            ("p3", "alice"),
        ]);
        let requested: Vec<PaymentData> = batch.iter().map(|(r, _)| r.payment.clone()).collect();
        let mut outs: Vec<Outbox> = batch
            .iter()
            .map(|(_, d)| Outbox::new("test", d, now, falcon_nats::trace::TraceParent::new_root()))
            .collect();
        let requests = batch
            .into_iter()
            .map(|(r, _)| r)
            .zip(outs.iter_mut())
            .collect();
        let txn = db.begin().await.expect("txn");
        risk.assess(&txn, requests).await.expect("decided");
        txn.commit().await.expect("commit");
        let types: Vec<Vec<EventType>> = outs
            .iter()
            .map(|o| o.events.iter().map(|e| e.event_type()).collect())
            .collect();
        assert_eq!(
            types,
            vec![
                vec![],                        // p0: decided before
                vec![EventType::RiskApproved], // alice's second
                vec![EventType::RiskApproved], // bob's first
                vec![],                        // p1 again
                vec![EventType::RiskRejected], // alice's third: over the count
            ]
        );
        let stored = decision::Entity::find().all(&db).await.expect("rows");
        assert_eq!(stored.len(), 4);
        assert!(stored.iter().any(|d| d.payment_id == "p3" && !d.approved));

        // Each decision carries its payment as requested, the principal
        // that created it included: the wallet decides by it who may pay.
        let mut carried = 0;
        for (out, p) in outs.iter().zip(&requested) {
            for e in &out.events {
                let (EventData::RiskApproved(d) | EventData::RiskRejected(d)) = &e.data else {
                    panic!("not a decision: {:?}", e.data);
                };
                assert_eq!(&d.payment, p);
                assert!(d
                    .payment
                    .principal
                    .as_deref()
                    .is_some_and(|x| x.ends_with("-principal")));
                carried += 1;
            }
        }
        assert_eq!(carried, 3);
    }

    /// A requested payment whose amount is not a positive amount of its
    /// currency is poison: no decision, nothing for the wallet to reserve.
    #[test]
    fn an_amount_not_positive_is_poison() {
        use falcon_schemas::Event;
        for amount in [Decimal::new(-700, 2), Decimal::ZERO, Decimal::new(1, 3)] {
            let (mut r, _) = request("p1", "alice", "1.00");
            r.payment.amount = amount;
            let event = Event::new(
                EventData::PaymentRequested(r.payment),
                "e1".into(),
                chrono::Utc::now(),
                "falcon/payment",
                "cause",
                None,
            );
            let origin = Origin {
                subject: event.nats_subject(),
                stream: STREAM_EVT.into(),
                stream_seq: 1,
                consumer: "risk-evt".into(),
                delivered: 1,
                msg_id: Some("e1".into()),
                traceparent: None,
            };
            let delivery = Delivery::detached(&origin, bytes::Bytes::from(event.encode()));
            match requested(&delivery) {
                Err(StepError::Poison(m)) => {
                    assert!(m.starts_with("invalid amount in event: payment p1"), "{m}")
                }
                Err(other) => panic!("{amount}: {other}"),
                Ok(_) => panic!("{amount}: accepted"),
            }
        }
    }
}
