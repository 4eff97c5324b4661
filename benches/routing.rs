//! Routing-core benchmarks. Run with `cargo bench --bench routing`.
//!
//! - `inbound/<strategy>/<pool>`: one routing decision: a `call.inbound`
//!   on a number whose `pool` targets are all idle and eligible, until the
//!   offer is out. The caller then hangs up (untimed) so the next iteration
//!   sees the same pool.
//! - `inbound_cold/<strategy>/20`: the same decision on a 20-agent number
//!   (the load test's size) after 64 MiB of unrelated memory has been
//!   walked (untimed), so code and data come from RAM as they do at light
//!   load, when 100 ms pass between two calls.
//! - `agent_available/10000_waiting`: an agent comes back to a queue of
//!   10,000 waiting callers and is offered the oldest (one it has not been
//!   offered before).
//! - `lifecycle/round_robin/1000`: a whole call: inbound, offer, accept,
//!   answered, ended, wrap-up over.

#![allow(clippy::disallowed_methods)] // benchmarks time themselves

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ringline::core::settings::{QueueSettings, RoutingSettings, Strategy};
use ringline::core::testkit::Bed;
use ringline::core::{Input, Output};
use ringline::protocol::agent::{AgentCommand, AgentMessage, WantedStatus};
use ringline::protocol::gateway::{EndReason, GatewayEvent};
use std::hint::black_box;
use std::time::{Duration, Instant};

const N: &str = "+15550100";

/// A number with `pool` connected, available agents under `strategy`. They
/// are its routing targets; one supervisor is assigned (sees the history),
/// so a caller's hang-up notifies one user, not the whole pool: the
/// benchmark measures routing, not notification fan-out.
fn bed(strategy: Strategy, pool: usize, queue: QueueSettings) -> Bed {
    let mut b = Bed::new();
    let names: Vec<String> = (0..pool).map(|i| format!("agent{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    b.agents(&refs);
    b.agents(&["lead"]);
    let targets = Some(names.iter().map(|n| n.as_str().into()).collect());
    let routing = RoutingSettings { strategy, wrap_up: Duration::from_secs(5), targets, ..Default::default() };
    assert!(b.number(N, &["lead"], routing, queue).result.is_ok());
    for n in &refs {
        b.connect(n);
    }
    b.take();
    b
}

fn inbound(id: &str) -> GatewayEvent {
    GatewayEvent::CallInbound { call_id: id.into(), to: N.into(), from: "+15551230001".into(), priority: None }
}

fn handle(b: &mut Bed, input: Input) {
    let h = b.engine.handle(b.now, input);
    debug_assert!(h.result.is_ok(), "{h:?}");
    b.engine.drain_outputs().for_each(drop);
}

/// Untimed, after a decision: call `id` (the `n`th) hangs up so the next
/// sample sees the same pool, and every 10,000 calls the clock jumps an
/// hour so the dedupe window does not grow across samples.
fn hang_up(b: &mut Bed, id: &str, n: u64) {
    let end = GatewayEvent::CallEnded { call_id: id.into(), reason: EndReason::CallerHangup };
    handle(b, Input::Gateway { account: b.account.clone(), event: end });
    if n.is_multiple_of(10_000) {
        b.now = b.now + Duration::from_secs(3600);
        handle(b, Input::Tick);
    }
}

fn routing_decision(c: &mut Criterion) {
    let mut group = c.benchmark_group("inbound");
    for strategy in Strategy::ALL {
        for pool in [10usize, 1_000, 100_000] {
            if strategy == Strategy::RingAll && pool == 100_000 {
                // One decision rings 100,000 phones: slow by nature.
                group.sample_size(10).measurement_time(Duration::from_secs(20));
            } else {
                group.sample_size(100).measurement_time(Duration::from_secs(5));
            }
            // Built on first use: only for the benchmarks a filter selects.
            let mut fixture: Option<Bed> = None;
            let mut n = 0u64;
            group.bench_function(BenchmarkId::new(strategy.as_str(), pool), |bench| {
                let b = fixture.get_or_insert_with(|| bed(strategy, pool, QueueSettings::default()));
                let account = b.account.clone();
                bench.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        n += 1;
                        let id = format!("c{n}");
                        let input = Input::Gateway { account: account.clone(), event: inbound(&id) };
                        let start = Instant::now();
                        let h = b.engine.handle(b.now, input);
                        total += start.elapsed();
                        black_box(&h);
                        b.engine.drain_outputs().for_each(drop);
                        hang_up(b, &id, n);
                    }
                    total
                })
            });
        }
    }
    group.finish();
}

/// Evicts the caches: one write per cache line over more memory than the
/// last-level cache holds.
fn evict(buf: &mut [u8]) {
    for i in (0..buf.len()).step_by(64) {
        buf[i] = buf[i].wrapping_add(1);
    }
    black_box(&buf);
}

fn cold_routing_decision(c: &mut Criterion) {
    let mut group = c.benchmark_group("inbound_cold");
    group.sample_size(50).measurement_time(Duration::from_secs(5));
    let mut scratch = vec![0u8; 64 << 20];
    for strategy in Strategy::ALL {
        let mut b = bed(strategy, 20, QueueSettings::default());
        let account = b.account.clone();
        let mut n = 0u64;
        group.bench_function(BenchmarkId::new(strategy.as_str(), 20), |bench| {
            bench.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    n += 1;
                    let id = format!("c{n}");
                    let input = Input::Gateway { account: account.clone(), event: inbound(&id) };
                    evict(&mut scratch);
                    let start = Instant::now();
                    let h = b.engine.handle(b.now, input);
                    b.engine.drain_outputs().for_each(|o| {
                        black_box(o);
                    });
                    total += start.elapsed();
                    black_box(&h);
                    hang_up(&mut b, &id, n);
                }
                total
            })
        });
    }
    group.finish();
}

fn agent_becomes_available(c: &mut Criterion) {
    let mut group = c.benchmark_group("agent_available");
    let queue = QueueSettings { max_waiting: 100_000, max_wait: Duration::from_secs(24 * 3600), ..Default::default() };
    let mut b = bed(Strategy::LongestIdle, 1, queue);
    let account = b.account.clone();
    let agent = b.conns["agent0"][0];
    let status = |status| Input::Agent {
        account: account.clone(),
        conn: agent,
        ref_: None,
        cmd: AgentCommand::StatusSet { status, reason: None },
    };
    handle(&mut b, status(WantedStatus::Away));
    for i in 0..10_000 {
        handle(&mut b, Input::Gateway { account: account.clone(), event: inbound(&format!("w{i}")) });
    }
    let mut oldest = 0u64;
    let mut next = 10_000u64;
    group.bench_function("10000_waiting", |bench| {
        bench.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let input = status(WantedStatus::Available);
                let start = Instant::now();
                let h = b.engine.handle(b.now, input);
                total += start.elapsed();
                black_box(&h);
                let head = format!("w{oldest}");
                let offered = b.engine.drain_outputs().any(|o| {
                    matches!(o, Output::User { msg: AgentMessage::Offer { call_id, .. }, .. } if call_id.as_ref().is_some_and(|c| c.as_str() == head))
                });
                assert!(offered, "the oldest caller is offered");
                // Untimed: the agent steps away (the call goes back to the
                // head), that caller hangs up and a new one joins at the
                // tail, so the next sample again has 10,000 waiting and an
                // oldest caller this agent has not been offered.
                handle(&mut b, status(WantedStatus::Away));
                let end = GatewayEvent::CallEnded { call_id: head.as_str().into(), reason: EndReason::CallerHangup };
                handle(&mut b, Input::Gateway { account: account.clone(), event: end });
                handle(&mut b, Input::Gateway { account: account.clone(), event: inbound(&format!("w{next}")) });
                oldest += 1;
                next += 1;
            }
            total
        })
    });
    group.finish();
}

fn full_lifecycle(c: &mut Criterion) {
    let mut group = c.benchmark_group("lifecycle");
    let mut fixture: Option<Bed> = None;
    let mut n = 0u64;
    group.bench_function("round_robin/1000", |bench| {
        let b = fixture.get_or_insert_with(|| bed(Strategy::RoundRobin, 1_000, QueueSettings::default()));
        let account = b.account.clone();
        bench.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                n += 1;
                let id = format!("c{n}");
                let start = Instant::now();
                let h = b.engine.handle(b.now, Input::Gateway { account: account.clone(), event: inbound(&id) });
                let offer = b.engine.drain_outputs().find_map(|o| match o {
                    Output::User { user, msg: AgentMessage::Offer { offer_id, .. }, .. } => Some((user, offer_id)),
                    _ => None,
                });
                let Some((user, offer_id)) = offer else { panic!("no offer: {h:?}") };
                let conn = b.conns[user.as_str()][0];
                b.engine.handle(
                    b.now,
                    Input::Agent {
                        account: account.clone(),
                        conn,
                        ref_: None,
                        cmd: AgentCommand::OfferAccept { offer_id },
                    },
                );
                b.engine.drain_outputs().for_each(drop);
                let answered = GatewayEvent::CallAnswered { call_id: id.as_str().into(), agent: user.clone() };
                b.engine.handle(b.now, Input::Gateway { account: account.clone(), event: answered });
                b.engine.drain_outputs().for_each(drop);
                b.now = b.now + Duration::from_secs(60);
                let ended = GatewayEvent::CallEnded { call_id: id.as_str().into(), reason: EndReason::AgentHangup };
                b.engine.handle(b.now, Input::Gateway { account: account.clone(), event: ended });
                b.engine.drain_outputs().for_each(drop);
                b.now = b.now + Duration::from_secs(5);
                b.engine.handle(b.now, Input::Tick);
                b.engine.drain_outputs().for_each(drop);
                total += start.elapsed();
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, routing_decision, cold_routing_decision, agent_becomes_available, full_lifecycle);
criterion_main!(benches);
