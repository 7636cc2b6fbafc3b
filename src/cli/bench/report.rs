//! What `falcon bench` reports: throughput, latency percentiles, outcomes,
//! messages per saga, the runtime's cost and the invariants, as JSON or as
//! aligned lines.

// Floats here are seconds, megabytes and rates: measurements, never money.
#![allow(clippy::float_arithmetic)]

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Report {
    pub mode: String,
    pub payments: usize,
    pub terminal: usize,
    pub elapsed_s: f64,
    pub sagas_per_s: f64,
    pub latency_ms: Latency,
    pub outcomes: BTreeMap<String, usize>,
    pub messages_per_saga: f64,
    pub runtime: Option<Usage>,
    pub invariants_ok: bool,
    pub violations: Vec<String>,
}

/// End-to-end latency percentiles, in milliseconds.
#[derive(Debug, Serialize, Default, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    /// The percentiles of `sorted` (ascending); zeros when empty.
    pub fn of(sorted: &[Duration]) -> Latency {
        Latency {
            p50: percentile(sorted, 50.0),
            p95: percentile(sorted, 95.0),
            p99: percentile(sorted, 99.0),
            max: sorted.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        }
    }
}

/// A process's peak resident set and CPU time (user + system).
#[derive(Debug, Serialize, Clone, Copy)]
pub struct Usage {
    pub pid: u32,
    pub peak_rss_mb: f64,
    pub cpu_s: f64,
}

/// The nearest-rank percentile `p` of `sorted`, in milliseconds.
fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

/// The report as aligned lines on stdout.
pub fn print(r: &Report) {
    println!("mode:              {}", r.mode);
    println!(
        "payments:          {} measured, {} terminal in {:.2} s",
        r.payments, r.terminal, r.elapsed_s
    );
    println!("throughput:        {:.0} sagas/s", r.sagas_per_s);
    println!(
        "latency (ms):      p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1}",
        r.latency_ms.p50, r.latency_ms.p95, r.latency_ms.p99, r.latency_ms.max
    );
    let outcomes: Vec<String> = r.outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!("outcomes:          {}", outcomes.join(", "));
    println!("messages per saga: {:.1}", r.messages_per_saga);
    match &r.runtime {
        Some(u) => println!(
            "runtime (pid {}):  peak RSS {:.0} MB, CPU {:.1} s",
            u.pid, u.peak_rss_mb, u.cpu_s
        ),
        None => println!("runtime:           not measured (use --spawn or --pid)"),
    }
    println!(
        "invariants:        {}",
        if r.invariants_ok { "ok" } else { "VIOLATED" }
    );
    for v in &r.violations {
        println!("  {v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(l: &Latency) -> [u64; 4] {
        [l.p50, l.p95, l.p99, l.max].map(|v| v.round() as u64)
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(ms(&Latency::of(&sorted)), [50, 95, 99, 100]);
        assert_eq!(ms(&Latency::of(&[Duration::from_millis(7)])), [7; 4]);
        assert_eq!(Latency::of(&[]), Latency::default());
    }
}
