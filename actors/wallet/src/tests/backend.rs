//! Fresh wallet databases on the real backends (falcon_kernel::testing).

pub(crate) use falcon_kernel::testing::{backends, Fresh};

use crate::migration::Migrator;

/// An empty database for the wallet actor, not migrated.
pub(crate) async fn empty(backend: &Option<String>) -> Fresh {
    Fresh::empty(backend, "wallet").await
}

/// A database with the wallet actor's migrations applied.
pub(crate) async fn migrated(backend: &Option<String>) -> Fresh {
    Fresh::migrated::<Migrator>(backend, "wallet").await
}
