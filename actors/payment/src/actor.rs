//! The payment actor as the runtime's registry lists it: its settings, its
//! database and migrations, its two loops (the saga steps and the saga
//! view), its deadline sweeper, its gauges and its checks.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use falcon_kernel::actor::{loop_of, Gauges, Parts, Timer};
use falcon_kernel::settings::ConsumerSettings;
use falcon_kernel::supervisor::ChildSpec;
use falcon_kernel::telemetry::names;
use falcon_kernel::verify::Facts;
use falcon_kernel::{ActorDef, Error, Handler};
use falcon_nats::ConsumerSpec;
use falcon_sagas::{Actor, State};
use sea_orm::{DatabaseConnection, DbErr, EntityTrait};

use crate::entity::{payment, refund};
use crate::provider::{HttpProvider, Resilient, SettlementProvider, Simulator};
use crate::settings::PaymentConfig;
use crate::view::SagaView;
use crate::{deadline, view, Payment, RefundState};

/// The payment actor.
pub struct PaymentActor;

impl ActorDef for PaymentActor {
    type Settings = PaymentConfig;
    const ACTOR: Actor = Actor::Payment;
    const DATABASE_KEY: &'static str = "payment.database_url";

    fn database_url(settings: &PaymentConfig) -> &str {
        &settings.payment.database_url
    }

    fn validate(settings: &PaymentConfig) -> Result<(), String> {
        settings.validate()
    }

    async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
        use sea_orm_migration::MigratorTrait;
        crate::migration::Migrator::up(db, None).await
    }

    fn consumers(consumer: &ConsumerSettings) -> Vec<ConsumerSpec> {
        let mut specs = Payment::consumers(consumer);
        specs.extend(SagaView::consumers(consumer));
        specs
    }

    fn parts(
        settings: &PaymentConfig,
        db: &DatabaseConnection,
        consumer: &ConsumerSettings,
    ) -> Result<Parts, Error> {
        let handler = handler(settings, db.clone())?;
        let gauges = Arc::new(PaymentGauges {
            provider: handler.provider().clone(),
            db: db.clone(),
            stuck_after: Duration::from_secs(settings.saga.stuck_after_s),
        });
        let (db, saga) = (db.clone(), settings.saga.clone());
        let provider = handler.provider().clone();
        let sweeper: Timer = Box::new(move |instance, poke| {
            let (db, saga, provider) = (db.clone(), saga.clone(), provider.clone());
            ChildSpec::new(
                format!("{instance}/payment-deadlines"),
                || deadline::Sweeper,
                move || deadline::SweeperArgs {
                    db: db.clone(),
                    interval: Duration::from_millis(saga.sweep_interval_ms),
                    batch_max: saga.sweep_batch_max,
                    poke: poke.clone(),
                    provider: provider.clone(),
                    doubt: Duration::from_secs(saga.capture_doubt_s),
                },
            )
        });
        let view = SagaView::new(handler.db().clone());
        Ok(Parts {
            loops: vec![loop_of(handler, consumer), loop_of(view, consumer)],
            timers: vec![sweeper],
            gauges: Some(gauges),
        })
    }

    const KEEPS_SAGAS: bool = true;
    const READ_MODELS: &'static [&'static str] = &[view::READ_MODEL];

    async fn saga_state(db: &DatabaseConnection, saga_id: &str) -> Result<Option<State>, DbErr> {
        match payment::Entity::find_by_id(saga_id.to_owned())
            .one(db)
            .await?
        {
            Some(p) => Ok(p.saga_state()),
            None => Ok(refund::Entity::find_by_id(saga_id.to_owned())
                .one(db)
                .await?
                .and_then(|r| r.refund_state())
                .map(RefundState::saga_state)),
        }
    }

    async fn verify(db: &DatabaseConnection, settled: bool) -> Result<Facts, DbErr> {
        crate::verify::check(db, settled).await
    }
}

/// The payment actor's steps: the provider (at `provider.url`, or the
/// simulator) behind retry and a circuit breaker, the saga deadline from
/// config.
pub fn handler(settings: &PaymentConfig, db: DatabaseConnection) -> Result<Payment, Error> {
    let p = &settings.provider;
    let port: Arc<dyn SettlementProvider> = if p.url.is_empty() {
        Arc::new(Simulator::new(p))
    } else {
        let key = p.api_key().map_err(Error::Config)?;
        Arc::new(
            HttpProvider::new(&p.url, key, Duration::from_millis(p.timeout_ms))
                .map_err(Error::Config)?,
        )
    };
    let provider = Arc::new(Resilient::new(port, p));
    Ok(Payment::new(
        db,
        provider,
        Duration::from_secs(settings.saga.deadline_s),
    ))
}

/// The breaker's state and the sagas stuck past `saga.stuck_after_s`.
struct PaymentGauges {
    provider: Arc<Resilient>,
    db: DatabaseConnection,
    stuck_after: Duration,
}

impl Gauges for PaymentGauges {
    fn sample(&self) -> falcon_kernel::actor::BoxFuture<'_, ()> {
        Box::pin(async move {
            metrics::gauge!(names::BREAKER_STATE).set(self.provider.breaker.state().gauge_value());
            let before = Utc::now()
                - chrono::Duration::from_std(self.stuck_after).unwrap_or(chrono::Duration::MAX);
            match view::stuck_count(&self.db, before).await {
                Ok(n) => metrics::gauge!(names::SAGAS_STUCK).set(n as f64),
                Err(e) => tracing::debug!(error = %e, "sampling stuck sagas"),
            }
        })
    }
}
