//! Journal benchmarks: durable throughput with group commit, the cost of
//! one fsync per event, and recovery of a million-entry journal.
//!
//! `cargo bench --bench journal`. Wall-clock time is the thing measured
//! here, hence the `disallowed_methods` allowances for `Instant::now`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ringline::core::ids::AccountId;
use ringline::core::time::Instant as EngineTime;
use ringline::store::{SnapshotRow, Store, StoreConfig, StoreError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const PAYLOAD: usize = 100;
const RECOVERY_ENTRIES: u64 = 1_000_000;

/// `cargo bench` passes `--bench`; `cargo test --benches` runs each
/// benchmark once without it, where building a million-entry fixture would
/// only slow the test run down.
fn recovery_entries() -> u64 {
    if std::env::args().any(|a| a == "--bench") { RECOVERY_ENTRIES } else { 1_000 }
}

fn accounts(n: usize) -> Vec<AccountId> {
    (0..n).map(|i| AccountId::from(format!("account-{i:03}"))).collect()
}

fn open(dir: &std::path::Path) -> Store {
    Store::open(StoreConfig::new(dir)).expect("open store").0
}

fn open_with_lanes(dir: &std::path::Path, lanes: usize) -> Store {
    let mut c = StoreConfig::new(dir);
    c.sync_lanes = lanes;
    Store::open(c).expect("open store").0
}

/// Empties the journal between samples (outside the timed part) so the
/// file does not grow by millions of rows over a run.
fn truncate(store: &Store, generation: &AtomicU64) {
    let j = store.journal();
    let covered_seq = j.last_seq();
    let generation = generation.fetch_add(1, Ordering::Relaxed);
    j.snapshot(generation, vec![SnapshotRow { shard: 0, covered_seq, data: Vec::new() }]);
    j.flush().expect("truncate journal");
}

#[allow(clippy::disallowed_methods)] // wall-clock timing is the point of a benchmark
fn group_commit(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path());
    let accts = accounts(16);
    let generation = AtomicU64::new(1);
    let mut g = c.benchmark_group("journal/durable_append_group_commit");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    for producers in [1u64, 2, 4, 8] {
        g.bench_with_input(BenchmarkId::from_parameter(format!("{producers}_producers")), &producers, |b, &n| {
            b.iter_custom(|iters| {
                let per = iters.div_ceil(n);
                let start = std::time::Instant::now();
                std::thread::scope(|s| {
                    for p in 0..n {
                        let j = store.journal();
                        let accts = &accts;
                        s.spawn(move || {
                            for i in 0..per {
                                let acc = &accts[((p * per + i) % 16) as usize];
                                j.append(EngineTime::from_micros(i), acc, vec![0xA5; PAYLOAD], Vec::new());
                            }
                        });
                    }
                });
                // Durable means the watermark covers every append.
                let durable = store.journal().flush().expect("flush");
                let elapsed = start.elapsed();
                assert!(durable >= store.journal().last_seq());
                truncate(&store, &generation);
                // Report per requested iteration even if rounding added a few.
                elapsed.mul_f64(iters as f64 / (per * n) as f64)
            });
        });
    }
    g.finish();
    let j = store.journal();
    println!("group commit: {} commits for {} appends", j.commits(), j.last_seq());
}

#[allow(clippy::disallowed_methods)] // wall-clock timing is the point of a benchmark
fn one_at_a_time(c: &mut Criterion) {
    let acc = AccountId::from("account-000");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut g = c.benchmark_group("journal/durable_append_one_at_a_time");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    // The default two lanes hand the connection over after every commit;
    // one lane is the plain commit-then-sync loop (`journal_sync_lanes`).
    for lanes in [2usize, 1] {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open_with_lanes(dir.path(), lanes);
        let name = if lanes == 1 {
            "append_then_wait_durable/1_lane".to_owned()
        } else {
            format!("append_then_wait_durable/{lanes}_lanes")
        };
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let j = store.journal();
                let start = std::time::Instant::now();
                for i in 0..iters {
                    let seq = j.append(EngineTime::from_micros(i), &acc, vec![0xA5; PAYLOAD], Vec::new());
                    rt.block_on(j.wait_durable(seq)).expect("durable");
                }
                start.elapsed()
            });
        });
    }
    g.finish();
}

#[allow(clippy::disallowed_methods)] // wall-clock timing is the point of a benchmark
fn recovery(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let accts = accounts(16);
    let entries = recovery_entries();
    {
        let store = open(dir.path());
        let j = store.journal();
        for i in 0..entries {
            let mut input = vec![0u8; PAYLOAD];
            input[..8].copy_from_slice(&i.to_le_bytes());
            j.append(EngineTime::from_micros(1_700_000_000_000_000 + i), &accts[(i % 16) as usize], input, Vec::new());
        }
        assert_eq!(j.flush().expect("flush fixture"), entries);
        store.close().expect("close fixture");
    }
    let mut g = c.benchmark_group("journal/recovery");
    g.throughput(Throughput::Elements(entries));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(15));
    g.bench_function("open_and_verify_1m_entries", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = std::time::Instant::now();
                let (store, rec) = Store::open(StoreConfig::new(dir.path())).expect("open");
                total += start.elapsed();
                assert_eq!(rec.journal_entries, entries);
                drop(store);
            }
            total
        });
    });
    g.bench_function("open_and_replay_1m_entries", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = std::time::Instant::now();
                let (store, rec) = Store::open(StoreConfig::new(dir.path())).expect("open");
                let mut bytes = 0usize;
                let n = store
                    .replay(0, |e| {
                        bytes += e.input.len();
                        Ok::<(), StoreError>(())
                    })
                    .expect("replay");
                total += start.elapsed();
                assert_eq!((n, rec.last_seq, bytes), (entries, entries, PAYLOAD * n as usize));
                drop(store);
            }
            total
        });
    });
    g.finish();
}

criterion_group!(benches, group_commit, one_at_a_time, recovery);
criterion_main!(benches);
