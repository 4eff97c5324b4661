//! Offers: ringing one user for one entry. A user has at most one offer (its
//! activity is `Ringing(offer)`), and an entry ends up with at most one
//! winner: accepting takes the entry out of the queue and revokes every
//! other offer before anything else can happen.

use super::account::Account;
use super::ids::OfferId;
use super::output::RouteKey;
use super::queue::{EntryKind, Phase};
use super::settings::Strategy;
use super::time::{Instant, millis};
use super::timers::{Timer, TimerKey};
use super::user::{Activity, Wants};
use super::{Seq, UserIx};
use crate::protocol::Ref;
use crate::protocol::agent::{AgentMessage, LostReason, OfferKind, RevokeReason};
use crate::protocol::gateway::GatewayCommand;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Offer {
    pub(crate) id: OfferId,
    pub(crate) user: UserIx,
    pub(crate) entry: Seq,
    pub(crate) expires_at: Instant,
    pub(crate) timer: TimerKey,
}

/// Why an offer stopped (other than being accepted).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum OfferEnd {
    /// The user turned it down from one device: the user's devices hear
    /// `offer.revoked` (`reassigned`), or the others would ring on for a
    /// call that has already moved on.
    Declined,
    Expired,
    /// The user's last device went away, or the user is being deactivated
    /// (its devices are closed at once): the call moves on as if the offer
    /// had expired, but it does not count as a miss. Nobody is left to tell.
    Withdrawn,
    /// The user went away or dialled out while rung: as `Withdrawn`, and
    /// the user's devices hear `offer.revoked` (`reassigned`). Its other
    /// devices are still ringing, and the device that sent the command may
    /// not know this offer: a timer due at the same instant can ring the
    /// user for another call just before the command is handled.
    Released,
    Revoked(RevokeReason),
}

impl Account {
    /// Rings `u` for the entry. The caller has checked `u` is eligible.
    pub(crate) fn offer_one(&mut self, seq: Seq, u: UserIx) -> OfferId {
        self.counters.offer += 1;
        let id = OfferId(self.counters.offer);
        let now = self.now;
        let e = &self.entries[&seq];
        let n = e.number;
        let number = self.number(n);
        let expires_at = now + number.routing.ring_timeout;
        let ring_all = number.routing.strategy == Strategy::RingAll;
        let key = e.key();
        let timer = self.arm(expires_at, Timer::OfferExpiry(id));
        self.offers.insert(id, Offer { id, user: u, entry: seq, expires_at, timer });
        let msg = self.offer_message(id);
        if let Some(e) = self.entries.get_mut(&seq) {
            e.offers.push(id);
            if !e.rung.contains(&u) {
                e.rung.push(u);
            }
        }
        let pos = self.position_in(u, n);
        let number = self.number_mut(n);
        if !ring_all {
            number.ready.remove(&key);
        }
        if pos.is_some() {
            number.rr_last = pos;
        }
        if let Some(msg) = msg {
            self.send_user(u, msg);
        }
        self.set_activity(u, Activity::Ringing(id));
        id
    }

    /// The `offer` message for a pending offer, with the time it has left.
    pub(crate) fn offer_message(&self, id: OfferId) -> Option<AgentMessage> {
        let o = self.offers.get(&id)?;
        let e = self.entries.get(&o.entry)?;
        let (kind, call_id, callback_id) = match &e.kind {
            EntryKind::Call { call_id } => (OfferKind::Inbound, Some(call_id.clone()), None),
            EntryKind::Callback { callback_id, .. } => (OfferKind::Callback, None, Some(callback_id.clone())),
        };
        Some(AgentMessage::Offer {
            offer_id: id,
            kind,
            call_id,
            callback_id,
            number: self.number(e.number).id.clone(),
            from: e.from.clone(),
            expires_in_ms: millis(o.expires_at.saturating_since(self.now)),
        })
    }

    /// Ends an offer that was not accepted. The user is free again; the
    /// entry is routed again once it has no offer left.
    pub(crate) fn end_offer(&mut self, id: OfferId, why: OfferEnd) {
        let Some(o) = self.offers.remove(&id) else {
            return;
        };
        self.timers.cancel(Some(o.timer));
        let u = o.user;
        let mut auto_away = None;
        if let Some(e) = self.entries.get_mut(&o.entry) {
            e.offers.retain(|&x| x != id);
            if matches!(why, OfferEnd::Declined | OfferEnd::Expired | OfferEnd::Withdrawn | OfferEnd::Released)
                && !e.tried.contains(&u)
            {
                e.tried.push(u);
            }
            let n = e.number;
            if e.phase == Phase::Queued && e.offers.is_empty() {
                let key = e.key();
                self.number_mut(n).ready.insert(key);
                self.dirty.insert(key);
            }
            auto_away = Some(self.number(n).routing.auto_away_after_missed);
        }
        let (lost, revoke) = match why {
            OfferEnd::Withdrawn => (LostReason::TooLate, None),
            // No `declined` reason: a new value could break clients that
            // reject unknown ones, and `reassigned` already means "this
            // offer is off, the call went another way".
            OfferEnd::Declined | OfferEnd::Released => (LostReason::TooLate, Some(RevokeReason::Reassigned)),
            OfferEnd::Expired => (LostReason::TooLate, Some(RevokeReason::Expired)),
            OfferEnd::Revoked(RevokeReason::AnsweredElsewhere) => {
                (LostReason::AnsweredElsewhere, Some(RevokeReason::AnsweredElsewhere))
            }
            OfferEnd::Revoked(r) => (LostReason::Gone, Some(r)),
        };
        let user = self.user_mut(u);
        user.remember_ended_offer(id, lost);
        match why {
            OfferEnd::Expired => user.missed_in_row += 1,
            OfferEnd::Declined => user.missed_in_row = 0,
            _ => {}
        }
        let away = matches!(auto_away, Some(limit) if limit > 0 && user.missed_in_row >= limit);
        if let Some(reason) = revoke {
            self.send_user(u, AgentMessage::OfferRevoked { offer_id: id, reason });
        }
        if self.user(u).activity == Activity::Ringing(id) {
            self.change_user(u, |user, _| {
                user.activity = Activity::Idle;
                if away {
                    // Several offers in a row went unanswered: stop ringing
                    // a phone nobody is at.
                    user.wants = Wants::Away(Some("missed_offers".into()));
                    user.missed_in_row = 0;
                }
            });
        }
    }

    /// `u` accepts offer `id`: the first accept wins, everyone else's offer
    /// for the same entry is revoked, and the gateway is told to connect.
    pub(crate) fn accept(&mut self, u: UserIx, id: OfferId, ref_: Option<Ref>) {
        let Some(o) = self.offers.get(&id).filter(|o| o.user == u) else {
            let reason =
                self.user(u).ended_offers.iter().find(|(x, _)| *x == id).map(|&(_, r)| r).unwrap_or(LostReason::Gone);
            self.send_user(u, AgentMessage::OfferLost { ref_, offer_id: id, reason });
            return;
        };
        let seq = o.entry;
        let timer = o.timer;
        self.offers.remove(&id);
        self.timers.cancel(Some(timer));
        // Out of the queue first, so revoking the others cannot re-route it.
        self.dequeue(seq);
        let (kind, others) = {
            let Some(e) = self.entries.get_mut(&seq) else {
                return;
            };
            e.offers.retain(|&x| x != id);
            e.phase = Phase::Connecting { agent: u, dial: None };
            (e.kind.clone(), std::mem::take(&mut e.offers))
        };
        for other in others {
            self.end_offer(other, OfferEnd::Revoked(RevokeReason::AnsweredElsewhere));
        }
        self.user_mut(u).missed_in_row = 0;
        let agent = self.user(u).id.clone();
        match kind {
            EntryKind::Call { call_id } => {
                self.set_activity(u, Activity::OnCall(call_id.clone()));
                self.send_user(
                    u,
                    AgentMessage::OfferWon { ref_, offer_id: id, call_id: Some(call_id.clone()), callback_id: None },
                );
                self.send_gateway(GatewayCommand::CallBridge { call_id, agent });
            }
            EntryKind::Callback { callback_id, phone, .. } => {
                let dial = self.new_call_id();
                if let Some(e) = self.entries.get_mut(&seq) {
                    e.phase = Phase::Connecting { agent: u, dial: Some(dial.clone()) };
                }
                let n = self.entries[&seq].number;
                let caller_id = self.number(n).id.clone();
                self.bind(RouteKey::Call(dial.clone()));
                self.set_activity(u, Activity::OnCall(dial.clone()));
                self.send_user(
                    u,
                    AgentMessage::OfferWon {
                        ref_,
                        offer_id: id,
                        call_id: None,
                        callback_id: Some(callback_id.clone()),
                    },
                );
                self.send_gateway(GatewayCommand::CallbackDial {
                    callback_id,
                    call_id: dial,
                    agent,
                    to: phone,
                    caller_id,
                });
            }
        }
    }

    /// Ends whatever offer `u` has pending, as `why`.
    pub(crate) fn end_pending_offer(&mut self, u: UserIx, why: OfferEnd) {
        if let Activity::Ringing(id) = self.user(u).activity {
            self.end_offer(id, why);
        }
    }

    pub(crate) fn on_offer_expiry(&mut self, id: OfferId) {
        if self.offers.contains_key(&id) {
            self.end_offer(id, OfferEnd::Expired);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::core::settings::{QueueSettings, RoutingSettings, Strategy};
    use crate::core::testkit::Bed;
    use crate::protocol::agent::{AgentCommand, AgentMessage, LostReason, RevokeReason, Status};
    use crate::protocol::gateway::GatewayCommand;
    use std::time::Duration;

    const N: &str = "+15550100";

    fn bed(strategy: Strategy, agents: &[&str], auto_away: u32) -> Bed {
        let mut b = Bed::new();
        b.agents(agents);
        let routing = RoutingSettings { strategy, auto_away_after_missed: auto_away, ..Default::default() };
        assert!(b.number(N, agents, routing, QueueSettings::default()).result.is_ok());
        for a in agents {
            b.connect(a);
        }
        b.take();
        b
    }

    #[test]
    fn ring_timeout_revokes_and_frees_the_agent() {
        let mut b = bed(Strategy::RingInOrder, &["a", "b"], 0);
        b.inbound("c1", N);
        let oa = b.offer_to("a");
        assert_eq!(b.status_of("a"), Status::Ringing);
        b.take();
        b.advance(Duration::from_millis(14_999));
        assert!(b.offered_users().is_empty(), "not before the timeout");
        b.advance(Duration::from_millis(1));
        assert!(b.user_msgs("a").contains(&AgentMessage::OfferRevoked { offer_id: oa, reason: RevokeReason::Expired }));
        assert_eq!(b.offered_users(), ["b"]);
        assert_eq!(b.status_of("a"), Status::Available, "a missed offer never leaves an agent stuck");
        b.take();
        b.accept("a", oa);
        assert!(matches!(b.user_msgs("a")[..], [AgentMessage::OfferLost { reason: LostReason::TooLate, .. }]));
        b.check();
    }

    #[test]
    fn decline_moves_on_at_once_and_is_not_a_miss() {
        let mut b = bed(Strategy::RoundRobin, &["a", "b"], 1);
        b.inbound("c1", N);
        let oa = b.offer_to("a");
        b.take();
        assert!(b.decline("a", oa).result.is_ok());
        assert_eq!(b.offered_users(), ["b"]);
        assert_eq!(b.status_of("a"), Status::Available, "a decline does not count towards auto-away");
        // Declining again is an error, not a crash.
        assert!(b.decline("a", oa).result.is_err());
        b.check();
    }

    /// A decline from one device must stop the user's other devices
    /// ringing: they hear `offer.revoked` like on any other end of the offer.
    #[test]
    fn declining_on_one_device_revokes_the_offer_on_all_of_them() {
        use crate::core::Input;
        let mut b = bed(Strategy::RingInOrder, &["a", "b"], 0);
        let desk = b.connect("a");
        b.take();
        b.inbound("c1", N);
        let o = b.offer_to("a");
        b.take();
        let h = b.input(Input::Agent {
            account: b.account.clone(),
            conn: desk,
            ref_: None,
            cmd: AgentCommand::OfferDecline { offer_id: o },
        });
        assert!(h.result.is_ok(), "{h:?}");
        // Addressed to the user, so the shell fans it out to every device.
        let msgs = b.user_msgs("a");
        let revoked = AgentMessage::OfferRevoked { offer_id: o, reason: RevokeReason::Reassigned };
        assert_eq!(msgs.first(), Some(&revoked), "before the status change: {msgs:?}");
        assert_eq!(msgs.iter().filter(|m| **m == revoked).count(), 1, "{msgs:?}");
        assert_eq!(b.offered_users(), ["b"]);
        b.take();
        b.accept("a", o);
        assert!(matches!(b.user_msgs("a")[..], [AgentMessage::OfferLost { reason: LostReason::TooLate, .. }]));
        b.check();
    }

    #[test]
    fn auto_away_after_n_missed_offers_in_a_row() {
        let mut b = bed(Strategy::RingInOrder, &["a"], 2);
        b.inbound("c1", N);
        b.advance(Duration::from_secs(15));
        assert_eq!(b.status_of("a"), Status::Ringing, "one miss: rung again after the full cycle");
        b.take();
        b.advance(Duration::from_secs(15));
        assert_eq!(b.status_of("a"), Status::Away);
        assert!(b.user_msgs("a").contains(&AgentMessage::Status {
            status: Status::Away,
            reason: Some("missed_offers".into()),
            until: None
        }));
        assert!(b.gateway_cmds().iter().any(|c| matches!(c, GatewayCommand::CallQueued { .. })));
        b.take();
        // Coming back clears the streak and picks up the waiting call.
        b.agent("a", AgentCommand::StatusSet { status: crate::protocol::agent::WantedStatus::Available, reason: None });
        assert_eq!(b.offered_users(), ["a"]);
        b.check();
    }

    #[test]
    fn an_accept_resets_the_missed_streak() {
        let mut b = bed(Strategy::RingInOrder, &["a"], 2);
        b.inbound("c1", N);
        b.advance(Duration::from_secs(15));
        let o = b.offers_to("a").last().map(|x| x.0).unwrap();
        b.accept("a", o);
        b.answered("c1", "a");
        b.ended("c1", crate::protocol::gateway::EndReason::AgentHangup);
        b.inbound("c2", N);
        b.advance(Duration::from_secs(15));
        assert_ne!(b.status_of("a"), Status::Away, "only one miss since the accept");
        b.check();
    }

    #[test]
    fn two_devices_both_ring_first_accept_wins_second_loses() {
        let mut b = bed(Strategy::RingAll, &["a"], 0);
        let phone = b.conns["a"][0];
        let desk = b.connect("a");
        b.take();
        b.inbound("c1", N);
        // One offer, addressed to the user: the shell fans it out to both devices.
        let o = b.offer_to("a");
        b.take();
        b.input(crate::core::Input::Agent {
            account: b.account.clone(),
            conn: desk,
            ref_: Some("r1".into()),
            cmd: AgentCommand::OfferAccept { offer_id: o },
        });
        assert!(
            b.user_msgs("a").iter().any(|m| matches!(m, AgentMessage::OfferWon { ref_: Some(r), .. } if &**r == "r1"))
        );
        b.take();
        b.input(crate::core::Input::Agent {
            account: b.account.clone(),
            conn: phone,
            ref_: None,
            cmd: AgentCommand::OfferAccept { offer_id: o },
        });
        assert!(matches!(b.user_msgs("a")[..], [AgentMessage::OfferLost { .. }]));
        assert_eq!(b.gateway_cmds().len(), 0, "no second bridge");
        b.check();
    }

    #[test]
    fn a_device_connecting_while_ringing_gets_the_offer() {
        let mut b = bed(Strategy::RingAll, &["a"], 0);
        b.inbound("c1", N);
        let o = b.offer_to("a");
        b.take();
        b.advance(Duration::from_secs(5));
        let desk = b.connect("a");
        let msgs = b.conn_msgs(desk);
        assert!(matches!(msgs[0], AgentMessage::Hello { status: Status::Ringing, .. }));
        assert!(matches!(msgs[1], AgentMessage::Offer { offer_id, expires_in_ms: 10_000, .. } if offer_id == o));
    }

    #[test]
    fn disconnect_while_ringing_moves_the_call_on_at_once() {
        let mut b = bed(Strategy::RingInOrder, &["a", "b"], 1);
        b.inbound("c1", N);
        b.offer_to("a");
        b.take();
        let conn = b.conns["a"][0];
        b.disconnect(conn);
        assert_eq!(b.offered_users(), ["b"]);
        assert_eq!(b.status_of("a"), Status::Offline);
        // Reconnecting shows no stale offer, and the withdrawal was not a miss.
        b.take();
        let c = b.connect("a");
        assert_eq!(b.conn_msgs(c).len(), 1, "hello only");
        assert_eq!(b.status_of("a"), Status::Available);
        b.check();
    }

    /// Going away or dialling out while rung turns the offer down, and the
    /// user hears it (a user's messages reach every device: the other one
    /// must stop ringing).
    #[test]
    fn away_or_dialling_out_while_ringing_revokes_the_offer() {
        use crate::protocol::agent::WantedStatus;
        let away = AgentCommand::StatusSet { status: WantedStatus::Away, reason: None };
        let dial = AgentCommand::CallDial { from: N.into(), to: "+15557770000".into() };
        for cmd in [away, dial] {
            let mut b = bed(Strategy::RingInOrder, &["a", "b"], 1);
            b.inbound("c1", N);
            let o = b.offer_to("a");
            b.take();
            assert!(b.agent("a", cmd.clone()).result.is_ok());
            let msgs = b.user_msgs("a");
            let revoked = AgentMessage::OfferRevoked { offer_id: o, reason: RevokeReason::Reassigned };
            assert_eq!(msgs.first(), Some(&revoked), "{cmd:?}: {msgs:?}");
            assert_eq!(b.offered_users(), ["b"], "{cmd:?}: the call moves on at once");
            b.take();
            b.accept("a", o);
            assert!(matches!(b.user_msgs("a")[..], [AgentMessage::OfferLost { reason: LostReason::TooLate, .. }]));
            b.check();
        }
    }

    /// After a restart no connection is left, and nobody is rung for a
    /// call on the way: not by the withdrawal of another user's offer, not
    /// by a ring timeout that fell due while the server was down.
    #[test]
    fn a_restart_takes_everyone_offline_before_anyone_is_rung() {
        use crate::core::Input;
        let mut b = bed(Strategy::RingInOrder, &["a", "b"], 1);
        b.inbound("c1", N);
        b.inbound("c2", N);
        let oa = b.offer_to("a");
        let ob = b.offer_to("b");
        b.take();
        // Down for longer than the ring timeout: both offers are due.
        b.now = b.now + Duration::from_secs(60);
        let h = b.input(Input::Restarted { account: "acme".into() });
        assert!(h.journal && h.result.is_ok(), "{h:?}");
        assert!(b.offered_users().is_empty(), "rung during the restart: {:#?}", b.out);
        assert!(b.engine.open_connections().is_empty());
        assert_eq!((b.status_of("a"), b.status_of("b")), (Status::Offline, Status::Offline));
        let again = b.input(Input::Restarted { account: "acme".into() });
        assert!(!again.journal && again.result.is_ok(), "nothing left to drop: {again:?}");
        b.take();
        b.input(Input::Tick);
        assert!(b.offered_users().is_empty(), "nobody connected");
        // The withdrawals were not misses (auto-away after one miss did not
        // fire), and the calls waited. A withdrawal still counts as the
        // user's turn on that call this cycle: `a` gets `c2`.
        b.conns.clear();
        b.connect("a");
        assert_eq!(b.offers_to("a").iter().map(|(_, c)| c.as_str()).collect::<Vec<_>>(), ["c2"]);
        b.take();
        b.accept("a", oa);
        b.accept("b", ob);
        assert!(b.user_msgs("a").iter().all(|m| !matches!(m, AgentMessage::OfferWon { .. })));
        assert_eq!(b.status_of("a"), Status::Ringing);
        b.check();
    }

    #[test]
    fn one_of_two_devices_leaving_keeps_the_offer() {
        let mut b = bed(Strategy::RingAll, &["a"], 0);
        let desk = b.connect("a");
        b.inbound("c1", N);
        b.take();
        b.disconnect(desk);
        assert_eq!(b.status_of("a"), Status::Ringing);
        assert!(b.offered_users().is_empty());
        b.check();
    }
}
