//! # falcon-recon: the reconciliation actor
//!
//! Checks, all the time, that money agrees between three sources for every
//! payment: the wallet ledger (what `wallet.transfer_committed` and
//! `wallet.refund_committed` say it moved), the payments' states
//! (`payment.completed`, `payment.failed`, `payment.refunded`) and the
//! provider's settlements (its list of charges, `GET /v1/charges?after=`).
//!
//! It keeps its own database: one row of facts per payment, folded from
//! those events by its consumer loop and from the provider's list by its
//! reconciler, each row marked when a fact changes. Every
//! `recon.interval_s` the reconciler reads the provider's list on from its
//! checkpoint, then compares the marked rows whose facts have been quiet
//! for `recon.settle_s`, a page at a time: nothing is compared twice
//! unless it changed, and no table is read whole. Every disagreement
//! found is recorded once, published as `falcon.evt.recon.mismatch.<key>`
//! and counted; one that no longer holds is resolved. A standing charge
//! for a payment that failed is voided at the provider (`recon.void_unexpected`)
//! and reported with `action: voided`.
//!
//! Modules:
//! - [`actor`]: [`ReconActor`], the declaration the runtime's registry lists, and the reconciler's timer;
//! - [`handler`]: [`Recon`], the event loop that folds facts;
//! - [`run`]: one reconciliation round, [`run::reconcile`];
//! - [`rules`]: what disagrees, from one row of facts;
//! - [`provider`]: the provider's list and void, over HTTP;
//! - [`report`]: the last runs and the open mismatches (`falcon recon`);
//! - [`entity`]: its tables; [`migration`]: their migrations;
//! - [`settings`]: section `recon` of `falcon.toml`.

pub mod actor;
pub mod entity;
pub mod handler;
pub mod migration;
pub mod provider;
pub mod report;
pub mod rules;
pub mod run;
pub mod settings;

pub use actor::ReconActor;
pub use handler::Recon;

/// The CloudEvents `source` of its events.
pub const SOURCE: &str = "falcon/recon";
