//! How slow memory is after the thread that uses it has slept.
//!
//! At light load the server touches the same few hundred cache lines for
//! every event, and between events it sleeps. Whether those lines are
//! still in the caches and TLBs when the next event comes is a property
//! of the machine (on a VM, of whoever else runs on the host), not of the
//! server. This probe measures it: a dependent pointer chase over `lines`
//! cache lines, one per 4 KiB page of a 64 MiB buffer in a random order
//! (so neither the prefetcher nor one TLB entry covers two of them), timed
//! once after sleeping `idle`, `rounds` times. Hot, a line costs a few
//! nanoseconds; each nanosecond above that, times the lines an event
//! touches, is time the server spends waiting for memory. (The "4 KiB"
//! setting is on 2 MiB pages too where transparent huge pages are
//! `always` rather than `madvise`.)

use crate::stats::Latency;
use std::time::{Duration, Instant};

/// Bytes in the buffer the lines are spread over.
pub const BUFFER: usize = 64 << 20;
const PAGE: usize = 4096;
const WORDS_PER_PAGE: usize = PAGE / 8;

/// What one setting measured.
#[derive(Clone, Debug)]
pub struct ColdMemory {
    pub idle: Duration,
    pub lines: usize,
    pub huge_pages: bool,
    /// How long each chase took.
    pub chases: Latency,
}

impl ColdMemory {
    pub fn human(&self) -> String {
        let p50 = self.chases.quantile_us(0.5);
        format!(
            "idle {:>8.1?}  {:>5} lines  {} pages: chase p50 {:>8.1} us p90 {:>8.1} us  = {:>5.0} ns per line",
            self.idle,
            self.lines,
            if self.huge_pages { "2 MiB" } else { "4 KiB" },
            p50,
            self.chases.quantile_us(0.9),
            p50 * 1000.0 / self.lines.max(1) as f64,
        )
    }
}

/// A cyclic chain through `lines` distinct 4 KiB pages of `buf`: `buf[w]`
/// holds the index of the next word in the chain, and the start of the
/// chain is returned. `seed` picks the order.
pub fn chain(buf: &mut [u64], lines: usize, seed: u64) -> usize {
    let pages = buf.len() / WORDS_PER_PAGE;
    let lines = lines.clamp(1, pages.max(1));
    // A Fisher-Yates shuffle of the pages (xorshift: a fixed, dependency-free
    // sequence is all a probe needs), then the first `lines` of them.
    let mut order: Vec<usize> = (0..pages).collect();
    let mut x = seed | 1;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let words: Vec<usize> = order[..lines].iter().map(|p| p * WORDS_PER_PAGE).collect();
    for (i, &w) in words.iter().enumerate() {
        buf[w] = words[(i + 1) % words.len()] as u64;
    }
    words[0]
}

/// Follows the chain from `start` for `steps` steps; returns where it ended
/// (so the loads cannot be optimised away).
fn chase(buf: &[u64], start: usize, steps: usize) -> usize {
    let mut at = start;
    for _ in 0..steps {
        at = std::hint::black_box(buf[at]) as usize;
    }
    at
}

/// Dependent multiply-adds the compute-only control runs (tens of
/// microseconds).
const COMPUTE_STEPS: u64 = 20_000;

/// The control: the same sleep, then work that touches no memory. If this
/// too is slower after sleeping, the cause is the CPU's clock (power
/// saving), not its caches.
pub fn compute_after(idle: Duration, rounds: usize) -> Latency {
    let mut out = Latency::new();
    for _ in 0..rounds {
        std::thread::sleep(idle);
        let t = Instant::now();
        // Opaque constants, so the compiler cannot fold the steps together.
        let (a, b) = std::hint::black_box((6_364_136_223_846_793_005u64, 1_442_695_040_888_963_407u64));
        let mut x = std::hint::black_box(1u64);
        for _ in 0..COMPUTE_STEPS {
            x = x.wrapping_mul(a).wrapping_add(b);
        }
        out.record(t.elapsed());
        std::hint::black_box(x);
    }
    out
}

/// Runs the probe for one setting on the calling thread (it sleeps).
pub fn measure(idle: Duration, lines: usize, rounds: usize, huge_pages: bool) -> ColdMemory {
    let mut buf = vec![0u64; BUFFER / 8];
    if huge_pages {
        advise_huge(&mut buf);
    }
    // Every page written once, so no chase pays for a first-touch fault.
    for w in (0..buf.len()).step_by(WORDS_PER_PAGE) {
        buf[w] = 0;
    }
    let start = chain(&mut buf, lines, 0x9e37_79b9_7f4a_7c15);
    let lines = lines.clamp(1, buf.len() / WORDS_PER_PAGE);
    let mut chases = Latency::new();
    for _ in 0..rounds {
        std::thread::sleep(idle);
        let t = Instant::now();
        let end = chase(&buf, start, lines);
        chases.record(t.elapsed());
        std::hint::black_box(end);
    }
    ColdMemory { idle, lines, huge_pages, chases }
}

/// Asks for transparent huge pages over the buffer, as the server's
/// allocator does for its heap (a no-op where THP is off).
#[allow(unsafe_code)]
fn advise_huge(buf: &mut [u64]) {
    #[cfg(target_os = "linux")]
    {
        let start = buf.as_mut_ptr() as usize;
        let first = start.next_multiple_of(2 << 20);
        let end = start + std::mem::size_of_val(buf);
        if end > first {
            // SAFETY: `first..end` lies inside `buf`, which this function
            // borrows mutably; MADV_HUGEPAGE changes how the kernel backs
            // the pages, not their contents.
            unsafe {
                libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buf;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_visits_each_chosen_page_once_and_closes() {
        let mut buf = vec![0u64; 64 * WORDS_PER_PAGE];
        let start = chain(&mut buf, 10, 7);
        let mut seen = std::collections::HashSet::new();
        let mut at = start;
        for _ in 0..10 {
            assert_eq!(at % WORDS_PER_PAGE, 0, "one line at the start of each page");
            assert!(seen.insert(at / WORDS_PER_PAGE), "page {} visited twice", at / WORDS_PER_PAGE);
            at = buf[at] as usize;
        }
        assert_eq!(at, start, "the chain is a cycle of exactly 10 pages");
        assert_eq!(chase(&buf, start, 10), start);
    }

    #[test]
    fn more_lines_than_pages_are_clamped() {
        let mut buf = vec![0u64; 4 * WORDS_PER_PAGE];
        let start = chain(&mut buf, 100, 3);
        assert_eq!(chase(&buf, start, 4), start);
        let m = measure(Duration::ZERO, 8, 3, false);
        assert_eq!(m.chases.count(), 3);
        assert!(m.human().contains("8 lines"));
        assert_eq!(compute_after(Duration::ZERO, 3).count(), 3);
    }
}
