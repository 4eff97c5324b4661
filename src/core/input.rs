//! Everything that can happen to the engine. Inputs are plain data so the
//! shell can journal them and replay them through the same core.

use super::admin::{Actor, AdminCommand};
use super::ids::{AccountId, ConnId, UserId};
use crate::protocol::Ref;
use crate::protocol::agent::AgentCommand;
use crate::protocol::gateway::GatewayEvent;
use serde::{Deserialize, Serialize};

#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub enum Input {
    /// Time passed: fire the timers that are due. Every input does this
    /// first, so a tick carries no data of its own.
    Tick,
    /// An event from a gateway, already mapped to its account by the shell.
    Gateway { account: AccountId, event: GatewayEvent },
    /// A softphone connection of `user` opened (after authentication).
    Connect { account: AccountId, user: UserId, conn: ConnId },
    /// A softphone connection closed, for whatever reason.
    Disconnect { account: AccountId, conn: ConnId },
    /// The server started again: none of the account's connections
    /// survived. Every user goes offline at once (pending offers end
    /// silently, as with a last device leaving), before any call is routed
    /// again, so nobody whose connection is gone too is rung in between.
    /// Unlike every other input it fires no timers: the shell sends one per
    /// account before anything else, and the timers that fell due while
    /// the server was down fire at the next input, once no account has a
    /// stale connection left.
    Restarted { account: AccountId },
    /// A command from a softphone connection.
    Agent { account: AccountId, conn: ConnId, ref_: Option<Ref>, cmd: AgentCommand },
    /// A team or number change from the admin API or config provisioning.
    /// Boxed: the command is larger than every other input, and each input
    /// is moved through the shard's queue and the engine (the journal's
    /// encoding is the same either way).
    Admin { account: AccountId, actor: Actor, cmd: Box<AdminCommand> },
}

impl Input {
    pub fn account(&self) -> Option<&AccountId> {
        match self {
            Input::Gateway { account, .. }
            | Input::Connect { account, .. }
            | Input::Disconnect { account, .. }
            | Input::Restarted { account }
            | Input::Agent { account, .. }
            | Input::Admin { account, .. } => Some(account),
            Input::Tick => None,
        }
    }
}
