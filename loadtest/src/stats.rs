//! Latency histograms (HDR, nanosecond resolution, 3 significant digits)
//! and their summaries in microseconds.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::time::Duration;

/// One latency distribution.
#[derive(Clone, Debug)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    /// 1 ns to 10 minutes, 3 significant digits.
    pub fn new() -> Self {
        Latency(Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("constant histogram bounds are valid"))
    }

    pub fn record(&mut self, d: Duration) {
        let ns = (d.as_nanos() as u64).clamp(1, self.0.high());
        self.0.saturating_record(ns);
    }

    pub fn add(&mut self, other: &Latency) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    pub fn reset(&mut self) {
        self.0.reset();
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The quantile in microseconds; 0 when empty.
    pub fn quantile_us(&self, q: f64) -> f64 {
        if self.0.is_empty() { 0.0 } else { self.0.value_at_quantile(q) as f64 / 1000.0 }
    }

    pub fn summary(&self) -> Summary {
        let us = |ns: u64| (ns as f64 / 1000.0 * 10.0).round() / 10.0;
        if self.0.is_empty() {
            return Summary::default();
        }
        Summary {
            count: self.0.len(),
            mean_us: us(self.0.mean() as u64),
            p50_us: us(self.0.value_at_quantile(0.50)),
            p90_us: us(self.0.value_at_quantile(0.90)),
            p99_us: us(self.0.value_at_quantile(0.99)),
            p999_us: us(self.0.value_at_quantile(0.999)),
            max_us: us(self.0.max()),
        }
    }
}

/// A latency distribution as reported.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Summary {
    /// `p50 / p99` of this over the baseline's; `None` without data.
    pub fn ratio_to(&self, base: &Summary) -> Option<Ratio> {
        if self.count == 0 || base.count == 0 || base.p50_us <= 0.0 || base.p99_us <= 0.0 {
            return None;
        }
        let r = |a: f64, b: f64| (a / b * 100.0).round() / 100.0;
        Some(Ratio { p50: r(self.p50_us, base.p50_us), p99: r(self.p99_us, base.p99_us) })
    }

    /// `p50 / p99 / max` in the most readable unit.
    pub fn short(&self) -> String {
        if self.count == 0 {
            return "-".into();
        }
        format!("p50 {} p99 {} max {}", fmt_us(self.p50_us), fmt_us(self.p99_us), fmt_us(self.max_us))
    }
}

/// A latency over the bare WebSocket round trip measured in the same run.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Ratio {
    pub p50: f64,
    pub p99: f64,
}

pub fn fmt_us(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{:.2}s", us / 1_000_000.0)
    } else if us >= 1000.0 {
        format!("{:.2}ms", us / 1000.0)
    } else {
        format!("{us:.0}us")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_are_in_microseconds() {
        let mut h = Latency::new();
        for i in 1..=1000u64 {
            h.record(Duration::from_micros(i));
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert!((s.p50_us - 500.0).abs() < 1.0, "{s:?}");
        assert!((s.p99_us - 990.0).abs() < 1.0, "{s:?}");
        assert!((s.max_us - 1000.0).abs() < 1.0, "{s:?}");
        let mut base = Latency::new();
        base.record(Duration::from_micros(250));
        let r = s.ratio_to(&base.summary()).expect("both have data");
        assert!((r.p50 - 2.0).abs() < 0.01, "{r:?}");
        assert!(Summary::default().ratio_to(&s).is_none());
        assert_eq!(fmt_us(1500.0), "1.50ms");
        assert_eq!(fmt_us(72.4), "72us");
    }

    #[test]
    fn out_of_range_values_are_clamped_not_lost() {
        let mut h = Latency::new();
        h.record(Duration::ZERO);
        h.record(Duration::from_secs(3600));
        assert_eq!(h.count(), 2);
    }
}
