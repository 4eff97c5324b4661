//! Matching free agents with waiting work. Decisions are event-driven: they
//! run the moment an agent frees up or an entry needs an agent, never on a
//! polling tick.
//!
//! After every input the account *settles*: first each user who just became
//! eligible takes the oldest entry (priority, then arrival) among all the
//! numbers it serves (an entry that is the oldest for several of them goes
//! to the one its number's strategy prefers); then those of them who had
//! turned down every ready entry start a new cycle; then each entry that
//! lost its offers is routed by its number's strategy. Agents go first so that a freed agent serves
//! the longest-waiting caller across its numbers, not whichever call
//! happened to trigger the decision. New cycles wait for every freed agent's
//! pick because re-routing an entry by its strategy may ring any idle
//! target, and a freed one that has not picked yet could be rung for a
//! newer call than one waiting for it elsewhere.
//!
//! When settling ends, no eligible agent idles while an entry it could take
//! waits with no offer out (work conservation; checked by the simulation).

use super::account::Account;
use super::queue::{Phase, QKey};
use super::settings::Strategy;
use super::{Seq, UserIx};
use crate::protocol::gateway::GatewayCommand;

/// Whom a routing decision rings.
enum Choice {
    None,
    One(UserIx),
    Many(Vec<UserIx>),
}

impl Choice {
    fn is_none(&self) -> bool {
        matches!(self, Choice::None)
    }
}

impl Account {
    pub(crate) fn settle(&mut self) {
        loop {
            if let Some(u) = self.freed.pop_front() {
                if self.user(u).in_pools && !self.take_oldest(u) {
                    self.turned_all.push_back(u);
                }
                continue;
            }
            if let Some(u) = self.turned_all.pop_front() {
                if self.user(u).in_pools {
                    self.dispatch_agent(u);
                }
                continue;
            }
            if let Some(key) = self.dirty.pop_first() {
                self.route_entry(key.seq);
                continue;
            }
            break;
        }
    }

    /// A user became eligible: offer it the oldest ready entry it has not
    /// already turned down in this cycle. Returns false if there is none.
    ///
    /// When one input freed several users (a `ring_all` call answered
    /// revokes the others' offers), the entry goes to whichever of them its
    /// number's strategy prefers, not to the first one freed; `u` then
    /// looks again.
    fn take_oldest(&mut self, u: UserIx) -> bool {
        let Some(k) = self.oldest_for(u).0 else {
            return false;
        };
        let w = self.pick_among_freed(k, u);
        self.offer_and_announce(k.seq, &[w]);
        if w != u {
            self.freed.push_front(u);
        }
        true
    }

    /// Among `u` and the users freed with it for whom `key` is also the
    /// oldest entry (so queue order holds for whoever gets it), the one the
    /// entry's strategy picks. Idle users who were not freed have all turned
    /// the entry down already: it waited with no offer out while they idled.
    fn pick_among_freed(&self, key: QKey, u: UserIx) -> UserIx {
        let e = &self.entries[&key.seq];
        let number = self.number(e.number);
        let strategy = number.routing.strategy;
        if strategy == Strategy::RingAll || self.freed.is_empty() {
            return u;
        }
        let candidate = |v: UserIx| {
            v == u
                || (self.user(v).in_pools
                    && !e.tried.contains(&v)
                    && self.freed.contains(&v)
                    && self.oldest_for(v).0 == Some(key))
        };
        number
            .pool
            .select(strategy, number.rr_last, |pos| !candidate(number.targets[pos as usize]))
            .map_or(u, |p| number.targets[p as usize])
    }

    /// For an eligible user: the oldest ready entry it has not turned down
    /// in this cycle, and the oldest it has turned down that nobody is
    /// ringing.
    fn oldest_for(&self, u: UserIx) -> (Option<QKey>, Option<QKey>) {
        let mut best: Option<QKey> = None;
        let mut best_tried: Option<QKey> = None;
        for &(n, _) in &self.user(u).serves {
            for key in &self.number(n).ready {
                if best.is_some_and(|b| *key >= b) {
                    break;
                }
                let e = &self.entries[&key.seq];
                if !e.tried.contains(&u) {
                    best = Some(*key);
                    break;
                }
                if e.offers.is_empty() && best_tried.is_none_or(|b| *key < b) {
                    best_tried = Some(*key);
                }
            }
        }
        (best, best_tried)
    }

    /// As [`Self::take_oldest`]; if the user has turned down every ready
    /// entry, re-route the oldest of those with nobody ringing: a new cycle
    /// starts, which may well ring this user again.
    fn dispatch_agent(&mut self, u: UserIx) {
        while self.user(u).in_pools {
            let (best, best_tried) = self.oldest_for(u);
            if let Some(k) = best {
                self.offer_and_announce(k.seq, &[u]);
                return;
            }
            match best_tried {
                Some(k) if self.route_entry(k.seq) => {}
                _ => return,
            }
        }
    }

    /// Offers the entry by its number's strategy. Returns whether any offer
    /// went out. An entry nobody can take waits (or overflows).
    pub(crate) fn route_entry(&mut self, seq: Seq) -> bool {
        let Some(e) = self.entries.get(&seq) else {
            return false;
        };
        if e.phase != Phase::Queued {
            return false;
        }
        let n = e.number;
        let strategy = self.number(n).routing.strategy;
        if strategy != Strategy::RingAll && !e.offers.is_empty() {
            return false;
        }
        let mut chosen = self.choose(seq);
        if chosen.is_none() && e.offers.is_empty() && !self.number(n).pool.is_empty() {
            // Every eligible target has had its turn: start a new cycle.
            if let Some(e) = self.entries.get_mut(&seq) {
                e.tried.clear();
            }
            chosen = self.choose(seq);
        }
        match chosen {
            Choice::One(u) => self.offer_and_announce(seq, &[u]),
            Choice::Many(users) => self.offer_and_announce(seq, &users),
            Choice::None => {
                if self.entries.get(&seq).is_some_and(|e| e.offers.is_empty()) {
                    self.must_wait(seq);
                }
                return false;
            }
        }
        true
    }

    /// The targets to ring for this entry now, by strategy, among the
    /// number's idle pool minus those that tried it this cycle.
    fn choose(&self, seq: Seq) -> Choice {
        let e = &self.entries[&seq];
        let number = self.number(e.number);
        let skip = |pos: u32| e.tried.contains(&number.targets[pos as usize]);
        match number.routing.strategy {
            Strategy::RingAll => {
                let all: Vec<UserIx> =
                    number.pool.positions().filter(|&p| !skip(p)).map(|p| number.targets[p as usize]).collect();
                if all.is_empty() { Choice::None } else { Choice::Many(all) }
            }
            s => match number.pool.select(s, number.rr_last, skip) {
                Some(p) => Choice::One(number.targets[p as usize]),
                None => Choice::None,
            },
        }
    }

    /// Rings `users` for the entry and tells the gateway who is ringing.
    fn offer_and_announce(&mut self, seq: Seq, users: &[UserIx]) {
        for &u in users {
            #[cfg(debug_assertions)]
            self.assert_oldest_first(seq, u);
            self.offer_one(seq, u);
        }
        let Some(e) = self.entries.get(&seq) else {
            return;
        };
        let n = e.number;
        if let Some(call_id) = e.call_id().cloned() {
            let agents = users.iter().map(|&u| self.user(u).id.clone()).collect();
            self.send_gateway(GatewayCommand::CallRinging { call_id, agents });
        }
        self.mark_stats(n);
    }
}

impl Account {
    /// Queue order at decision time: when `u` is offered `seq`, nothing
    /// ahead of it on any of `u`'s numbers is offerable to `u` (ready and
    /// not already turned down by `u` this cycle). Debug builds only; the
    /// simulation runs it on every offer.
    #[cfg(debug_assertions)]
    fn assert_oldest_first(&self, seq: Seq, u: UserIx) {
        let key = self.entries[&seq].key();
        for &(n, _) in &self.user(u).serves {
            for k in self.number(n).ready.range(..key) {
                let e = &self.entries[&k.seq];
                assert!(
                    e.tried.contains(&u),
                    "queue order: {} offered {:?} while {:?} (ahead, on {}) was offerable",
                    self.user(u).id,
                    seq,
                    k.seq,
                    self.number(n).id
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::core::settings::{QueueSettings, RoutingSettings, Strategy};
    use crate::core::testkit::Bed;
    use crate::protocol::agent::{AgentCommand, AgentMessage, RevokeReason, Status, WantedStatus};
    use crate::protocol::gateway::{EndReason, GatewayCommand};
    use std::time::Duration;

    const N: &str = "+15550100";

    fn bed(strategy: Strategy, agents: &[&str]) -> Bed {
        let mut b = Bed::new();
        b.agents(agents);
        b.simple_number(N, agents, strategy);
        for a in agents {
            b.connect(a);
        }
        b.take();
        b
    }

    /// Answers and ends a call so its agent is free again (no wrap-up).
    fn complete(b: &mut Bed, call: &str, agent: &str) {
        let o = b.offer_to(agent);
        assert!(b.accept(agent, o).result.is_ok());
        b.answered(call, agent);
        b.ended(call, EndReason::AgentHangup);
        b.take();
    }

    #[test]
    fn ring_all_offers_everyone_and_first_accept_wins() {
        let mut b = bed(Strategy::RingAll, &["a", "b", "c"]);
        b.inbound("c1", N);
        assert_eq!(b.offered_users(), ["a", "b", "c"]);
        assert!(b.gateway_cmds().contains(&GatewayCommand::CallRinging {
            call_id: "c1".into(),
            agents: vec!["a".into(), "b".into(), "c".into()]
        }));
        let ob = b.offer_to("b");
        let oa = b.offer_to("a");
        b.take();
        b.accept("b", ob);
        assert!(b.gateway_cmds().contains(&GatewayCommand::CallBridge { call_id: "c1".into(), agent: "b".into() }));
        assert!(
            b.user_msgs("a")
                .contains(&AgentMessage::OfferRevoked { offer_id: oa, reason: RevokeReason::AnsweredElsewhere })
        );
        b.take();
        // A late accept loses, and says why.
        b.accept("a", oa);
        assert!(matches!(
            b.user_msgs("a")[..],
            [AgentMessage::OfferLost { reason: crate::protocol::agent::LostReason::AnsweredElsewhere, .. }]
        ));
        assert!(!b.gateway_cmds().iter().any(|c| matches!(c, GatewayCommand::CallBridge { .. })));
        b.check();
    }

    #[test]
    fn ring_in_order_starts_at_the_top_for_every_call() {
        let mut b = bed(Strategy::RingInOrder, &["a", "b", "c"]);
        b.inbound("c1", N);
        assert_eq!(b.offered_users(), ["a"]);
        complete(&mut b, "c1", "a");
        b.inbound("c2", N);
        assert_eq!(b.offered_users(), ["a"], "each new call starts at the top");
        b.take();
        // With a busy, the next call goes to b.
        b.inbound("c3", N);
        assert_eq!(b.offered_users(), ["b"]);
        b.check();
    }

    #[test]
    fn ring_in_order_moves_down_on_decline_and_timeout_then_cycles() {
        let mut b = bed(Strategy::RingInOrder, &["a", "b", "c"]);
        b.inbound("c1", N);
        let oa = b.offer_to("a");
        b.take();
        b.decline("a", oa);
        assert_eq!(b.offered_users(), ["b"], "decline moves on at once");
        b.take();
        b.advance(Duration::from_secs(15));
        assert_eq!(b.offered_users(), ["c"], "ring timeout moves on");
        b.take();
        b.advance(Duration::from_secs(15));
        assert_eq!(b.offered_users(), ["a"], "after a full cycle it starts again at the top");
        b.check();
    }

    #[test]
    fn round_robin_starts_after_the_last_offered() {
        let mut b = bed(Strategy::RoundRobin, &["a", "b", "c"]);
        let mut order = Vec::new();
        for i in 0..7 {
            let call = format!("c{i}");
            b.inbound(&call, N);
            let who = b.offered_users();
            assert_eq!(who.len(), 1);
            order.push(who[0].clone());
            complete(&mut b, &call, &who[0].clone());
        }
        assert_eq!(order, ["a", "b", "c", "a", "b", "c", "a"]);
        b.check();
    }

    #[test]
    fn round_robin_skips_busy_targets_without_losing_their_turn_order() {
        let mut b = bed(Strategy::RoundRobin, &["a", "b", "c"]);
        b.inbound("c1", N);
        let oa = b.offer_to("a");
        b.accept("a", oa);
        b.take();
        b.inbound("c2", N);
        assert_eq!(b.offered_users(), ["b"]);
        complete(&mut b, "c2", "b");
        b.inbound("c3", N);
        assert_eq!(b.offered_users(), ["c"]);
        complete(&mut b, "c3", "c");
        // a is still on c1: the cursor wraps to b.
        b.inbound("c4", N);
        assert_eq!(b.offered_users(), ["b"]);
        b.check();
    }

    #[test]
    fn longest_idle_picks_who_has_waited_longest() {
        let mut b = bed(Strategy::LongestIdle, &["a", "b", "c"]);
        // All became available at the same instant: configured order breaks ties.
        b.inbound("c1", N);
        assert_eq!(b.offered_users(), ["a"]);
        b.advance(Duration::from_secs(1));
        complete(&mut b, "c1", "a");
        b.advance(Duration::from_secs(1));
        b.inbound("c2", N);
        assert_eq!(b.offered_users(), ["b"]);
        b.advance(Duration::from_secs(1));
        complete(&mut b, "c2", "b");
        b.inbound("c3", N);
        assert_eq!(b.offered_users(), ["c"]);
        b.advance(Duration::from_secs(1));
        complete(&mut b, "c3", "c");
        // a finished first, so a has now been idle longest.
        b.inbound("c4", N);
        assert_eq!(b.offered_users(), ["a"]);
        b.check();
    }

    #[test]
    fn longest_idle_counts_from_coming_back_available() {
        let mut b = bed(Strategy::LongestIdle, &["a", "b"]);
        b.agent("a", AgentCommand::StatusSet { status: WantedStatus::Away, reason: Some("lunch".into()) });
        b.advance(Duration::from_secs(5));
        b.agent("a", AgentCommand::StatusSet { status: WantedStatus::Available, reason: None });
        b.take();
        b.inbound("c1", N);
        assert_eq!(b.offered_users(), ["b"], "b has been available longer than a");
        b.check();
    }

    #[test]
    fn freed_agent_takes_the_oldest_call_across_its_numbers() {
        let mut b = Bed::new();
        b.agents(&["a", "b"]);
        b.simple_number("+15550100", &["a"], Strategy::RingAll);
        b.simple_number("+15550200", &["a", "b"], Strategy::RingAll);
        b.connect("a");
        b.inbound("busy", "+15550100");
        let o = b.offer_to("a");
        b.accept("a", o);
        b.answered("busy", "a");
        // Two callers wait: first on 200, then on 100.
        b.inbound("old", "+15550200");
        b.advance(Duration::from_secs(1));
        b.inbound("new", "+15550100");
        b.take();
        b.ended("busy", EndReason::CallerHangup);
        assert_eq!(b.offers_to("a").iter().map(|(_, c)| c.as_str()).collect::<Vec<_>>(), ["old"]);
        b.check();
    }

    #[test]
    fn priority_beats_age_across_numbers() {
        let mut b = Bed::new();
        b.agents(&["a"]);
        b.simple_number("+15550100", &["a"], Strategy::RingAll);
        b.simple_number("+15550200", &["a"], Strategy::RingAll);
        b.inbound("old", "+15550100");
        b.inbound_prio("vip", "+15550200", Some(5));
        b.take();
        b.connect("a");
        assert_eq!(b.offers_to("a")[0].1, "vip");
        b.check();
    }

    #[test]
    fn an_agent_is_never_offered_two_calls() {
        let mut b = bed(Strategy::RingAll, &["a"]);
        b.simple_number("+15550200", &["a"], Strategy::RingAll);
        b.inbound("c1", N);
        b.inbound("c2", "+15550200");
        assert_eq!(b.offers_to("a").len(), 1);
        assert!(
            b.gateway_cmds()
                .iter()
                .any(|c| matches!(c, GatewayCommand::CallQueued { call_id, .. } if call_id.as_str() == "c2"))
        );
        b.check();
    }

    #[test]
    fn ring_all_adds_agents_who_free_up_while_it_rings() {
        let mut b = bed(Strategy::RingAll, &["a", "b"]);
        b.agent("b", AgentCommand::StatusSet { status: WantedStatus::Away, reason: None });
        b.take();
        b.inbound("c1", N);
        assert_eq!(b.offered_users(), ["a"]);
        b.take();
        b.agent("b", AgentCommand::StatusSet { status: WantedStatus::Available, reason: None });
        assert_eq!(b.offered_users(), ["b"]);
        assert_eq!(b.status_of("a"), Status::Ringing);
        b.check();
    }

    #[test]
    fn settings_change_takes_effect_without_dropping_waiting_calls() {
        let mut b = bed(Strategy::RingAll, &["a"]);
        b.agents(&["z"]);
        b.agent("a", AgentCommand::StatusSet { status: WantedStatus::Away, reason: None });
        b.inbound("c1", N);
        b.take();
        b.connect("z");
        assert!(b.offers_to("z").is_empty(), "z does not serve the number yet");
        let routing = RoutingSettings {
            strategy: Strategy::RingInOrder,
            targets: Some(vec!["z".into(), "a".into()]),
            ..Default::default()
        };
        b.number(N, &["a"], routing, QueueSettings::default());
        assert_eq!(b.offers_to("z").len(), 1, "the waiting call is offered under the new targets");
        b.check();
    }

    /// Several agents freed by one input each get their own oldest entry
    /// before any of them starts a new cycle: re-routing a call the first
    /// one turned down must not ring the second with it while an older
    /// call on the second's other number waits (found by the simulation,
    /// seed 2024).
    #[test]
    fn agents_freed_together_each_take_their_oldest_before_a_new_cycle() {
        const A: &str = "+15550101"; // ring_all u, v
        const B: &str = "+15550102"; // v only
        const C: &str = "+15550103"; // ring_in_order u, v
        let mut b = Bed::new();
        b.agents(&["u", "v"]);
        b.simple_number(A, &["u", "v"], Strategy::RingAll);
        b.simple_number(B, &["v"], Strategy::RingInOrder);
        b.simple_number(C, &["u", "v"], Strategy::RingInOrder);
        b.connect("u");
        b.connect("v");
        b.agent("v", AgentCommand::StatusSet { status: WantedStatus::Away, reason: None });
        b.take();
        b.inbound_prio("c99", C, Some(0));
        let o = b.offer_to("u");
        b.inbound_prio("c126", A, Some(5));
        b.take();
        // u turns c99 down and takes c126, which then rings v too.
        b.decline("u", o);
        assert_eq!(b.offers_to("u").iter().map(|(_, c)| c.as_str()).collect::<Vec<_>>(), ["c126"]);
        b.take();
        b.agent("v", AgentCommand::StatusSet { status: WantedStatus::Available, reason: None });
        assert_eq!(b.offers_to("v").iter().map(|(_, c)| c.as_str()).collect::<Vec<_>>(), ["c126"]);
        b.take();
        // Ahead of c99 (priority), on a number only v serves.
        b.inbound_prio("c97", B, Some(3));
        assert!(b.offered_users().is_empty());
        b.take();
        // Both are freed at once: v takes c97, its oldest; u, having
        // turned down everything else, starts a new cycle on c99.
        b.ended("c126", EndReason::CallerHangup);
        assert_eq!(b.offers_to("v").iter().map(|(_, c)| c.as_str()).collect::<Vec<_>>(), ["c97"]);
        assert_eq!(b.offers_to("u").iter().map(|(_, c)| c.as_str()).collect::<Vec<_>>(), ["c99"]);
        b.check();
    }

    /// x, y and z ring for a `ring_all` call; z answers, which frees x and
    /// y in one input while b1 waits on a `longest_idle` number of x and y.
    /// y has been idle longer, so y gets it, whichever was freed first.
    #[test]
    fn agents_freed_together_are_picked_by_the_waiting_entrys_strategy() {
        const A: &str = "+15550101";
        const B: &str = "+15550102";
        for (first, second) in [("y", "x"), ("x", "y")] {
            let mut b = Bed::new();
            b.agents(&["x", "y", "z"]);
            b.simple_number(A, &["x", "y", "z"], Strategy::RingAll);
            b.simple_number(B, &["x", "y"], Strategy::LongestIdle);
            b.connect(first);
            b.advance(Duration::from_secs(10));
            b.connect(second);
            b.connect("z");
            b.take();
            b.inbound("a1", A);
            let oz = b.offer_to("z");
            b.inbound("b1", B);
            b.take();
            assert!(b.accept("z", oz).result.is_ok());
            assert_eq!(b.offers_to(first).len(), 1, "{first} has been idle longest: it gets b1");
            assert!(b.offers_to(second).is_empty(), "{second} stays idle");
            b.check();
        }
    }
}
