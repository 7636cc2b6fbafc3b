//! The wallet as the kernel runs it: [`Wallet`], its [`Handler`] (which
//! consumers it reads, and which path a batch takes), and [`WalletActor`],
//! its declaration for the runtime's registry.
//!
//! Every message becomes a [`Message`]; the fast path takes the whole batch
//! through the [`Book`], the careful path one message at a time through
//! [`steps`]. Both let [`decide`](crate::decide) decide.

use falcon_nats::{ConsumerSpec, Delivery};
use falcon_sagas::Actor;
use falcon_schemas::subject::{STREAM_CMD, STREAM_EVT};
use sea_orm::{DatabaseConnection, DatabaseTransaction};

use crate::book::Book;
use crate::decide::Policy;
use crate::message::Message;
use crate::{migration, settings, steps, verify};
use falcon_kernel::handler::{consumer_spec, events_for, Handler, Item};
use falcon_kernel::settings::ConsumerSettings;
use falcon_kernel::store::Outbox;
use falcon_kernel::StepError;

/// The wallet actor's behaviour, over its database, as its settings allow.
pub struct Wallet {
    db: DatabaseConnection,
    policy: Policy,
}

impl Wallet {
    pub fn new(db: DatabaseConnection, settings: &settings::WalletSettings) -> Wallet {
        Wallet {
            db,
            policy: Policy::of(settings),
        }
    }
}

/// The wallet actor as the runtime's registry lists it.
pub struct WalletActor;

impl falcon_kernel::ActorDef for WalletActor {
    type Settings = settings::WalletSettings;
    const ACTOR: Actor = Actor::Wallet;
    const DATABASE_KEY: &'static str = "wallet.database_url";

    fn database_url(settings: &settings::WalletSettings) -> &str {
        &settings.database_url
    }

    fn validate(settings: &settings::WalletSettings) -> Result<(), String> {
        settings.validate()
    }

    async fn migrate(db: &DatabaseConnection) -> Result<(), sea_orm::DbErr> {
        use sea_orm_migration::MigratorTrait;
        migration::Migrator::up(db, None).await
    }

    fn consumers(consumer: &ConsumerSettings) -> Vec<ConsumerSpec> {
        Wallet::consumers(consumer)
    }

    fn parts(
        settings: &settings::WalletSettings,
        db: &DatabaseConnection,
        consumer: &ConsumerSettings,
    ) -> Result<falcon_kernel::actor::Parts, falcon_kernel::Error> {
        Ok(falcon_kernel::actor::Parts::loops(vec![
            falcon_kernel::actor::loop_of(Wallet::new(db.clone(), settings), consumer),
        ]))
    }

    async fn verify(
        db: &DatabaseConnection,
        _settled: bool,
    ) -> Result<falcon_kernel::verify::Facts, sea_orm::DbErr> {
        verify::check(db).await
    }
}

impl Handler for Wallet {
    type Prepared = ();
    const ACTOR: Actor = Actor::Wallet;
    const SOURCE: &'static str = "falcon/wallet";
    const LABEL: &'static str = "wallet";

    fn consumers(s: &ConsumerSettings) -> Vec<ConsumerSpec> {
        let events = events_for(Actor::Wallet);
        vec![
            consumer_spec(
                "wallet-cmd",
                STREAM_CMD,
                vec!["falcon.cmd.wallet.>".into()],
                s,
            ),
            consumer_spec(
                "wallet-evt",
                STREAM_EVT,
                events.iter().map(|e| e.filter()).collect(),
                s,
            ),
        ]
    }

    fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    async fn prepare(&self, _batch: &[Delivery]) {}

    async fn apply(
        &self,
        txn: &DatabaseTransaction,
        delivery: &Delivery,
        _prepared: &(),
        out: &mut Outbox,
    ) -> Result<(), StepError> {
        steps::apply(txn, &Message::decode(delivery)?, &self.policy, out).await
    }

    /// The careful path locks every wallet (and circulation row) the
    /// batch's decodable messages touch, in key order, as the fast path's
    /// read does ([`Book::read`]).
    async fn lock(&self, txn: &DatabaseTransaction, batch: &[Delivery]) -> Result<(), StepError> {
        let messages: Vec<Message> = batch
            .iter()
            .filter_map(|d| Message::decode(d).ok())
            .collect();
        Book::read(txn, &messages).await.map(|_| ())
    }

    /// Every batch runs set-based over the rows it touches ([`Book`]); a
    /// message that cannot be decoded or fails its step sends the batch to
    /// the careful path, where it fails alone.
    async fn apply_batch(
        &self,
        txn: &DatabaseTransaction,
        items: &mut [Item<'_>],
        _prepared: &(),
    ) -> Result<(), StepError> {
        let messages = items
            .iter()
            .map(|item| Message::decode(item.delivery))
            .collect::<Result<Vec<_>, _>>()?;
        let mut book = Book::read(txn, &messages).await?;
        for (item, message) in items.iter_mut().zip(&messages) {
            let span = item.span.clone();
            span.in_scope(|| book.apply(message, &self.policy, &mut item.out))?;
        }
        book.write(txn).await
    }
}
