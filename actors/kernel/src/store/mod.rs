//! An actor's database: [`connect`]ing by URL, write transactions and the
//! SQLite write gate ([`gate`]), the [`inbox`] and [`outbox`] tables every
//! actor has, [`bulk`] SQL for the fast paths, and [`migration`] helpers.

pub mod bulk;
pub mod connect;
pub mod gate;
pub mod inbox;
pub mod migration;
pub mod outbox;

pub use bulk::{
    insert_all_new, insert_chunks, padded_chunks, rows_by_key, rows_by_key_locked, update_guarded,
    IN_CHUNK,
};
pub use connect::{connect, memory_db};
pub use gate::{begin_write, write_gate, WriteGate, WriteTxn};
pub use inbox::{claim, claim_new, inbox_row};
pub use outbox::{write_events, Outbox};
