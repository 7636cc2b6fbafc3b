//! The one list of actors FalconPay runs ([`REGISTRY`]).
//!
//! Each actor crate declares itself once, as a [`falcon_kernel::ActorDef`]:
//! its name, its database setting, its migrations, its consumers, how its
//! handlers are built and what `falcon verify` checks of it. A line here
//! adds it to every verb that must know the actors: `falcon run`,
//! `streams apply`, `dlq replay`, `replay`, `verify`, `doctor` and the
//! metrics iterate this list and name no actor themselves.

use falcon_kernel::actor::{BoxFuture, Parts};
use falcon_kernel::settings::ConsumerSettings;
use falcon_kernel::verify::Facts;
use falcon_kernel::{ActorDef, Error};
use falcon_nats::ConsumerSpec;
use falcon_payment::settings::PaymentConfig;
use falcon_payment::PaymentActor;
use falcon_recon::settings::ReconConfig;
use falcon_recon::ReconActor;
use falcon_risk::RiskActor;
use falcon_sagas::{Actor, State};
use falcon_wallet::WalletActor;
use sea_orm::{DatabaseConnection, DbErr};

use crate::settings::Settings;

/// Every actor, in the order `falcon run` starts them; each line is an
/// actor crate's declaration and where its settings are in [`Settings`].
pub static REGISTRY: [&dyn Registered; 4] = [
    &Entry::<PaymentActor>::new(|s| PaymentConfig {
        payment: s.payment.clone(),
        provider: s.provider.clone(),
        saga: s.saga.clone(),
    }),
    &Entry::<RiskActor>::new(|s| s.risk.clone()),
    &Entry::<WalletActor>::new(|s| s.wallet.clone()),
    &Entry::<ReconActor>::new(|s| ReconConfig {
        recon: s.recon.clone(),
        provider_url: s.provider.url.clone(),
        provider_api_key_file: s.provider.api_key_file.clone(),
        provider_timeout_ms: s.provider.timeout_ms,
    }),
];

/// Checks every setting: the runtime's own sections, then each registered
/// actor's database URL and sections; the error names the key.
pub fn validate(settings: &Settings) -> Result<(), String> {
    settings.validate()?;
    for actor in REGISTRY {
        let url = actor.database_url(settings);
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(format!(
                "{}: {:?} is neither sqlite:… nor postgres://…",
                actor.database_key(),
                crate::settings::mask_url(&url)
            ));
        }
        actor.validate(settings)?;
    }
    Ok(())
}

/// The registered actor named `actor`.
pub fn find(actor: Actor) -> Option<&'static dyn Registered> {
    REGISTRY.iter().copied().find(|r| r.actor() == actor)
}

/// The registered actor named `name`, or an error listing the names.
pub fn by_name(name: &str) -> Result<&'static dyn Registered, Error> {
    REGISTRY
        .iter()
        .copied()
        .find(|r| r.actor().as_str() == name)
        .ok_or_else(|| Error::Config(format!("unknown actor {name:?} ({})", names().join(", "))))
}

/// Every registered actor's read models.
pub fn read_models() -> Vec<&'static str> {
    REGISTRY
        .iter()
        .flat_map(|r| r.read_models().iter().copied())
        .collect()
}

/// The registered actors' names.
pub fn names() -> Vec<&'static str> {
    REGISTRY.iter().map(|r| r.actor().as_str()).collect()
}

/// An actor of the registry, with its settings found in [`Settings`].
pub trait Registered: Send + Sync {
    fn actor(&self) -> Actor;
    /// The configuration key of its database URL.
    fn database_key(&self) -> &'static str;
    fn database_url(&self, settings: &Settings) -> String;
    fn validate(&self, settings: &Settings) -> Result<(), String>;
    fn migrate<'a>(&self, db: &'a DatabaseConnection) -> BoxFuture<'a, Result<(), DbErr>>;
    fn consumers(&self, consumer: &ConsumerSettings) -> Vec<ConsumerSpec>;
    fn parts(&self, settings: &Settings, db: &DatabaseConnection) -> Result<Parts, Error>;
    fn verify<'a>(
        &self,
        db: &'a DatabaseConnection,
        settled: bool,
    ) -> BoxFuture<'a, Result<Facts, DbErr>>;
    fn keeps_sagas(&self) -> bool;
    fn read_models(&self) -> &'static [&'static str];
    fn saga_state<'a>(
        &self,
        db: &'a DatabaseConnection,
        saga_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<State>, DbErr>>;
}

/// One line of the registry: an [`ActorDef`] and how its settings are read
/// from [`Settings`].
pub struct Entry<A: ActorDef> {
    settings: fn(&Settings) -> A::Settings,
}

impl<A: ActorDef> Entry<A> {
    pub const fn new(settings: fn(&Settings) -> A::Settings) -> Entry<A> {
        Entry { settings }
    }
}

impl<A: ActorDef> Registered for Entry<A> {
    fn actor(&self) -> Actor {
        A::ACTOR
    }

    fn database_key(&self) -> &'static str {
        A::DATABASE_KEY
    }

    fn database_url(&self, settings: &Settings) -> String {
        A::database_url(&(self.settings)(settings)).to_owned()
    }

    fn validate(&self, settings: &Settings) -> Result<(), String> {
        A::validate(&(self.settings)(settings))
    }

    fn migrate<'a>(&self, db: &'a DatabaseConnection) -> BoxFuture<'a, Result<(), DbErr>> {
        Box::pin(A::migrate(db))
    }

    fn consumers(&self, consumer: &ConsumerSettings) -> Vec<ConsumerSpec> {
        falcon_nats::topology::partitioned(&A::consumers(consumer), consumer.partitions)
    }

    fn parts(&self, settings: &Settings, db: &DatabaseConnection) -> Result<Parts, Error> {
        let parts = A::parts(&(self.settings)(settings), db, &settings.consumer)?;
        let mut declared: Vec<String> = self
            .consumers(&settings.consumer)
            .into_iter()
            .map(|c| c.name)
            .collect();
        let mut run: Vec<String> = parts
            .loops
            .iter()
            .flat_map(|l| l.consumers().iter().map(|c| c.name.clone()))
            .collect();
        declared.sort();
        run.sort();
        assert_eq!(
            declared,
            run,
            "{}: the consumers its loops read are the ones it declares",
            A::ACTOR
        );
        Ok(parts)
    }

    fn verify<'a>(
        &self,
        db: &'a DatabaseConnection,
        settled: bool,
    ) -> BoxFuture<'a, Result<Facts, DbErr>> {
        Box::pin(A::verify(db, settled))
    }

    fn keeps_sagas(&self) -> bool {
        A::KEEPS_SAGAS
    }

    fn read_models(&self) -> &'static [&'static str] {
        A::READ_MODELS
    }

    fn saga_state<'a>(
        &self,
        db: &'a DatabaseConnection,
        saga_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<State>, DbErr>> {
        Box::pin(A::saga_state(db, saga_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The registry names each actor of the saga table once.
    #[test]
    fn every_actor_is_registered_once() {
        let mut actors: Vec<Actor> = REGISTRY.iter().map(|r| r.actor()).collect();
        actors.sort();
        assert_eq!(actors, Actor::ALL.to_vec());
    }
}
