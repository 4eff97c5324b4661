//! Connections and presence commands: connect, disconnect, `status.set`,
//! `wrapup.done`, and what a restart does to everyone.

use super::account::Account;
use super::call::LiveCall;
use super::error::CoreError;
use super::history::CallKind;
use super::ids::{ConnId, UserId};
use super::offer::OfferEnd;
use super::queue::{EntryKind, Phase};
use super::time::Timestamp;
use super::user::{Activity, Wants};
use super::{Reply, UserIx};
use crate::protocol::agent::{AgentMessage, NumberAccess, WantedStatus};
use crate::protocol::gateway::GatewayCommand;

/// Longest `status.set` reason accepted.
pub const MAX_REASON_CHARS: usize = 200;

impl Account {
    /// A device of `user` connected. The first device brings the user
    /// online with the availability it last chose.
    pub(crate) fn connect(&mut self, user: &UserId, conn: ConnId) -> Result<Reply, CoreError> {
        let u = self.user_named(user).ok_or_else(|| CoreError::not_found(format!("no user {user}")))?;
        if !self.user(u).active() {
            return Err(CoreError::forbidden(format!("user {user} is {}", self.user(u).lifecycle.as_str())));
        }
        if self.conn_user.contains_key(&conn) {
            return Err(CoreError::conflict("connection already open"));
        }
        self.conn_user.insert(conn, u);
        let first = !self.user(u).connected();
        self.user_mut(u).conns.push(conn);
        // Hello first: it already carries the status the device starts in.
        let hello = self.hello(u);
        self.send_conn(conn, hello);
        self.change_user(u, |user, now| {
            if first && user.activity == Activity::Idle {
                // Logging in starts an idle period (longest_idle).
                user.idle_since = now;
            }
        });
        self.mark_stats_for_user(u);
        // A second device sees the offer the first one is ringing with.
        if let Activity::Ringing(id) = self.user(u).activity
            && let Some(msg) = self.offer_message(id)
        {
            self.send_conn(conn, msg);
        }
        Ok(Reply::Done)
    }

    fn hello(&self, u: UserIx) -> AgentMessage {
        let user = self.user(u);
        let mut numbers: Vec<_> = user.assigned.iter().chain(&user.caller_id).copied().collect();
        numbers.sort();
        numbers.dedup();
        let numbers = numbers
            .into_iter()
            .map(|n| {
                let number = self.number(n);
                NumberAccess {
                    number: number.id.clone(),
                    name: number.name.clone(),
                    assigned: user.assigned.contains(&n),
                    caller_id: true,
                }
            })
            .collect();
        AgentMessage::Hello {
            user: user.id.clone(),
            account: self.id.clone(),
            role: user.role,
            numbers,
            status: user.status().0,
            server_time: Timestamp(self.now),
        }
    }

    /// A device went away. With the last one the user is offline and its
    /// pending offer is withdrawn at once; the call moves on.
    pub(crate) fn disconnect(&mut self, conn: ConnId) -> Result<Reply, CoreError> {
        let Some(u) = self.conn_user.remove(&conn) else {
            return Ok(Reply::Duplicate);
        };
        self.unsubscribe(conn);
        let last = self.user(u).conns == [conn];
        if last {
            self.end_pending_offer(u, OfferEnd::Withdrawn);
        }
        self.change_user(u, |user, _| user.conns.retain(|&c| c != conn));
        Ok(Reply::Done)
    }

    /// No connection survived a restart. Routing runs only when the input
    /// is settled, after every user is offline.
    pub(crate) fn restarted(&mut self) -> Result<Reply, CoreError> {
        let mut conns: Vec<ConnId> = self.conn_user.keys().copied().collect();
        if conns.is_empty() {
            return Ok(Reply::ReadOnly);
        }
        // In id order: the map's order may differ between a live state and
        // one restored from a snapshot, and replay must decide the same.
        conns.sort_unstable();
        for conn in conns {
            self.disconnect(conn)?;
        }
        Ok(Reply::Done)
    }

    pub(crate) fn status_set(
        &mut self,
        u: UserIx,
        status: WantedStatus,
        reason: Option<String>,
    ) -> Result<Reply, CoreError> {
        if reason.as_ref().is_some_and(|r| r.chars().count() > MAX_REASON_CHARS) {
            return Err(CoreError::bad_request(format!("reason is longer than {MAX_REASON_CHARS} characters")));
        }
        match status {
            WantedStatus::Available => self.set_wants(u, Wants::Available),
            WantedStatus::Away => {
                // Going away while rung turns the offer down; it moves on.
                self.end_pending_offer(u, OfferEnd::Released);
                self.set_wants(u, Wants::Away(reason));
            }
        }
        Ok(Reply::Done)
    }

    pub(crate) fn wrapup_done(&mut self, u: UserIx) -> Result<Reply, CoreError> {
        if !matches!(self.user(u).activity, Activity::WrapUp { .. }) {
            return Err(CoreError::conflict("not in wrap-up"));
        }
        self.end_wrap_up(u);
        Ok(Reply::Done)
    }

    /// Commands the gateway was given and has not answered yet: a bridge
    /// or callback dial in progress, an outbound dial not yet picked up,
    /// and the hand-offs not yet reported on (super::recent).
    /// After a restart, and whenever a gateway connects, the shell sends
    /// them again so a gateway that lost them converges; gateways treat a
    /// repeat for the same call and agent as a no-op (docs/protocol.md).
    /// Without the outbound dials, a `call.dial` lost with a gateway
    /// connection would leave its agent on a call nobody places, until
    /// the gateway reports an end it never heard of.
    pub(crate) fn unanswered_commands(&self) -> Vec<GatewayCommand> {
        let mut out = Vec::new();
        let mut dials: Vec<&LiveCall> =
            self.calls.values().filter(|c| c.kind == CallKind::Outbound && c.answered_at.is_none()).collect();
        dials.sort_by_key(|c| (c.started_at, c.id.clone()));
        for c in dials {
            out.push(GatewayCommand::CallDial {
                call_id: c.id.clone(),
                agent: self.user(c.agent).id.clone(),
                to: c.to.clone(),
                caller_id: self.number(c.number).id.clone(),
            });
        }
        for e in self.entries.values() {
            let Phase::Connecting { agent, dial } = &e.phase else { continue };
            let agent = self.user(*agent).id.clone();
            match (&e.kind, dial) {
                (EntryKind::Call { call_id }, _) => {
                    out.push(GatewayCommand::CallBridge { call_id: call_id.clone(), agent })
                }
                (EntryKind::Callback { callback_id, phone, .. }, Some(dial)) => {
                    out.push(GatewayCommand::CallbackDial {
                        callback_id: callback_id.clone(),
                        call_id: dial.clone(),
                        agent,
                        to: phone.clone(),
                        caller_id: self.number(e.number).id.clone(),
                    })
                }
                _ => {}
            }
        }
        out.extend(self.recent.handoffs());
        out
    }
}
