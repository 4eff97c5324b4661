//! The server's own view: its Prometheus `/metrics`, scraped before and
//! after a phase. `ringline_offer_latency_seconds` times an offer from the
//! moment the shard got the input to the moment the frame was written, so
//! comparing it with the harness's offer latency splits the time between
//! the server's inside and the sockets around it. Likewise
//! `ringline_ack_latency_seconds` for the durability latency.

use serde::Serialize;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const OFFER_METRIC: &str = "ringline_offer_latency_seconds";
/// Gateway event received to its `ack` written (the commit included).
pub const ACK_METRIC: &str = "ringline_ack_latency_seconds";

/// `GET /metrics`; `None` if the server does not answer it.
pub async fn scrape(addr: SocketAddr) -> Option<String> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: loadtest\r\nConnection: close\r\n\r\n").await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8(buf).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), fetch).await.ok().flatten()
}

/// A Prometheus histogram: cumulative buckets `(le, count)`, sum, count.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PromHistogram {
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

impl PromHistogram {
    /// Reads the unlabelled histogram `name` from an exposition.
    pub fn parse(text: &str, name: &str) -> Option<PromHistogram> {
        let mut h = PromHistogram::default();
        let bucket = format!("{name}_bucket{{le=\"");
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix(&bucket) {
                let (le, count) = rest.split_once("\"}")?;
                let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
                h.buckets.push((le, count.trim().parse().ok()?));
            } else if let Some(v) = line.strip_prefix(&format!("{name}_sum ")) {
                h.sum = v.trim().parse().ok()?;
            } else if let Some(v) = line.strip_prefix(&format!("{name}_count ")) {
                h.count = v.trim().parse().ok()?;
            }
        }
        (!h.buckets.is_empty()).then_some(h)
    }

    /// What was observed between `before` and `self`.
    pub fn since(&self, before: &PromHistogram) -> PromHistogram {
        let buckets = self
            .buckets
            .iter()
            .map(|&(le, c)| {
                let b = before.buckets.iter().find(|(l, _)| *l == le).map_or(0, |&(_, c)| c);
                (le, c.saturating_sub(b))
            })
            .collect();
        PromHistogram { buckets, sum: self.sum - before.sum, count: self.count.saturating_sub(before.count) }
    }

    /// The upper bound of the bucket holding quantile `q`, in seconds.
    pub fn quantile_le(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q * self.count as f64).ceil().max(1.0) as u64;
        self.buckets.iter().find(|(_, c)| *c >= rank).map(|&(le, _)| le)
    }

    pub fn summary(&self) -> ServerLatency {
        let us = |s: f64| if s.is_finite() { (s * 1e6 * 10.0).round() / 10.0 } else { f64::INFINITY };
        ServerLatency {
            count: self.count,
            mean_us: if self.count > 0 { us(self.sum / self.count as f64) } else { 0.0 },
            p50_at_most_us: self.quantile_le(0.5).map(us),
            p99_at_most_us: self.quantile_le(0.99).map(us),
        }
    }
}

/// The server's offer latency over a phase (all offers, not only the first
/// of each call), at its bucket resolution.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct ServerLatency {
    pub count: u64,
    pub mean_us: f64,
    /// Upper bound of the bucket holding the median.
    pub p50_at_most_us: Option<f64>,
    pub p99_at_most_us: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE ringline_offer_latency_seconds histogram
ringline_offer_latency_seconds_bucket{le=\"0.0001\"} 10
ringline_offer_latency_seconds_bucket{le=\"0.0005\"} 60
ringline_offer_latency_seconds_bucket{le=\"0.001\"} 99
ringline_offer_latency_seconds_bucket{le=\"+Inf\"} 100
ringline_offer_latency_seconds_sum 0.05
ringline_offer_latency_seconds_count 100
ringline_other_total 3
";

    #[test]
    fn histograms_parse_subtract_and_give_bucket_quantiles() {
        let h = PromHistogram::parse(TEXT, OFFER_METRIC).expect("present");
        assert_eq!(h.buckets.len(), 4);
        assert_eq!((h.count, h.sum), (100, 0.05));
        assert_eq!(h.quantile_le(0.5), Some(0.0005));
        assert_eq!(h.quantile_le(0.99), Some(0.001));
        assert_eq!(h.quantile_le(1.0), Some(f64::INFINITY));
        let before = PromHistogram { buckets: vec![(0.0001, 10), (0.0005, 10)], sum: 0.01, count: 10 };
        let d = h.since(&before);
        assert_eq!(d.count, 90);
        assert_eq!(d.buckets[0], (0.0001, 0));
        assert_eq!(d.quantile_le(0.5), Some(0.0005));
        let s = d.summary();
        assert_eq!((s.count, s.mean_us), (90, 444.4));
        assert!(PromHistogram::parse("nothing here", OFFER_METRIC).is_none());
    }
}
