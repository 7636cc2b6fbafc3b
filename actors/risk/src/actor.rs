//! The risk actor as the runtime's registry lists it.

use falcon_kernel::settings::ConsumerSettings;
use falcon_kernel::Handler;
use falcon_nats::ConsumerSpec;
use falcon_sagas::Actor;
use sea_orm::DatabaseConnection;

use crate::handler::Risk;
use crate::rules::Rules;
use crate::settings::RiskSettings;

/// The risk actor as the runtime's registry lists it.
pub struct RiskActor;

impl falcon_kernel::ActorDef for RiskActor {
    type Settings = RiskSettings;
    const ACTOR: Actor = Actor::Risk;
    const DATABASE_KEY: &'static str = "risk.database_url";

    fn database_url(settings: &RiskSettings) -> &str {
        &settings.database_url
    }

    fn validate(settings: &RiskSettings) -> Result<(), String> {
        Rules::from_settings(settings).map(drop)
    }

    async fn migrate(db: &DatabaseConnection) -> Result<(), sea_orm::DbErr> {
        use sea_orm_migration::MigratorTrait;
        crate::migration::Migrator::up(db, None).await
    }

    fn consumers(consumer: &ConsumerSettings) -> Vec<ConsumerSpec> {
        Risk::consumers(consumer)
    }

    fn parts(
        settings: &RiskSettings,
        db: &DatabaseConnection,
        consumer: &ConsumerSettings,
    ) -> Result<falcon_kernel::actor::Parts, falcon_kernel::Error> {
        let rules = Rules::from_settings(settings).map_err(falcon_kernel::Error::Config)?;
        Ok(falcon_kernel::actor::Parts::loops(vec![
            falcon_kernel::actor::loop_of(Risk::new(db.clone(), rules), consumer),
        ]))
    }

    /// Risk moves no money: it has no invariant of its own beyond its
    /// outbox, which the runtime checks for every actor.
    async fn verify(
        _db: &DatabaseConnection,
        _settled: bool,
    ) -> Result<falcon_kernel::verify::Facts, sea_orm::DbErr> {
        Ok(falcon_kernel::verify::Facts::default())
    }
}
