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
    Declined,
    Expired,
    /// The user's last device went away (or it went away / dialled out):
    /// the call moves on as if the offer had expired, but it does not count
    /// as a miss.
    Withdrawn,
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
        let (kind, call_id, callback_id) = match &e.kind {
            EntryKind::Call { call_id } => (OfferKind::Inbound, Some(call_id.clone()), None),
            EntryKind::Callback { callback_id, .. } => (OfferKind::Callback, None, Some(callback_id.clone())),
        };
        let msg = AgentMessage::Offer {
            offer_id: id,
            kind,
            call_id,
            callback_id,
            number: number.id.clone(),
            from: e.from.clone(),
            expires_in_ms: millis(number.routing.ring_timeout),
        };
        let key = e.key();
        let timer = self.arm(expires_at, Timer::OfferExpiry(id));
        self.offers.insert(id, Offer { id, user: u, entry: seq, expires_at, timer });
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
        self.send_user(u, msg);
        self.set_activity(u, Activity::Ringing(id));
        id
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
            if matches!(why, OfferEnd::Declined | OfferEnd::Expired | OfferEnd::Withdrawn) && !e.tried.contains(&u) {
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
            OfferEnd::Declined | OfferEnd::Withdrawn => (LostReason::TooLate, None),
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
                let dial = self.new_call_id("cb");
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
