//! # falcon-wallet: the wallet actor
//!
//! Wallets, deposits, a double-entry ledger, and holds (reserve → commit |
//! release) for the payment saga; refunds for the refund saga.
//!
//! Each step is decided once, by a pure function of the message and the
//! rows as read ([`decide`]); two paths read and write those rows. The
//! kernel's fast path takes a whole batch through the [`book`] (rows read
//! once, decided in memory, written with a few multi-row statements); if
//! that fails, its careful path runs each message through [`steps`] (rows
//! read and written one statement at a time, in a savepoint), which is the
//! reference. Only the writes differ, and a property test checks that both
//! leave the same rows and events.
//!
//! Correctness comes from the database, not from there being one consumer:
//! every business key (wallet id, deposit reference, payment id, refund id,
//! a currency's circulation) is a primary key claimed by insert, and every
//! changed row is written under a guard of the values its decision read,
//! so two processes sharing the consumers can neither overdraw a wallet
//! nor apply a step twice: the loser of a race retries and decides again.
//!
//! Nobody moves money they may not: a wallet belongs to the principal that
//! opened it (the last token of the `wallet.open` subject), and only that
//! principal's payments reserve from it and only its refunds pay back from
//! it (`not_wallet_owner` otherwise); only the treasury principal
//! (`wallet.treasury_principal`) deposits (`not_treasury`). Nothing an
//! event says is trusted where the wallet's records can check it: amounts
//! are validated as a command's are, a commit or release must match its
//! hold and a refund a committed transfer (poison, or a decline, with
//! `record_mismatch`), and a refund fits in what is left of its transfer
//! (`refund_exceeds_payment`). The database refuses, besides, any wallet
//! row with a negative held amount or available balance.
//!
//! Money is `i64` minor units, changed only with checked arithmetic. It
//! enters only through deposits, and a deposit that would take its
//! currency's money in circulation past `i64::MAX` is refused
//! (`wallet.rejected`, `amount_too_large`); since no balance is negative,
//! no balance or held amount can then overflow anywhere.
//!
//! Modules:
//! - [`actor`]: [`Wallet`], its `Handler` (consumers, routing of a batch to
//!   the book or of a message to the steps), and [`WalletActor`], its
//!   declaration for the runtime's registry;
//! - [`message`]: a delivery decoded into the step it asks for;
//! - [`decide`]: the decisions of open, deposit, reserve, commit, release
//!   and refund, and who may make them (its `Policy`);
//! - [`steps`]: the one-message path (the careful path's);
//! - [`book`]: the batch path (the fast path's);
//! - [`entity`]: the tables, [`HoldState`] and [`RefundState`];
//! - [`migration`]: the schema, the back-fills of the circulation, of who
//!   owns each wallet and of what each transfer refunded, and the
//!   database's checks of every wallet;
//! - [`balance`]: a wallet's balances for `falcon wallet balance`;
//! - [`settings`]: section `wallet` of `falcon.toml`;
//! - [`verify`]: what `falcon verify` checks of the wallet.
//!
//! Depends on the kernel, schemas, sagas and nats crates, never on another
//! actor.
//!
//! Shutdown: the consumer loop stops between batches; an unacked batch is
//! redelivered and finds its inbox rows. On failure (a broken money
//! invariant panics) the supervisor restarts the actor from the database.

pub mod actor;
pub mod balance;
mod book;
mod decide;
pub mod entity;
mod message;
pub mod migration;
pub mod settings;
mod steps;
pub mod verify;

#[cfg(test)]
mod tests;

pub use actor::{Wallet, WalletActor};
pub use balance::{balance, Balance};
pub use entity::{HoldState, RefundState};

/// The system account deposits are funded from; its balance is minus the
/// sum of all deposits.
pub const FUNDING_ACCOUNT: &str = "@funding";
