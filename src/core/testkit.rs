//! A scripted driver around [`Engine`] with a virtual clock, for unit tests,
//! the simulation and the benchmarks. It only feeds inputs and collects
//! outputs; every decision is still the engine's.

use super::admin::{Actor, AdminCommand, NumberSpec};
use super::ids::{AccountId, CallId, ConnId, NumberId, OfferId, UserId};
use super::settings::{QueueSettings, RoutingSettings, Strategy};
use super::team::{Plan, Role};
use super::time::Instant;
use super::{Engine, Handled, Input, Output};
use crate::protocol::agent::{AgentCommand, AgentMessage};
use crate::protocol::gateway::{EndReason, GatewayCommand, GatewayEvent};
use std::collections::BTreeMap;
use std::time::Duration;

/// 2023-11-14T22:13:20Z: an arbitrary, readable start for virtual clocks.
pub const T0: Instant = Instant::from_millis(1_700_000_000_000);

#[derive(Debug)]
pub struct Bed {
    pub engine: Engine,
    pub now: Instant,
    pub account: AccountId,
    /// Outputs collected since the last [`Bed::take`].
    pub out: Vec<Output>,
    pub conns: BTreeMap<UserId, Vec<ConnId>>,
    next_conn: u64,
    /// With [`Bed::journaled`]: every input the engine asked to journal,
    /// with its time, as a shard would append it.
    pub journal: Option<Vec<(Instant, AccountId, Input)>>,
}

impl Default for Bed {
    fn default() -> Self {
        Self::new()
    }
}

impl Bed {
    /// An engine with one account `acme` on the pro plan.
    pub fn new() -> Self {
        Self::with_account("acme", Plan::Pro)
    }

    pub fn with_account(account: &str, plan: Plan) -> Self {
        Self::start(account, plan, None)
    }

    /// Like [`Bed::with_account`], keeping what a shard would journal
    /// (the account's creation included) in [`Bed::journal`].
    pub fn journaled(account: &str, plan: Plan) -> Self {
        Self::start(account, plan, Some(Vec::new()))
    }

    fn start(account: &str, plan: Plan, journal: Option<Vec<(Instant, AccountId, Input)>>) -> Self {
        let mut bed = Bed {
            engine: Engine::new(),
            now: T0,
            account: account.into(),
            out: Vec::new(),
            conns: BTreeMap::new(),
            next_conn: 0,
            journal,
        };
        bed.add_account(account, plan);
        bed
    }

    pub fn add_account(&mut self, account: &str, plan: Plan) {
        let h = self.input(Input::Admin {
            account: account.into(),
            actor: Actor::System,
            cmd: Box::new(AdminCommand::SetPlan { plan }),
        });
        assert!(h.result.is_ok(), "{h:?}");
    }

    pub fn input(&mut self, input: Input) -> Handled {
        let copy = self.journal.is_some().then(|| input.clone());
        let h = self.engine.handle(self.now, input);
        self.out.extend(self.engine.drain_outputs());
        if let (Some(journal), Some(input), true) = (&mut self.journal, copy, h.journal)
            && let Some(account) = input.account().cloned()
        {
            journal.push((self.now, account, input));
        }
        h
    }

    pub fn admin(&mut self, cmd: AdminCommand) -> Handled {
        self.input(Input::Admin { account: self.account.clone(), actor: Actor::System, cmd: Box::new(cmd) })
    }

    pub fn user(&mut self, id: &str, role: Role) {
        let h = self.admin(AdminCommand::UpsertUser {
            user: id.into(),
            email: format!("{id}@acme.test"),
            role,
            token_hash: None,
        });
        assert!(h.result.is_ok(), "{h:?}");
    }

    /// Adds agents `ids` (role agent).
    pub fn agents(&mut self, ids: &[&str]) {
        for id in ids {
            self.user(id, Role::Agent);
        }
    }

    pub fn number(
        &mut self,
        number: &str,
        assigned: &[&str],
        routing: RoutingSettings,
        queue: QueueSettings,
    ) -> Handled {
        let spec = NumberSpec {
            name: format!("Line {number}"),
            assigned: assigned.iter().map(|&u| u.into()).collect(),
            caller_id: Vec::new(),
            routing,
            queue,
        };
        self.admin(AdminCommand::UpsertNumber { number: number.into(), spec })
    }

    /// A number with `strategy` and default settings otherwise.
    pub fn simple_number(&mut self, number: &str, assigned: &[&str], strategy: Strategy) {
        let h =
            self.number(number, assigned, RoutingSettings { strategy, ..Default::default() }, QueueSettings::default());
        assert!(h.result.is_ok(), "{h:?}");
    }

    pub fn connect(&mut self, user: &str) -> ConnId {
        self.next_conn += 1;
        let conn = ConnId(self.next_conn);
        let h = self.input(Input::Connect { account: self.account.clone(), user: user.into(), conn });
        assert!(h.result.is_ok(), "connect {user}: {h:?}");
        self.conns.entry(user.into()).or_default().push(conn);
        conn
    }

    pub fn disconnect(&mut self, conn: ConnId) -> Handled {
        for v in self.conns.values_mut() {
            v.retain(|&c| c != conn);
        }
        self.input(Input::Disconnect { account: self.account.clone(), conn })
    }

    pub fn gw(&mut self, event: GatewayEvent) -> Handled {
        self.input(Input::Gateway { account: self.account.clone(), event })
    }

    /// A command from the user's first connection.
    pub fn agent(&mut self, user: &str, cmd: AgentCommand) -> Handled {
        let conn = self.conns.get(&UserId::from(user)).and_then(|v| v.first().copied()).unwrap_or(ConnId(u64::MAX));
        self.input(Input::Agent { account: self.account.clone(), conn, ref_: None, cmd })
    }

    pub fn inbound(&mut self, call_id: &str, to: &str) -> Handled {
        self.inbound_prio(call_id, to, None)
    }

    pub fn inbound_prio(&mut self, call_id: &str, to: &str, priority: Option<u8>) -> Handled {
        self.gw(GatewayEvent::CallInbound {
            call_id: call_id.into(),
            to: to.into(),
            from: "+15551230001".into(),
            priority,
        })
    }

    pub fn answered(&mut self, call_id: &str, agent: &str) -> Handled {
        self.gw(GatewayEvent::CallAnswered { call_id: call_id.into(), agent: agent.into() })
    }

    pub fn ended(&mut self, call_id: &str, reason: EndReason) -> Handled {
        self.gw(GatewayEvent::CallEnded { call_id: call_id.into(), reason })
    }

    pub fn accept(&mut self, user: &str, offer: OfferId) -> Handled {
        self.agent(user, AgentCommand::OfferAccept { offer_id: offer })
    }

    pub fn decline(&mut self, user: &str, offer: OfferId) -> Handled {
        self.agent(user, AgentCommand::OfferDecline { offer_id: offer })
    }

    /// Moves the virtual clock and fires what is due.
    pub fn advance(&mut self, d: Duration) {
        self.now = self.now + d;
        self.input(Input::Tick);
    }

    /// Jumps to the next timer deadline (if any) and fires it.
    pub fn next_timer(&mut self) -> Option<Instant> {
        let t = self.engine.next_deadline()?;
        self.now = self.now.max(t);
        self.input(Input::Tick);
        Some(t)
    }

    pub fn take(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }

    // ---- queries over collected outputs ---------------------------------

    /// Offers sent to `user` since the last take: (offer, call or callback id).
    pub fn offers_to(&self, user: &str) -> Vec<(OfferId, String)> {
        self.out
            .iter()
            .filter_map(|o| match o {
                Output::User { user: u, msg: AgentMessage::Offer { offer_id, call_id, callback_id, .. }, .. }
                    if u.as_str() == user =>
                {
                    let id =
                        call_id.as_ref().map(|c| c.to_string()).or_else(|| callback_id.as_ref().map(|c| c.to_string()));
                    Some((*offer_id, id.unwrap_or_default()))
                }
                _ => None,
            })
            .collect()
    }

    /// The one offer `user` got since the last take.
    pub fn offer_to(&self, user: &str) -> OfferId {
        let offers = self.offers_to(user);
        assert_eq!(offers.len(), 1, "expected one offer to {user}, got {offers:?}\n{:#?}", self.out);
        offers[0].0
    }

    /// Users offered something since the last take, in order.
    pub fn offered_users(&self) -> Vec<String> {
        self.out
            .iter()
            .filter_map(|o| match o {
                Output::User { user, msg: AgentMessage::Offer { .. }, .. } => Some(user.to_string()),
                _ => None,
            })
            .collect()
    }

    pub fn gateway_cmds(&self) -> Vec<GatewayCommand> {
        self.out
            .iter()
            .filter_map(|o| match o {
                Output::Gateway { cmd, .. } => Some(cmd.clone()),
                _ => None,
            })
            .collect()
    }

    /// What the shell would send a gateway that connects now
    /// ([`Engine::unanswered_commands`]).
    pub fn unanswered_cmds(&self) -> Vec<GatewayCommand> {
        self.engine
            .unanswered_commands()
            .into_iter()
            .filter_map(|o| match o {
                Output::Gateway { cmd, .. } => Some(cmd),
                _ => None,
            })
            .collect()
    }

    /// Messages for `user`, sent to it alone or to several users at once.
    pub fn user_msgs(&self, user: &str) -> Vec<AgentMessage> {
        self.out
            .iter()
            .filter_map(|o| match o {
                Output::User { user: u, msg, .. } if u.as_str() == user => Some(msg.clone()),
                Output::Users { users, msg, .. } if users.iter().any(|u| u.as_str() == user) => Some(msg.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn conn_msgs(&self, conn: ConnId) -> Vec<AgentMessage> {
        self.out
            .iter()
            .filter_map(|o| match o {
                Output::Conn { conn: c, msg } if *c == conn => Some(msg.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn records(&self) -> Vec<super::history::Record> {
        self.out
            .iter()
            .filter_map(|o| match o {
                Output::Record { record, .. } => Some(super::history::Record::clone(record)),
                _ => None,
            })
            .collect()
    }

    /// The call record for `id` among collected outputs.
    pub fn call_record(&self, id: &str) -> Option<super::history::CallRecord> {
        self.records().into_iter().find_map(|r| match r {
            super::history::Record::Call(c) if c.id == id => Some(c),
            _ => None,
        })
    }

    pub fn status_of(&self, user: &str) -> crate::protocol::agent::Status {
        self.engine.user_status(&self.account, &user.into()).unwrap_or(crate::protocol::agent::Status::Offline)
    }

    pub fn number_id(n: &str) -> NumberId {
        n.into()
    }

    pub fn call_id(c: &str) -> CallId {
        c.into()
    }

    /// Asserts the engine's internal invariants.
    pub fn check(&self) {
        if let Err(e) = self.engine.check_invariants() {
            panic!("invariant broken: {e}");
        }
    }
}
