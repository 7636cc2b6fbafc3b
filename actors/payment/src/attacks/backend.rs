//! Fresh payment databases on the real backends (falcon_kernel::testing).

pub(crate) use falcon_kernel::testing::{backends, Fresh};

use crate::migration::Migrator;

/// An empty database for the payment actor, not migrated.
pub(crate) async fn empty(backend: &Option<String>) -> Fresh {
    Fresh::empty(backend, "payment").await
}

/// A database with the payment actor's migrations applied.
pub(crate) async fn migrated(backend: &Option<String>) -> Fresh {
    Fresh::migrated::<Migrator>(backend, "payment").await
}
