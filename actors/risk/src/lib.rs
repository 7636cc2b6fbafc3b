//! # falcon-risk: the risk actor
//!
//! Approves or rejects each requested payment by rules from config
//! (maximum amount per currency, velocity per source wallet over a sliding
//! window, blocked wallets) and stores every decision with its score and
//! reasons. A decision is keyed by payment id, so a redelivered request
//! gets no second decision; velocity counts approved decisions only.
//!
//! Shutdown and failure: as every actor, it stops between batches and is
//! restarted by its supervisor from the database.
//!
//! Modules:
//! - [`actor`]: [`RiskActor`], the declaration the runtime's registry lists;
//! - [`handler`]: [`Risk`], the steps;
//! - [`rules`]: [`Rules`], parsed from [`settings::RiskSettings`], and the score;
//! - [`entity`]: the decisions table; [`migration`]: its migrations;
//! - [`settings`]: section `risk` of `falcon.toml`.

pub mod actor;
pub mod entity;
pub mod handler;
pub mod migration;
pub mod rules;
pub mod settings;

pub use actor::RiskActor;
pub use handler::Risk;
pub use rules::Rules;
