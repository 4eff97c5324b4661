//! Recently finished ids, so a gateway that re-sends events after a
//! reconnect gets a no-op instead of a second call. Kept for
//! [`RECENT_WINDOW`]; an id older than that is forgotten (and the shell drops
//! its route), so a re-send after 15 minutes is answered `not_found`.
//!
//! Beside them, the *hand-offs*: commands that give a call or a message to
//! the gateway for good (voicemail, forward or hang-up at overflow; an SMS
//! to send). The engine is done with those, but a gateway connection can
//! drop with the command in flight, and then the caller would hold forever
//! or the text never leave. So each is kept until the gateway reports on
//! it (`call.ended`, `voicemail.recorded`, `message.status`) or its id is
//! forgotten, and the shell sends it again whenever a gateway connects.

use super::NumberIx;
use super::account::Account;
use super::ids::{CallId, CallbackId, MessageId, Phone};
use super::output::{DirectoryChange, Output, RouteKey};
use super::time::Instant;
use super::timers::{Timer, TimerKey};
use crate::protocol::gateway::GatewayCommand;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::Duration;

pub const RECENT_WINDOW: Duration = Duration::from_secs(15 * 60);

#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub(crate) enum RecentKey {
    Call(CallId),
    Callback(CallbackId),
    Message(MessageId),
    Voicemail(CallId),
    /// The call ended because its caller asked for a callback: only then is
    /// a later `callback.requested` for it a repeat. (Last, so snapshots
    /// written before it existed still read.)
    CallbackRequested(CallId),
}

/// What a finished call leaves behind for a voicemail that arrives later:
/// its number, caller and whether assigned users may see it.
pub(crate) type CallTrace = (NumberIx, Phone, bool);

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Recent {
    map: FxHashMap<RecentKey, Option<CallTrace>>,
    order: VecDeque<(Instant, RecentKey)>,
    timer: Option<TimerKey>,
    /// Hand-offs not yet reported on, with the order they were made in.
    /// (Absent from snapshots taken before hand-offs were kept: none then.)
    #[serde(default)]
    handoffs: FxHashMap<RecentKey, (u64, GatewayCommand)>,
    #[serde(default)]
    handoff_seq: u64,
}

impl Recent {
    pub(crate) fn contains(&self, k: &RecentKey) -> bool {
        self.map.contains_key(k)
    }
    pub(crate) fn trace(&self, k: &RecentKey) -> Option<&CallTrace> {
        self.map.get(k).and_then(Option::as_ref)
    }
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
    pub(crate) fn handoff_count(&self) -> usize {
        self.handoffs.len()
    }
    /// Hand-offs not yet reported on, oldest first.
    pub(crate) fn handoffs(&self) -> Vec<GatewayCommand> {
        let mut v: Vec<_> = self.handoffs.values().collect();
        v.sort_by_key(|(seq, _)| *seq);
        v.into_iter().map(|(_, cmd)| cmd.clone()).collect()
    }
}

impl Account {
    pub(crate) fn remember(&mut self, key: RecentKey, trace: Option<CallTrace>) {
        let now = self.now;
        if self.recent.map.insert(key.clone(), trace).is_none() {
            self.recent.order.push_back((now, key));
        }
        if self.recent.timer.is_none() {
            let t = self.arm(now + RECENT_WINDOW, Timer::ForgetRecent);
            self.recent.timer = Some(t);
        }
    }

    /// Sends `cmd`, which hands `key` over to the gateway, and keeps it
    /// until the gateway reports on it. `key` must be remembered.
    pub(crate) fn hand_off(&mut self, key: RecentKey, cmd: GatewayCommand) {
        self.recent.handoff_seq += 1;
        self.recent.handoffs.insert(key, (self.recent.handoff_seq, cmd.clone()));
        self.send_gateway(cmd);
    }

    /// The gateway reported on `key`: its hand-off, if any, is settled.
    /// Returns whether there was one.
    pub(crate) fn settle_handoff(&mut self, key: &RecentKey) -> bool {
        self.recent.handoffs.remove(key).is_some()
    }

    pub(crate) fn forget_recent(&mut self) {
        self.recent.timer = None;
        let now = self.now;
        while let Some((at, _)) = self.recent.order.front() {
            if *at + RECENT_WINDOW > now {
                break;
            }
            let Some((_, key)) = self.recent.order.pop_front() else {
                break;
            };
            self.recent.map.remove(&key);
            self.recent.handoffs.remove(&key);
            let route = match key {
                RecentKey::Call(c) => Some(RouteKey::Call(c)),
                RecentKey::Callback(c) => Some(RouteKey::Callback(c)),
                RecentKey::Message(m) => Some(RouteKey::Message(m)),
                RecentKey::Voicemail(_) | RecentKey::CallbackRequested(_) => None,
            };
            if let Some(key) = route {
                self.out.push(Output::Directory(DirectoryChange::Unbind { account: self.id.clone(), key }));
            }
        }
        if let Some((at, _)) = self.recent.order.front() {
            let t = self.arm(*at + RECENT_WINDOW, Timer::ForgetRecent);
            self.recent.timer = Some(t);
        }
    }
}

impl Recent {
    /// Ids still routable to this account (the shell keeps them bound).
    pub(crate) fn routable(&self) -> impl Iterator<Item = RouteKey> + '_ {
        self.order.iter().filter_map(|(_, k)| match k {
            RecentKey::Call(c) => Some(RouteKey::Call(c.clone())),
            RecentKey::Callback(c) => Some(RouteKey::Callback(c.clone())),
            RecentKey::Message(m) => Some(RouteKey::Message(m.clone())),
            RecentKey::Voicemail(_) | RecentKey::CallbackRequested(_) => None,
        })
    }
}
