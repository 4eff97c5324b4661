//! Start-up with a large config file: 10,000 users with tokens and 1,000
//! numbers in 100 accounts (the load tests' topology). Measures parsing
//! and checking the file's text, and a whole start on an empty data dir (open the
//! store, apply every account, user and number to the engine and journal
//! them, bind the socket). Run with `cargo bench --bench startup`.

#![allow(clippy::disallowed_methods)] // benchmarks time themselves

use criterion::{Criterion, criterion_group, criterion_main};
use ringline::config;
use ringline::server::{self, Options};
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

const ACCOUNTS: usize = 100;
const USERS_PER_ACCOUNT: usize = 100;
const NUMBERS_PER_ACCOUNT: usize = 10;
const ASSIGNED_PER_NUMBER: usize = 20;

/// A config like `ringline-loadtest gen-config --agents 10000 --numbers 1000`
/// writes: every user has a token, every number 20 assigned users.
fn big_config() -> String {
    let strategies = ["ring_all", "ring_in_order", "round_robin", "longest_idle"];
    let mut t = String::from("[[gateways]]\nname = \"gw\"\ntoken = \"gw-token\"\n");
    for a in 0..ACCOUNTS {
        let _ = write!(t, "\n[[accounts]]\nid = \"acct{a}\"\nplan = \"team\"\n");
        for u in 0..USERS_PER_ACCOUNT {
            let role = if u == 0 { "owner" } else { "agent" };
            let _ = write!(
                t,
                "\n[[accounts.users]]\nid = \"u{u}\"\nemail = \"u{u}@acct{a}.test\"\nrole = \"{role}\"\ntoken = \"tok-{a}-{u}\"\n"
            );
        }
        for n in 0..NUMBERS_PER_ACCOUNT {
            let assigned: Vec<String> = (0..ASSIGNED_PER_NUMBER)
                .map(|i| format!("\"u{}\"", (n * ASSIGNED_PER_NUMBER / 2 + i) % USERS_PER_ACCOUNT))
                .collect();
            let _ = write!(
                t,
                "\n[[accounts.numbers]]\nnumber = \"+1555{:07}\"\nname = \"Line {n}\"\nassigned = [{}]\n\n[accounts.numbers.routing]\nstrategy = \"{}\"\n",
                a * NUMBERS_PER_ACCOUNT + n,
                assigned.join(", "),
                strategies[n % strategies.len()]
            );
        }
    }
    t
}

fn startup(c: &mut Criterion) {
    let text = big_config();
    let path = Path::new("big.toml");
    let mut g = c.benchmark_group("startup");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.bench_function("config_parse/10000_users", |b| {
        b.iter(|| config::parse(&text, path).expect("valid config"));
    });
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    g.bench_function("start_empty_data_dir/10000_users", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = tempfile::tempdir().expect("temp dir");
                let cfg = config::parse(&text, path).expect("valid config");
                let opts =
                    Options { listen: Some("127.0.0.1:0".parse().expect("addr")), data_dir: Some(dir.path().into()) };
                let started = Instant::now();
                let running = rt.block_on(server::start(cfg, opts)).expect("server starts");
                total += started.elapsed();
                rt.block_on(running.shutdown());
            }
            total
        });
    });
    g.finish();
}

criterion_group!(benches, startup);
criterion_main!(benches);
