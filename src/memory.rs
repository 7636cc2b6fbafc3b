//! The process's allocator and what it tells `/metrics`.
//!
//! On Linux the `falcon` binary allocates through jemalloc (the `jemalloc`
//! feature, on by default), for its own heap and for the C code it links
//! (SQLite's page caches and prepared statements), and jemalloc's
//! background thread hands freed pages back to the system. With glibc's
//! `malloc`, a soak's resident memory grew three times as fast as its live
//! heap (heaptrack: 49 MB live became 62 MB while the anonymous RSS went
//! from 76 to 118 MB): freed chunks stayed in the arenas of the threads
//! that had used them (SQLite runs a thread per connection), so RSS said
//! little about what the process held (docs/BENCHMARKS.md, the soak).
//!
//! Each scrape of `/metrics` ([`crate::http`]) calls [`record`] first,
//! which sets two gauges as of that moment: `falcon_memory_allocated_bytes`, the bytes the
//! process holds, and `falcon_memory_resident_bytes`, the bytes of memory
//! the allocator keeps resident for it. A gap that grows between them is
//! fragmentation; a rise of both is the process holding more.

use falcon_kernel::telemetry::names;

#[cfg(all(target_os = "linux", feature = "jemalloc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The allocator's figures now, `(allocated, resident)` in bytes; `None`
/// where the binary is not built with jemalloc, or it cannot say.
pub fn sample() -> Option<(u64, u64)> {
    #[cfg(all(target_os = "linux", feature = "jemalloc"))]
    {
        use tikv_jemalloc_ctl::{epoch, stats};
        // The statistics are cached until the epoch advances.
        epoch::advance().ok()?;
        let allocated = u64::try_from(stats::allocated::read().ok()?).ok()?;
        let resident = u64::try_from(stats::resident::read().ok()?).ok()?;
        Some((allocated, resident))
    }
    #[cfg(not(all(target_os = "linux", feature = "jemalloc")))]
    {
        None
    }
}

/// Sets the two gauges from [`sample`]; does nothing where it has no
/// figures.
pub fn record() {
    if let Some((allocated, resident)) = sample() {
        metrics::gauge!(names::MEMORY_ALLOCATED).set(allocated as f64);
        metrics::gauge!(names::MEMORY_RESIDENT).set(resident as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The binary's allocator is jemalloc and its figures move with what is
    /// held: a 64 MiB buffer, touched, shows in both, and is gone from
    /// `allocated` once dropped.
    #[cfg(all(target_os = "linux", feature = "jemalloc"))]
    #[test]
    fn the_allocator_reports_what_the_process_holds() {
        let (before, _) = sample().expect("jemalloc statistics");
        let held = vec![1u8; 64 << 20];
        let (during, resident) = sample().expect("jemalloc statistics");
        // Other tests of this binary allocate and free meanwhile: a margin.
        assert!(during >= before + (56 << 20), "{before} -> {during}");
        assert!(resident >= 64 << 20, "resident {resident}");
        drop(held);
        let (after, _) = sample().expect("jemalloc statistics");
        assert!(after + (32 << 20) < during, "{during} -> {after}");
    }
}
