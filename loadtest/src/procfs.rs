//! What `/proc` says: a process's CPU time and resident memory, sampled on a
//! thread of its own, and the machine the run is on.

use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// USER_HZ: the unit of `/proc/<pid>/stat` times. 100 on every Linux ABI
/// this runs on (it is fixed by the kernel ABI, not by `CONFIG_HZ`).
const TICKS_PER_SEC: f64 = 100.0;

/// CPU time (user + system) of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu(&stat)
}

fn parse_cpu(stat: &str) -> Option<f64> {
    // The command name (field 2) may contain spaces; count from its ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at 11, 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SEC)
}

/// Resident set size in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_rss(&status)
}

fn parse_rss(status: &str) -> Option<u64> {
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// One reading.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub at: Instant,
    /// CPU use since the previous sample, in percent of one core.
    pub cpu_pct: f64,
    pub rss_kib: u64,
}

/// Samples one process every `every` until dropped.
#[derive(Debug)]
pub struct Sampler {
    pub pid: u32,
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    pub fn start(pid: u32, every: Duration) -> Sampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (samples.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name(format!("sample-{pid}"))
            .spawn(move || {
                let mut last = (Instant::now(), cpu_seconds(pid).unwrap_or(0.0));
                while !st.load(Ordering::Relaxed) {
                    std::thread::sleep(every);
                    let (Some(cpu), Some(rss)) = (cpu_seconds(pid), rss_kib(pid)) else { break };
                    let now = Instant::now();
                    let dt = now.duration_since(last.0).as_secs_f64();
                    let cpu_pct = if dt > 0.0 { (cpu - last.1) / dt * 100.0 } else { 0.0 };
                    last = (now, cpu);
                    if let Ok(mut v) = s.lock() {
                        v.push(Sample { at: now, cpu_pct, rss_kib: rss });
                    }
                }
            })
            .ok();
        Sampler { pid, samples, stop, thread }
    }

    pub fn latest(&self) -> Option<Sample> {
        self.samples.lock().ok()?.last().copied()
    }

    /// Peak and mean over the samples taken in `[from, to]`.
    pub fn usage(&self, from: Instant, to: Instant) -> Usage {
        let v = match self.samples.lock() {
            Ok(v) => v.iter().filter(|s| s.at >= from && s.at <= to).copied().collect::<Vec<_>>(),
            Err(_) => Vec::new(),
        };
        Usage::of(&v)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// CPU and memory of one process over a window.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Usage {
    pub samples: usize,
    /// Percent of one core (200% = both cores of a 2-core machine).
    pub cpu_avg_pct: f64,
    pub cpu_peak_pct: f64,
    pub rss_avg_mib: f64,
    pub rss_peak_mib: f64,
}

impl Usage {
    pub fn of(v: &[Sample]) -> Usage {
        if v.is_empty() {
            return Usage::default();
        }
        let n = v.len() as f64;
        let r1 = |x: f64| (x * 10.0).round() / 10.0;
        Usage {
            samples: v.len(),
            cpu_avg_pct: r1(v.iter().map(|s| s.cpu_pct).sum::<f64>() / n),
            cpu_peak_pct: r1(v.iter().map(|s| s.cpu_pct).fold(0.0, f64::max)),
            rss_avg_mib: r1(v.iter().map(|s| s.rss_kib as f64).sum::<f64>() / n / 1024.0),
            rss_peak_mib: r1(v.iter().map(|s| s.rss_kib).max().unwrap_or(0) as f64 / 1024.0),
        }
    }
}

/// The machine, as `/proc` describes it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cpus: usize,
    pub mem_total_mib: u64,
    pub kernel: String,
}

impl Machine {
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|v| v.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default();
        let cpus = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_total_mib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
            / 1024;
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
        Machine { cpu_model, cpus, mem_total_mib, kernel }
    }
}

/// Busy and total jiffies of all CPUs together (`/proc/stat`).
pub fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_machine(&stat)
}

fn parse_machine(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let idle = v.get(3)? + v.get(4).unwrap_or(&0);
    let total: u64 = v.iter().take(8).sum();
    Some((total - idle, total))
}

/// CPU use of the whole machine between two `machine_jiffies` readings, in
/// percent of one core.
pub fn machine_busy_pct(before: (u64, u64), after: (u64, u64), cpus: usize) -> f64 {
    let busy = after.0.saturating_sub(before.0) as f64;
    let total = after.1.saturating_sub(before.1) as f64;
    if total <= 0.0 { 0.0 } else { (busy / total * 100.0 * cpus as f64 * 10.0).round() / 10.0 }
}

/// The 1-minute load average.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg").ok().and_then(|s| s.split_whitespace().next()?.parse().ok()).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_and_status_parse() {
        let stat = "1234 (my prog (x)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 100 0 0";
        assert_eq!(parse_cpu(stat), Some(3.0));
        let status = "Name:\tx\nVmPeak:\t  2000 kB\nVmRSS:\t   1536 kB\nThreads: 2\n";
        assert_eq!(parse_rss(status), Some(1536));
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n";
        assert_eq!(parse_machine(stat), Some((150, 1000)));
        assert_eq!(machine_busy_pct((150, 1000), (250, 1200), 2), 100.0);
    }

    #[test]
    fn this_process_can_be_read() {
        let me = std::process::id();
        assert!(rss_kib(me).expect("own status") > 0);
        assert!(cpu_seconds(me).is_some());
        let m = Machine::read();
        assert!(m.cpus >= 1 && m.mem_total_mib > 0);
    }

    #[test]
    fn usage_takes_peak_and_mean() {
        let t = Instant::now();
        let v = [Sample { at: t, cpu_pct: 50.0, rss_kib: 1024 }, Sample { at: t, cpu_pct: 150.0, rss_kib: 3072 }];
        let u = Usage::of(&v);
        assert_eq!((u.cpu_avg_pct, u.cpu_peak_pct, u.rss_avg_mib, u.rss_peak_mib), (100.0, 150.0, 2.0, 3.0));
    }
}
