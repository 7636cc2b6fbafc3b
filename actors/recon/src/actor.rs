//! The reconciliation actor as the runtime's registry lists it: its event
//! loop and its reconciler, a timer that runs [`crate::run::reconcile`]
//! every `recon.interval_s`.

use std::time::Duration;

use chrono::Utc;
use falcon_kernel::actor::{loop_of, Parts, Timer};
use falcon_kernel::relay::Poke;
use falcon_kernel::settings::ConsumerSettings;
use falcon_kernel::supervisor::ChildSpec;
use falcon_kernel::verify::Facts;
use falcon_kernel::{ActorDef, Error, Handler};
use falcon_nats::ConsumerSpec;
use falcon_sagas::Actor;
use ractor::{ActorProcessingErr, ActorRef};
use sea_orm::{DatabaseConnection, DbErr};

use crate::handler::Recon;
use crate::provider::Client;
use crate::settings::{ReconConfig, ReconSettings};

/// The reconciliation actor.
pub struct ReconActor;

impl ActorDef for ReconActor {
    type Settings = ReconConfig;
    const ACTOR: Actor = Actor::Recon;
    const DATABASE_KEY: &'static str = "recon.database_url";

    fn database_url(settings: &ReconConfig) -> &str {
        &settings.recon.database_url
    }

    fn validate(settings: &ReconConfig) -> Result<(), String> {
        settings.validate()
    }

    async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
        use sea_orm_migration::MigratorTrait;
        crate::migration::Migrator::up(db, None).await
    }

    fn consumers(consumer: &ConsumerSettings) -> Vec<ConsumerSpec> {
        Recon::consumers(consumer)
    }

    fn parts(
        settings: &ReconConfig,
        db: &DatabaseConnection,
        consumer: &ConsumerSettings,
    ) -> Result<Parts, Error> {
        let client = client(settings).map_err(Error::Config)?;
        let (db2, recon) = (db.clone(), settings.recon.clone());
        let reconciler: Timer = Box::new(move |instance, poke| {
            let (db, recon, client) = (db2.clone(), recon.clone(), client.clone());
            let holder = format!("{instance}/{}", std::process::id());
            ChildSpec::new(
                format!("{instance}/recon"),
                || Reconciler,
                move || ReconcilerArgs {
                    db: db.clone(),
                    settings: recon.clone(),
                    client: client.clone(),
                    holder: holder.clone(),
                    poke: poke.clone(),
                },
            )
        });
        Ok(Parts {
            loops: vec![loop_of(Recon::new(db.clone()), consumer)],
            timers: vec![reconciler],
            gauges: None,
        })
    }

    /// Its facts are copies; the money is checked where it lives.
    async fn verify(_db: &DatabaseConnection, _settled: bool) -> Result<Facts, DbErr> {
        Ok(Facts::default())
    }
}

/// The provider's client, or `None` for the built-in simulator.
pub fn client(settings: &ReconConfig) -> Result<Option<Client>, String> {
    if settings.provider_url.is_empty() {
        return Ok(None);
    }
    let key = falcon_kernel::endpoint::api_key_file(
        "provider.api_key_file",
        &settings.provider_api_key_file,
    )?;
    Client::new(
        &settings.provider_url,
        key,
        Duration::from_millis(settings.provider_timeout_ms),
    )
    .map(Some)
}

/// The reconciler: a round every `recon.interval_s`.
pub struct Reconciler;

pub struct ReconcilerArgs {
    pub db: DatabaseConnection,
    pub settings: ReconSettings,
    pub client: Option<Client>,
    /// Who holds the lease while this one reconciles.
    pub holder: String,
    pub poke: Poke,
}

pub enum ReconcilerMsg {
    Run,
}

impl ractor::Actor for Reconciler {
    type Msg = ReconcilerMsg;
    type State = ReconcilerArgs;
    type Arguments = ReconcilerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ReconcilerMsg>,
        args: ReconcilerArgs,
    ) -> Result<ReconcilerArgs, ActorProcessingErr> {
        // The last run on record, so that a process whose runs all fail
        // shows the age of the last good one (alert FalconReconStale), not
        // nothing.
        match crate::run::last_finished(&args.db).await {
            Ok(Some(at)) => metrics::gauge!(falcon_kernel::telemetry::names::RECON_LAST_RUN)
                .set(at.timestamp() as f64),
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "reading the last reconciliation run"),
        }
        myself.send_interval(Duration::from_secs(args.settings.interval_s), || {
            ReconcilerMsg::Run
        });
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<ReconcilerMsg>,
        _msg: ReconcilerMsg,
        s: &mut ReconcilerArgs,
    ) -> Result<(), ActorProcessingErr> {
        match crate::run::reconcile(&s.db, s.client.as_ref(), &s.settings, &s.holder, Utc::now())
            .await
        {
            Ok(Some(o)) => {
                if o.opened > 0 {
                    s.poke.poke();
                }
                tracing::info!(
                    provider = o.provider,
                    provider_read = o.provider_read,
                    checked = o.checked,
                    opened = o.opened,
                    resolved = o.resolved,
                    open = o.open,
                    "reconciliation run"
                );
            }
            Ok(None) => tracing::debug!("another process reconciles"),
            Err(e) => tracing::warn!(error = %e, "reconciliation run failed; the next one retries"),
        }
        Ok(())
    }
}
