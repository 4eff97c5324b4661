//! Recently finished ids, so a gateway that re-sends events after a
//! reconnect gets a no-op instead of a second call. Kept for
//! [`RECENT_WINDOW`]; an id older than that is forgotten (and the shell drops
//! its route), so a re-send after 15 minutes is answered `not_found`.

use super::NumberIx;
use super::account::Account;
use super::ids::{CallId, CallbackId, MessageId, Phone};
use super::output::{DirectoryChange, Output, RouteKey};
use super::time::Instant;
use super::timers::{Timer, TimerKey};
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
}

/// What a finished call leaves behind for a voicemail that arrives later:
/// its number, caller and whether assigned users may see it.
pub(crate) type CallTrace = (NumberIx, Phone, bool);

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Recent {
    map: FxHashMap<RecentKey, Option<CallTrace>>,
    order: VecDeque<(Instant, RecentKey)>,
    timer: Option<TimerKey>,
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
            let route = match key {
                RecentKey::Call(c) => Some(RouteKey::Call(c)),
                RecentKey::Callback(c) => Some(RouteKey::Callback(c)),
                RecentKey::Message(m) => Some(RouteKey::Message(m)),
                RecentKey::Voicemail(_) => None,
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
            RecentKey::Voicemail(_) => None,
        })
    }
}
