//! What the engine asks the world to do, drained after each input.

use super::history::Record;
use super::ids::{AccountId, CallId, CallbackId, ConnId, MessageId, NumberId, UserId};
use super::team::{Lifecycle, Role};
use crate::protocol::agent::AgentMessage;
use crate::protocol::gateway::GatewayCommand;

#[derive(Clone, PartialEq, Debug)]
pub enum Output {
    /// A command for a gateway serving `account`.
    Gateway { account: AccountId, cmd: GatewayCommand },
    /// A message for every open connection of `user`.
    User { account: AccountId, user: UserId, msg: AgentMessage },
    /// One message for every open connection of each of `users` (shared
    /// inbox, voicemails, missed calls): built once however many receive it.
    Users { account: AccountId, users: Vec<UserId>, msg: AgentMessage },
    /// A message for one connection (replies, subscriptions).
    Conn { conn: ConnId, msg: AgentMessage },
    /// Close a connection (its user was deactivated or removed).
    Close { conn: ConnId, reason: CloseReason },
    /// A history record for the store. Boxed: a record is three times the
    /// size of most outputs, and every output is moved a few times on the
    /// way out (on an offer's path, each move of a large one is more cache
    /// lines to touch).
    Record { account: AccountId, record: Box<Record> },
    /// A change the shell mirrors in its lookup tables, to route later
    /// inputs to this shard and to authenticate connections.
    Directory(DirectoryChange),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CloseReason {
    Deactivated,
    Removed,
}

impl CloseReason {
    /// WebSocket close code (4000-4999 is for applications).
    pub fn code(self) -> u16 {
        4003
    }
    pub fn text(self) -> &'static str {
        match self {
            CloseReason::Deactivated => "user deactivated",
            CloseReason::Removed => "user removed",
        }
    }
}

/// An id the gateway will send back later, so the shell can find the shard.
#[derive(Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum RouteKey {
    Call(CallId),
    Callback(CallbackId),
    Message(MessageId),
}

#[derive(Clone, PartialEq, Debug)]
pub enum DirectoryChange {
    Bind { account: AccountId, key: RouteKey },
    Unbind { account: AccountId, key: RouteKey },
    User { account: AccountId, user: UserId, role: Role, lifecycle: Lifecycle, token_hash: Option<String> },
    Number { account: AccountId, number: NumberId, present: bool },
}
