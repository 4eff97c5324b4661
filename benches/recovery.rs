//! Start-up recovery: open the store and replay a journal of 1,000,000
//! realistic inputs (call life cycles: inbound, accept, answered, ended)
//! through fresh engines. Run with `cargo bench --bench recovery`.
//!
//! The fixture is built once, outside the measurement, by driving an
//! engine and journaling what it accepts, exactly as a shard does.

#![allow(clippy::disallowed_methods)] // benchmarks time themselves

use criterion::{Criterion, criterion_group, criterion_main};
use ringline::core::settings::{QueueSettings, RoutingSettings, Strategy};
use ringline::core::testkit::Bed;
use ringline::core::{Input, Output};
use ringline::protocol::agent::{AgentCommand, AgentMessage};
use ringline::protocol::gateway::{EndReason, GatewayEvent};
use ringline::server::{encode_input, recover};
use ringline::store::{Store, StoreConfig};
use std::path::Path;
use std::time::Duration;

/// Journals `entries` inputs from call life cycles on 10 numbers with 100
/// agents into a store under `dir`.
fn build_journal(dir: &Path, entries: u64) {
    let (store, _) = Store::open(StoreConfig::new(dir)).expect("store");
    let journal = store.journal();
    let mut b = Bed::new();
    let mut written = 0u64;
    let mut record = |b: &Bed, input: &Input, journal_it: bool| {
        if journal_it {
            journal.append(b.now, &b.account, encode_input(input).expect("encode"), Vec::new());
            written += 1;
        }
        written
    };
    // Provisioning and logins are journaled too.
    let agents: Vec<String> = (0..100).map(|i| format!("agent{i}")).collect();
    for (i, a) in agents.iter().enumerate() {
        let input = Input::Admin {
            account: b.account.clone(),
            actor: ringline::core::Actor::System,
            cmd: Box::new(ringline::core::AdminCommand::UpsertUser {
                user: a.as_str().into(),
                email: format!("{a}@x.test"),
                role: ringline::core::team::Role::Agent,
                token_hash: None,
            }),
        };
        let h = b.input(input.clone());
        record(&b, &input, h.journal);
        let _ = i;
    }
    for n in 0..10 {
        let assigned: Vec<ringline::core::ids::UserId> =
            agents[n * 10..n * 10 + 10].iter().map(|a| a.as_str().into()).collect();
        let spec = ringline::core::NumberSpec {
            name: format!("Line {n}"),
            assigned,
            caller_id: vec![],
            routing: RoutingSettings {
                strategy: Strategy::ALL[n % 4],
                wrap_up: Duration::from_secs(5),
                ..Default::default()
            },
            queue: QueueSettings::default(),
        };
        let input = Input::Admin {
            account: b.account.clone(),
            actor: ringline::core::Actor::System,
            cmd: Box::new(ringline::core::AdminCommand::UpsertNumber { number: format!("+1555010{n}").into(), spec }),
        };
        let h = b.input(input.clone());
        record(&b, &input, h.journal);
    }
    for (i, a) in agents.iter().enumerate() {
        let input = Input::Connect {
            account: b.account.clone(),
            user: a.as_str().into(),
            conn: ringline::core::ids::ConnId(i as u64),
        };
        let h = b.input(input.clone());
        record(&b, &input, h.journal);
        b.conns.entry(a.as_str().into()).or_default().push(ringline::core::ids::ConnId(i as u64));
    }
    let mut call = 0u64;
    while record(&b, &Input::Tick, false) < entries {
        call += 1;
        b.now = b.now + Duration::from_millis(7);
        let id = format!("c{call}");
        let inbound = Input::Gateway {
            account: b.account.clone(),
            event: GatewayEvent::CallInbound {
                call_id: id.as_str().into(),
                to: format!("+1555010{}", call % 10).into(),
                from: "+15551230001".into(),
                priority: None,
            },
        };
        b.take();
        let h = b.input(inbound.clone());
        record(&b, &inbound, h.journal);
        let offer = b.out.iter().find_map(|o| match o {
            Output::User { user, msg: AgentMessage::Offer { offer_id, .. }, .. } => Some((user.clone(), *offer_id)),
            _ => None,
        });
        let Some((user, offer_id)) = offer else {
            // Everyone busy: let the caller go.
            let end = Input::Gateway {
                account: b.account.clone(),
                event: GatewayEvent::CallEnded { call_id: id.as_str().into(), reason: EndReason::CallerHangup },
            };
            let h = b.input(end.clone());
            record(&b, &end, h.journal);
            continue;
        };
        let conn = b.conns[user.as_str()][0];
        let accept =
            Input::Agent { account: b.account.clone(), conn, ref_: None, cmd: AgentCommand::OfferAccept { offer_id } };
        let h = b.input(accept.clone());
        record(&b, &accept, h.journal);
        let answered = Input::Gateway {
            account: b.account.clone(),
            event: GatewayEvent::CallAnswered { call_id: id.as_str().into(), agent: user.clone() },
        };
        let h = b.input(answered.clone());
        record(&b, &answered, h.journal);
        b.now = b.now + Duration::from_millis(3);
        let end = Input::Gateway {
            account: b.account.clone(),
            event: GatewayEvent::CallEnded { call_id: id.as_str().into(), reason: EndReason::AgentHangup },
        };
        let h = b.input(end.clone());
        record(&b, &end, h.journal);
    }
    journal.flush().expect("flush");
    store.close().expect("close");
}

fn recovery(c: &mut Criterion) {
    // Under `cargo test --benches` a small fixture keeps it quick.
    let entries = if std::env::args().any(|a| a == "--bench") { 1_000_000 } else { 2_000 };
    let dir = tempfile::tempdir().expect("dir");
    let started = std::time::Instant::now();
    build_journal(dir.path(), entries);
    eprintln!("built a journal of {entries} entries in {:?}", started.elapsed());
    let mut group = c.benchmark_group("recovery");
    group.sample_size(10).measurement_time(Duration::from_secs(40));
    group.bench_function(format!("replay_{entries}_entries"), |bench| {
        bench.iter(|| {
            let r = recover(dir.path(), 2).expect("recover");
            assert!(r.replayed >= entries, "replayed {}", r.replayed);
            r
        })
    });
    group.finish();
}

criterion_group!(benches, recovery);
criterion_main!(benches);
