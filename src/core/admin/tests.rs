//! Team, number and billing administration, driven through the engine on a
//! virtual clock: the permission matrix (every role against every command,
//! view and WebSocket command, and across accounts), invitations, lifecycle
//! changes during live calls, ownership, bulk invitations, numbers, seats
//! and billing, and replay.

use super::*;
use crate::config::hash_token;
use crate::core::billing::{DAY, LedgerKind};
use crate::core::ids::{AccountId, ConnId};
use crate::core::invite::INVITE_TTL;
use crate::core::testkit::{Bed, T0};
use crate::core::views::BillingView;
use crate::core::{Engine, Handled, Input, Instant};
use crate::protocol::ErrorCode;
use crate::protocol::agent::{AgentCommand, AgentMessage, Status, Topic, WantedStatus};
use crate::protocol::gateway::{EndReason, GatewayCommand, MonitorMode, OverflowReason};

use Plan::Pro;

const N: &str = "+15550100";
const N2: &str = "+15550101";

fn token(u: &str) -> String {
    format!("{u}-token")
}

fn add_user(b: &mut Bed, account: &str, id: &str, role: Role) {
    let cmd = AdminCommand::UpsertUser {
        user: id.into(),
        email: format!("{id}@{account}.test"),
        role,
        token_hash: Some(hash_token(&token(id))),
    };
    let h = b.input(Input::Admin { account: account.into(), actor: Actor::System, cmd: Box::new(cmd) });
    assert!(h.result.is_ok(), "{h:?}");
}

fn spec(name: &str, assigned: &[&str], targets: Option<&[&str]>) -> NumberSpec {
    NumberSpec {
        name: name.into(),
        assigned: assigned.iter().map(|&u| u.into()).collect(),
        caller_id: vec![],
        routing: RoutingSettings {
            targets: targets.map(|t| t.iter().map(|&u| u.into()).collect()),
            ..Default::default()
        },
        queue: QueueSettings::default(),
    }
}

/// acme: owner `own`, admin `adm`, supervisor `sup`, agents `agt` and `t1`.
/// N is assigned to all of them but rings only t1; N2 is assigned to t1
/// only. globex: owner `gown`. The account is created on pro (so the
/// supervisor can exist) and then moved to `plan` by provisioning.
fn world(plan: Plan) -> Bed {
    let mut b = Bed::with_account("acme", Plan::Pro);
    for (id, role) in [
        ("own", Role::Owner),
        ("adm", Role::Admin),
        ("sup", Role::Supervisor),
        ("agt", Role::Agent),
        ("t1", Role::Agent),
    ] {
        add_user(&mut b, "acme", id, role);
    }
    let all = ["t1", "own", "adm", "sup", "agt"];
    let h = b.admin(AdminCommand::UpsertNumber { number: N.into(), spec: spec("Support", &all, Some(&["t1"])) });
    assert!(h.result.is_ok(), "{h:?}");
    let h = b.admin(AdminCommand::UpsertNumber { number: N2.into(), spec: spec("Sales", &["t1"], None) });
    assert!(h.result.is_ok(), "{h:?}");
    if plan != Plan::Pro {
        let h = b.admin(AdminCommand::SetPlan { plan });
        assert!(h.result.is_ok(), "{h:?}");
    }
    b.add_account("globex", Plan::Team);
    add_user(&mut b, "globex", "gown", Role::Owner);
    b.take();
    b
}

fn by(b: &mut Bed, who: &str, cmd: AdminCommand) -> Handled {
    b.input(Input::Admin { account: b.account.clone(), actor: Actor::User(who.into()), cmd: Box::new(cmd) })
}

fn code(h: &Handled) -> ErrorCode {
    match &h.result {
        Err(e) => e.code,
        Ok(r) => panic!("expected a refusal, got {r:?}"),
    }
}

fn done(h: &Handled) {
    assert_eq!(h.result, Ok(Reply::Done), "{h:?}");
    assert!(h.journal);
}

fn invite_spec(email: &str, role: Role, number: Option<&str>, hash: &str) -> InviteSpec {
    InviteSpec { user: None, email: email.into(), role, number: number.map(NumberId::from), invite_hash: hash.into() }
}

fn acme() -> AccountId {
    "acme".into()
}

fn user_actor(u: &str) -> Actor {
    Actor::User(u.into())
}

fn lifecycle_of(b: &Bed, u: &str) -> Lifecycle {
    b.engine.user_view_unchecked(&b.account, &u.into()).map(|v| v.status).unwrap_or_else(|| panic!("no user {u}"))
}

fn role_of(b: &Bed, u: &str) -> Role {
    b.engine.user_view_unchecked(&b.account, &u.into()).map(|v| v.role).unwrap_or_else(|| panic!("no user {u}"))
}

fn billing(b: &Bed, owner: &str) -> BillingView {
    b.engine.view_billing(&b.account, &user_actor(owner)).unwrap()
}

/// Brings the account's own clock to the bed's time (a tick moves only the
/// engine's), so that state comparisons see nothing but what a command does.
fn sync(b: &mut Bed) {
    let h = b.input(Input::Disconnect { account: b.account.clone(), conn: ConnId(u64::MAX) });
    assert_eq!(h.result, Ok(Reply::Duplicate));
}

/// A refused input must leave the state byte for byte as it was.
fn refused(b: &mut Bed, who: &str, cmd: AdminCommand) -> ErrorCode {
    sync(b);
    let before = b.engine.state_bytes();
    let h = by(b, who, cmd);
    assert!(!h.journal, "a refusal is not journaled: {h:?}");
    assert!(b.engine.state_bytes() == before, "a refusal changed the state: {h:?}");
    code(&h)
}

// ---- the permission matrix ------------------------------------------------

#[test]
fn the_role_matrix_is_the_documented_one() {
    use crate::core::team::Action::*;
    // (action, owner, admin, supervisor on pro, supervisor below pro, agent)
    let table = [
        (ViewAccount, true, true, true, true, true),
        (UseOwnNumbers, true, true, true, true, true),
        (ViewTeam, true, true, false, false, false),
        (ManageTeam, true, true, false, false, false),
        (ViewAllNumbers, true, true, false, false, false),
        (ManageNumbers, true, true, false, false, false),
        (Billing, true, false, false, false, false),
        (TransferOwnership, true, false, false, false, false),
        (Supervise, true, true, true, false, false),
    ];
    assert_eq!(table.len(), crate::core::team::Action::ALL.len());
    for (action, owner, admin, sup_pro, sup_below, agent) in table {
        for plan in [Plan::Essentials, Plan::Team, Plan::Pro] {
            let sup = if plan == Plan::Pro { sup_pro } else { sup_below };
            let got: Vec<bool> = Role::ALL.iter().map(|r| r.may(action, plan)).collect();
            assert_eq!(got, [owner, admin, sup, agent], "{action:?} on {plan:?}");
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmd {
    Invite,
    Resend,
    SetRole,
    Deactivate,
    Reactivate,
    Remove,
    CreateNumber,
    UpdateNumber,
    SetPlan,
    Transfer,
    UpsertUser,
    UpsertNumber,
    SetPrices,
}

const CMDS: [Cmd; 13] = [
    Cmd::Invite,
    Cmd::Resend,
    Cmd::SetRole,
    Cmd::Deactivate,
    Cmd::Reactivate,
    Cmd::Remove,
    Cmd::CreateNumber,
    Cmd::UpdateNumber,
    Cmd::SetPlan,
    Cmd::Transfer,
    Cmd::UpsertUser,
    Cmd::UpsertNumber,
    Cmd::SetPrices,
];

/// The matrix as docs/permissions.md writes it (deliberately not derived
/// from `Role::may`).
fn allowed(cmd: Cmd, role: Role) -> bool {
    use Role::*;
    match cmd {
        Cmd::Invite
        | Cmd::Resend
        | Cmd::SetRole
        | Cmd::Deactivate
        | Cmd::Reactivate
        | Cmd::Remove
        | Cmd::CreateNumber
        | Cmd::UpdateNumber => matches!(role, Owner | Admin),
        Cmd::SetPlan | Cmd::Transfer => role == Owner,
        Cmd::UpsertUser | Cmd::UpsertNumber | Cmd::SetPrices => false,
    }
}

/// Sets up what `cmd` needs (as provisioning, never touching `actor`) and
/// returns the command.
fn prepare(b: &mut Bed, cmd: Cmd, actor: &str) -> AdminCommand {
    match cmd {
        Cmd::Invite => {
            AdminCommand::Invite { invites: vec![invite_spec("new@acme.test", Role::Agent, Some(N), "h-new")] }
        }
        Cmd::Resend => {
            done(&b.admin(AdminCommand::Invite {
                invites: vec![invite_spec("inv@acme.test", Role::Agent, None, "h-inv")],
            }));
            AdminCommand::ResendInvite { user: "inv".into(), invite_hash: "h-inv2".into() }
        }
        Cmd::SetRole => AdminCommand::SetRole { user: "t1".into(), role: Role::Admin },
        Cmd::Deactivate => AdminCommand::SetLifecycle { user: "t1".into(), lifecycle: Lifecycle::Deactivated },
        Cmd::Reactivate => {
            done(&b.admin(AdminCommand::SetLifecycle { user: "t1".into(), lifecycle: Lifecycle::Deactivated }));
            AdminCommand::SetLifecycle { user: "t1".into(), lifecycle: Lifecycle::Active }
        }
        Cmd::Remove => AdminCommand::SetLifecycle { user: "t1".into(), lifecycle: Lifecycle::Removed },
        Cmd::CreateNumber => {
            AdminCommand::CreateNumber { number: "+15550199".into(), spec: Box::new(spec("New", &["t1"], None)) }
        }
        Cmd::UpdateNumber => AdminCommand::UpdateNumber {
            number: N.into(),
            patch: Box::new(NumberPatch { name: Some("Renamed".into()), ..Default::default() }),
        },
        Cmd::SetPlan => {
            // A downgrade is refused while supervisors exist; keep the one
            // supervisor unless it is the actor under test.
            if actor != "sup" {
                done(&b.admin(AdminCommand::SetRole { user: "sup".into(), role: Role::Agent }));
            }
            AdminCommand::SetPlan { plan: Plan::Team }
        }
        Cmd::Transfer => AdminCommand::TransferOwnership {
            to: if actor == "adm" { "agt".into() } else { "adm".into() },
            confirm_hash: hash_token(&token(actor)),
        },
        Cmd::UpsertUser => AdminCommand::UpsertUser {
            user: "x".into(),
            email: "x@acme.test".into(),
            role: Role::Agent,
            token_hash: None,
        },
        Cmd::UpsertNumber => AdminCommand::UpsertNumber { number: N.into(), spec: spec("X", &["t1"], None) },
        Cmd::SetPrices => AdminCommand::SetPrices { prices: Billing { team: 1, ..Billing::default() } },
    }
}

const ACTORS: [(&str, Role); 4] =
    [("own", Role::Owner), ("adm", Role::Admin), ("sup", Role::Supervisor), ("agt", Role::Agent)];

#[test]
fn every_role_against_every_admin_command() {
    for cmd in CMDS {
        for (actor, role) in ACTORS {
            let mut b = world(Plan::Pro);
            let c = prepare(&mut b, cmd, actor);
            if allowed(cmd, role) {
                done(&by(&mut b, actor, c));
            } else {
                assert_eq!(refused(&mut b, actor, c), ErrorCode::Forbidden, "{cmd:?} by {role:?}");
            }
        }
        // Provisioning may do everything but transfer ownership (which
        // needs the owner's own token).
        let mut b = world(Pro);
        let c = prepare(&mut b, cmd, "own");
        let h = b.admin(c);
        if cmd == Cmd::Transfer {
            assert_eq!(code(&h), ErrorCode::Forbidden);
        } else {
            assert!(h.result.is_ok(), "{cmd:?} by the system: {h:?}");
        }
    }
}

#[test]
fn other_accounts_unknown_and_inactive_actors_may_do_nothing() {
    for cmd in CMDS {
        let mut b = world(Pro);
        let c = prepare(&mut b, cmd, "gown");
        assert_eq!(refused(&mut b, "gown", c.clone()), ErrorCode::Forbidden, "{cmd:?} from another account");
        assert_eq!(refused(&mut b, "nobody", c.clone()), ErrorCode::Forbidden, "{cmd:?} from nobody");
        done(&b.admin(AdminCommand::SetLifecycle { user: "adm".into(), lifecycle: Lifecycle::Deactivated }));
        assert_eq!(refused(&mut b, "adm", c), ErrorCode::Forbidden, "{cmd:?} from a deactivated admin");
    }
    // The owner of globex cannot reach acme's users or numbers through its
    // own account either: they do not exist there.
    let mut b = world(Pro);
    let h = b.input(Input::Admin {
        account: "globex".into(),
        actor: user_actor("gown"),
        cmd: Box::new(AdminCommand::SetLifecycle { user: "t1".into(), lifecycle: Lifecycle::Removed }),
    });
    assert_eq!(code(&h), ErrorCode::NotFound);
    let h = b.input(Input::Admin {
        account: "globex".into(),
        actor: user_actor("gown"),
        cmd: Box::new(AdminCommand::UpdateNumber { number: N.into(), patch: Box::new(NumberPatch::default()) }),
    });
    assert_eq!(code(&h), ErrorCode::NotFound);
    assert_eq!(lifecycle_of(&b, "t1"), Lifecycle::Active);
}

#[test]
fn every_role_against_every_view() {
    let b = world(Pro);
    let e = &b.engine;
    for (actor, role) in ACTORS {
        let who = user_actor(actor);
        let manager = matches!(role, Role::Owner | Role::Admin);
        let ok_or_forbidden = |r: Result<(), CoreError>, allowed: bool, what: &str| match r {
            Ok(()) => assert!(allowed, "{what} by {role:?} should be forbidden"),
            Err(e) => {
                assert!(!allowed, "{what} by {role:?}: {e}");
                assert_eq!(e.code, ErrorCode::Forbidden, "{what} by {role:?}");
            }
        };
        ok_or_forbidden(e.view_account(&acme(), &who).map(|v| assert_eq!(v.role, role)), true, "account");
        ok_or_forbidden(e.view_users(&acme(), &who).map(|v| assert_eq!(v.len(), 5)), manager, "users");
        ok_or_forbidden(e.view_user(&acme(), &who, &"t1".into()).map(drop), manager, "another user");
        ok_or_forbidden(e.view_user(&acme(), &who, &actor.into()).map(drop), true, "oneself");
        let numbers: Vec<String> =
            e.view_numbers(&acme(), &who).unwrap().into_iter().map(|n| n.number.to_string()).collect();
        assert_eq!(numbers, if manager { vec![N, N2] } else { vec![N] }, "numbers seen by {role:?}");
        ok_or_forbidden(e.view_number(&acme(), &who, &N.into()).map(drop), true, "own number");
        ok_or_forbidden(e.view_number(&acme(), &who, &N2.into()).map(drop), manager, "someone else's number");
        ok_or_forbidden(e.view_billing(&acme(), &who).map(drop), role == Role::Owner, "billing");
        ok_or_forbidden(e.check_invites(&acme(), &who, &[]).map(drop), manager, "checking invitations");
        for action in crate::core::team::Action::ALL {
            let r = e.authorize(&acme(), &who, action);
            assert_eq!(r.is_ok(), role.may(action, Pro), "{action:?} by {role:?}");
        }
    }
    // Across accounts, and with nobody.
    for who in [user_actor("gown"), user_actor("nobody"), Actor::System, Actor::Invitee] {
        assert_eq!(e.view_account(&acme(), &who).unwrap_err().code, ErrorCode::Forbidden);
        assert_eq!(e.view_users(&acme(), &who).unwrap_err().code, ErrorCode::Forbidden);
        assert_eq!(e.view_numbers(&acme(), &who).unwrap_err().code, ErrorCode::Forbidden);
        assert_eq!(e.view_billing(&acme(), &who).unwrap_err().code, ErrorCode::Forbidden);
    }
    assert_eq!(
        e.view_user(&"globex".into(), &user_actor("own"), &"gown".into()).unwrap_err().code,
        ErrorCode::Forbidden
    );
    assert_eq!(e.view_number(&"globex".into(), &user_actor("gown"), &N.into()).unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(e.view_account(&"nowhere".into(), &user_actor("own")).unwrap_err().code, ErrorCode::NotFound);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ws {
    Status,
    Ping,
    Accept,
    Decline,
    WrapupDone,
    Dial,
    Hangup,
    Sms,
    Monitor,
    Subscribe,
}

const WS: [Ws; 10] = [
    Ws::Status,
    Ws::Ping,
    Ws::Accept,
    Ws::Decline,
    Ws::WrapupDone,
    Ws::Dial,
    Ws::Hangup,
    Ws::Sms,
    Ws::Monitor,
    Ws::Subscribe,
];

fn ws_command(c: Ws) -> AgentCommand {
    match c {
        Ws::Status => AgentCommand::StatusSet { status: WantedStatus::Away, reason: None },
        Ws::Ping => AgentCommand::Ping {},
        Ws::Accept => AgentCommand::OfferAccept { offer_id: crate::core::ids::OfferId(999) },
        Ws::Decline => AgentCommand::OfferDecline { offer_id: crate::core::ids::OfferId(999) },
        Ws::WrapupDone => AgentCommand::WrapupDone {},
        Ws::Dial => AgentCommand::CallDial { from: N.into(), to: "+15551230002".into() },
        Ws::Hangup => AgentCommand::CallHangup { call_id: "c1".into() },
        Ws::Sms => AgentCommand::MessageSend { from: N.into(), to: "+15551230002".into(), body: "hi".into() },
        Ws::Monitor => AgentCommand::Monitor { call_id: "c1".into(), mode: MonitorMode::Listen },
        Ws::Subscribe => AgentCommand::Subscribe { topic: Topic::Queues },
    }
}

/// A world with everyone connected and t1 talking on c1 (a call on N).
fn live_world(plan: Plan) -> Bed {
    let mut b = world(plan);
    for (u, _) in ACTORS {
        b.connect(u);
    }
    b.connect("t1");
    b.inbound("c1", N);
    let o = b.offer_to("t1");
    b.accept("t1", o);
    b.answered("c1", "t1");
    b.take();
    b
}

#[test]
fn every_role_against_every_websocket_command() {
    for plan in [Plan::Pro, Plan::Team] {
        for c in WS {
            for (actor, role) in ACTORS {
                let mut b = live_world(plan);
                let h = b.agent(actor, ws_command(c));
                let supervise = match role {
                    Role::Owner | Role::Admin => true,
                    Role::Supervisor => plan == Plan::Pro,
                    Role::Agent => false,
                };
                let forbidden = matches!(c, Ws::Monitor | Ws::Subscribe) && !supervise;
                let got = h.result.as_ref().err().map(|e| e.code);
                if forbidden {
                    assert_eq!(got, Some(ErrorCode::Forbidden), "{c:?} by {role:?} on {plan:?}");
                } else {
                    // Allowed: it succeeds, or fails for what it names (no
                    // such offer, no wrap-up to end, not your call), never
                    // for the role.
                    let expect = match c {
                        Ws::Decline | Ws::Hangup => Some(ErrorCode::NotFound),
                        Ws::WrapupDone => Some(ErrorCode::Conflict),
                        _ => None,
                    };
                    assert_eq!(got, expect, "{c:?} by {role:?} on {plan:?}: {h:?}");
                }
            }
        }
    }
}

#[test]
fn calling_out_needs_access_to_the_number_whatever_the_role() {
    let mut b = live_world(Pro);
    for (actor, role) in ACTORS {
        let dial = AgentCommand::CallDial { from: N2.into(), to: "+15551230002".into() };
        assert_eq!(code(&b.agent(actor, dial)), ErrorCode::Forbidden, "{role:?}: N2 is t1's only");
        let sms = AgentCommand::MessageSend { from: N2.into(), to: "+15551230002".into(), body: "x".into() };
        assert_eq!(code(&b.agent(actor, sms)), ErrorCode::Forbidden, "{role:?}");
    }
}

#[test]
fn websocket_commands_cannot_cross_accounts() {
    let mut b = live_world(Pro);
    let gconn = ConnId(10_000);
    let h = b.input(Input::Connect { account: "globex".into(), user: "gown".into(), conn: gconn });
    assert!(h.result.is_ok());
    for c in WS {
        // A globex connection addressed to acme is not logged in there.
        let h = b.input(Input::Agent { account: acme(), conn: gconn, ref_: None, cmd: ws_command(c) });
        assert_eq!(code(&h), ErrorCode::Unauthorized, "{c:?}");
    }
    // In its own account, acme's call and number do not exist.
    let h = b.input(Input::Agent { account: "globex".into(), conn: gconn, ref_: None, cmd: ws_command(Ws::Monitor) });
    assert_eq!(code(&h), ErrorCode::NotFound);
    let h = b.input(Input::Agent { account: "globex".into(), conn: gconn, ref_: None, cmd: ws_command(Ws::Dial) });
    assert!(matches!(code(&h), ErrorCode::NotFound | ErrorCode::Forbidden), "{h:?}");
    assert!(
        b.gateway_cmds()
            .iter()
            .all(|c| !matches!(c, GatewayCommand::CallMonitor { .. } | GatewayCommand::CallDial { .. }))
    );
    // A user with the same id in two accounts is two users: acme's
    // connection of `own` cannot be used for globex.
    let own_conn = b.conns[&UserId::from("own")][0];
    let h = b.input(Input::Agent { account: "globex".into(), conn: own_conn, ref_: None, cmd: ws_command(Ws::Ping) });
    assert_eq!(code(&h), ErrorCode::Unauthorized);
}

#[test]
fn nobody_but_the_owner_touches_the_owner() {
    let mut b = world(Pro);
    let demote = AdminCommand::SetRole { user: "own".into(), role: Role::Agent };
    assert_eq!(refused(&mut b, "adm", demote.clone()), ErrorCode::Forbidden);
    assert_eq!(refused(&mut b, "own", demote), ErrorCode::Conflict, "the owner must transfer first");
    for l in [Lifecycle::Deactivated, Lifecycle::Removed] {
        let c = AdminCommand::SetLifecycle { user: "own".into(), lifecycle: l };
        assert_eq!(refused(&mut b, "adm", c.clone()), ErrorCode::Forbidden);
        assert_eq!(refused(&mut b, "own", c), ErrorCode::Conflict);
    }
    let crown = AdminCommand::SetRole { user: "agt".into(), role: Role::Owner };
    assert_eq!(refused(&mut b, "own", crown), ErrorCode::BadRequest, "ownership only moves by transfer");
    let invite = AdminCommand::Invite { invites: vec![invite_spec("boss@acme.test", Role::Owner, None, "h")] };
    assert_eq!(refused(&mut b, "own", invite), ErrorCode::BadRequest);
    // Admins manage other admins.
    done(&by(&mut b, "adm", AdminCommand::SetRole { user: "agt".into(), role: Role::Admin }));
    done(&by(&mut b, "adm", AdminCommand::SetRole { user: "agt".into(), role: Role::Agent }));
    assert_eq!(role_of(&b, "own"), Role::Owner);
}

#[test]
fn lifecycle_transitions_follow_the_rules() {
    let mut b = world(Pro);
    done(&by(
        &mut b,
        "adm",
        AdminCommand::Invite { invites: vec![invite_spec("i@acme.test", Role::Agent, None, "h")] },
    ));
    let set = |u: &str, l| AdminCommand::SetLifecycle { user: u.into(), lifecycle: l };
    assert_eq!(refused(&mut b, "adm", set("i", Lifecycle::Active)), ErrorCode::Conflict, "only by accepting");
    assert_eq!(refused(&mut b, "adm", set("i", Lifecycle::Deactivated)), ErrorCode::Conflict);
    assert_eq!(refused(&mut b, "adm", set("t1", Lifecycle::Invited)), ErrorCode::BadRequest);
    assert_eq!(by(&mut b, "adm", set("t1", Lifecycle::Active)).result, Ok(Reply::ReadOnly), "already active");
    done(&by(&mut b, "adm", set("i", Lifecycle::Removed)));
    assert_eq!(refused(&mut b, "adm", set("i", Lifecycle::Active)), ErrorCode::Conflict, "removed for good");
    assert_eq!(
        refused(&mut b, "adm", AdminCommand::SetRole { user: "i".into(), role: Role::Admin }),
        ErrorCode::Conflict
    );
    assert_eq!(refused(&mut b, "adm", set("ghost", Lifecycle::Removed)), ErrorCode::NotFound);
    // A supervisor needs pro.
    let mut t = world(Plan::Team);
    assert_eq!(
        refused(&mut t, "own", AdminCommand::SetRole { user: "agt".into(), role: Role::Supervisor }),
        ErrorCode::Forbidden
    );
}

#[test]
fn demotion_ends_queue_stats_at_once() {
    let mut b = live_world(Pro);
    let sup = b.conns[&UserId::from("sup")][0];
    assert!(b.agent("sup", ws_command(Ws::Subscribe)).result.is_ok());
    b.inbound("c2", N);
    b.advance(std::time::Duration::from_secs(2));
    assert!(b.conn_msgs(sup).iter().any(|m| matches!(m, AgentMessage::QueueStats { .. })), "subscribed");
    b.take();
    done(&by(&mut b, "adm", AdminCommand::SetRole { user: "sup".into(), role: Role::Agent }));
    b.inbound("c3", N);
    b.advance(std::time::Duration::from_secs(2));
    assert!(b.conn_msgs(sup).iter().all(|m| !matches!(m, AgentMessage::QueueStats { .. })), "{:?}", b.conn_msgs(sup));
    assert_eq!(code(&b.agent("sup", ws_command(Ws::Subscribe))), ErrorCode::Forbidden);
    b.check();
}

/// The numbers whose `queue.stats` reached `conn`, sorted.
fn stats_numbers(b: &Bed, conn: ConnId) -> Vec<String> {
    let mut n: Vec<String> = b
        .conn_msgs(conn)
        .into_iter()
        .filter_map(|m| match m {
            AgentMessage::QueueStats { number, .. } => Some(number.to_string()),
            _ => None,
        })
        .collect();
    n.sort();
    n.dedup();
    n
}

/// Callers wait on both numbers (nobody takes them), so every stats flush
/// covers both.
fn stats_world() -> Bed {
    let mut b = live_world(Pro);
    b.inbound("w1", N);
    b.inbound("w2", N2);
    b.take();
    b
}

#[test]
fn queue_stats_follow_a_supervisors_assignments() {
    let mut b = stats_world();
    let sup = b.conns[&UserId::from("sup")][0];
    assert!(b.agent("sup", ws_command(Ws::Subscribe)).result.is_ok());
    assert_eq!(stats_numbers(&b, sup), [N], "assigned to Support only");
    b.take();
    // Moved from Support to Sales.
    done(&b.admin(AdminCommand::UpsertNumber { number: N.into(), spec: spec("Support", &["t1"], None) }));
    done(&b.admin(AdminCommand::UpsertNumber { number: N2.into(), spec: spec("Sales", &["t1", "sup"], None) }));
    assert_eq!(stats_numbers(&b, sup), [N2], "Sales' snapshot at once");
    b.take();
    b.advance(std::time::Duration::from_secs(5));
    assert_eq!(stats_numbers(&b, sup), [N2], "and never Support again");
    b.check();
}

#[test]
fn queue_stats_narrow_when_a_manager_becomes_a_supervisor_and_grow_with_new_numbers() {
    let mut b = stats_world();
    let adm = b.conns[&UserId::from("adm")][0];
    assert!(b.agent("adm", ws_command(Ws::Subscribe)).result.is_ok());
    assert_eq!(stats_numbers(&b, adm), [N, N2], "a manager sees every number");
    b.take();
    const N3: &str = "+15550102";
    done(&b.admin(AdminCommand::UpsertNumber { number: N3.into(), spec: spec("Night", &["t1"], None) }));
    assert_eq!(stats_numbers(&b, adm), [N3], "a new number's snapshot");
    b.take();
    done(&by(&mut b, "own", AdminCommand::SetRole { user: "adm".into(), role: Role::Supervisor }));
    b.take();
    b.advance(std::time::Duration::from_secs(5));
    assert_eq!(stats_numbers(&b, adm), [N], "as a supervisor, only what it is assigned to: {:?}", b.conn_msgs(adm));
    b.check();
}

// ---- invitations ----------------------------------------------------------

fn accept(b: &mut Bed, invite: &str, tok: &str) -> Handled {
    b.input(Input::Admin {
        account: b.account.clone(),
        actor: Actor::Invitee,
        cmd: Box::new(AdminCommand::AcceptInvite { invite_hash: invite.into(), token_hash: hash_token(tok) }),
    })
}

fn directory_user(b: &Bed, u: &str) -> Option<(Lifecycle, Option<String>)> {
    b.out.iter().rev().find_map(|o| match o {
        Output::Directory(DirectoryChange::User { user, lifecycle, token_hash, .. }) if user.as_str() == u => {
            Some((*lifecycle, token_hash.clone()))
        }
        _ => None,
    })
}

#[test]
fn invitations_expire_after_seven_days_and_resending_restarts_the_clock() {
    let mut b = world(Pro);
    done(&by(
        &mut b,
        "adm",
        AdminCommand::Invite { invites: vec![invite_spec("New@Acme.test", Role::Agent, Some(N2), "h1")] },
    ));
    assert_eq!(lifecycle_of(&b, "new"), Lifecycle::Invited, "the id comes from the email");
    assert_eq!(directory_user(&b, "new"), Some((Lifecycle::Invited, None)), "no token before accepting");
    let v = b.engine.view_user(&acme(), &user_actor("adm"), &"new".into()).unwrap();
    let invite = v.invite.unwrap();
    assert_eq!(invite.expires_at, (T0 + INVITE_TTL).rfc3339());
    assert!(!invite.expired);
    assert_eq!(v.assigned, [NumberId::from(N2)]);
    // An invited user cannot log in and is not rung.
    let h = b.input(Input::Connect { account: acme(), user: "new".into(), conn: ConnId(500) });
    assert_eq!(code(&h), ErrorCode::Forbidden);
    // The same email (any case) is a conflict; so is its id.
    let dup = AdminCommand::Invite { invites: vec![invite_spec("new@acme.TEST", Role::Agent, None, "h9")] };
    assert_eq!(refused(&mut b, "adm", dup), ErrorCode::Conflict);
    let dup_id = AdminCommand::Invite {
        invites: vec![InviteSpec {
            user: Some("t1".into()),
            ..invite_spec("other@acme.test", Role::Agent, None, "h8")
        }],
    };
    assert_eq!(refused(&mut b, "adm", dup_id), ErrorCode::Conflict);

    // At exactly seven days it has expired.
    b.now = T0 + INVITE_TTL;
    sync(&mut b);
    let before = b.engine.state_bytes();
    let h = accept(&mut b, "h1", "new-token");
    assert_eq!(code(&h), ErrorCode::Conflict);
    assert!(h.result.unwrap_err().message.contains("expired"));
    assert!(b.engine.state_bytes() == before, "a refused accept changes nothing");
    assert!(b.engine.user_view_unchecked(&acme(), &"new".into()).unwrap().invite.unwrap().expired);

    // Resending: a new token and seven more days; the old token is dead.
    b.take();
    done(&by(&mut b, "adm", AdminCommand::ResendInvite { user: "new".into(), invite_hash: "h2".into() }));
    assert_eq!(code(&accept(&mut b, "h1", "new-token")), ErrorCode::NotFound);
    let resent = b.now;
    b.now = resent + (INVITE_TTL - std::time::Duration::from_millis(1));
    b.input(Input::Tick);
    b.take();
    done(&accept(&mut b, "h2", "new-token"));
    assert_eq!(lifecycle_of(&b, "new"), Lifecycle::Active);
    assert_eq!(directory_user(&b, "new"), Some((Lifecycle::Active, Some(hash_token("new-token")))));
    assert!(b.engine.user_view_unchecked(&acme(), &"new".into()).unwrap().invite.is_none());
    assert_eq!(code(&accept(&mut b, "h2", "again")), ErrorCode::NotFound, "an invitation is used once");
    // Now it logs in and is rung on the number it was invited to.
    b.connect("new");
    b.inbound("c1", N2);
    assert_eq!(b.offered_users(), ["new"]);
    // Resending is only for invitations.
    assert_eq!(
        refused(&mut b, "adm", AdminCommand::ResendInvite { user: "new".into(), invite_hash: "h3".into() }),
        ErrorCode::Conflict
    );
    b.check();
}

#[test]
fn a_removed_invitation_cannot_be_accepted_and_frees_the_email() {
    let mut b = world(Pro);
    done(&by(
        &mut b,
        "own",
        AdminCommand::Invite { invites: vec![invite_spec("z@acme.test", Role::Admin, None, "hz")] },
    ));
    done(&by(&mut b, "own", AdminCommand::SetLifecycle { user: "z".into(), lifecycle: Lifecycle::Removed }));
    assert_eq!(code(&accept(&mut b, "hz", "z-token")), ErrorCode::NotFound);
    done(&by(
        &mut b,
        "own",
        AdminCommand::Invite { invites: vec![invite_spec("z@acme.test", Role::Admin, None, "hz2")] },
    ));
    assert_eq!(lifecycle_of(&b, "z-2"), Lifecycle::Invited, "the removed user keeps its id");
}

// ---- deactivation and removal during live work -----------------------------

/// acme with admin `adm` and agents a, b ringing in order on N.
fn ringing_world() -> Bed {
    let mut b = Bed::new();
    add_user(&mut b, "acme", "own", Role::Owner);
    add_user(&mut b, "acme", "adm", Role::Admin);
    b.agents(&["a", "b"]);
    let mut s = spec("Support", &["a", "b"], None);
    s.routing.strategy = Strategy::RingInOrder;
    s.queue.max_wait = std::time::Duration::from_secs(60);
    done(&b.admin(AdminCommand::UpsertNumber { number: N.into(), spec: s }));
    b.connect("a");
    b.connect("b");
    b.take();
    b
}

fn closes(b: &Bed) -> Vec<(ConnId, crate::core::CloseReason)> {
    b.out
        .iter()
        .filter_map(|o| match o {
            Output::Close { conn, reason } => Some((*conn, *reason)),
            _ => None,
        })
        .collect()
}

#[test]
fn deactivating_a_ringing_user_moves_the_call_on_and_reactivation_restores_it() {
    let mut b = ringing_world();
    let a_conn = b.conns[&UserId::from("a")][0];
    b.inbound("c1", N);
    b.offer_to("a");
    b.take();
    done(&by(&mut b, "adm", AdminCommand::SetLifecycle { user: "a".into(), lifecycle: Lifecycle::Deactivated }));
    assert_eq!(closes(&b), [(a_conn, crate::core::CloseReason::Deactivated)]);
    assert_eq!(b.offered_users(), ["b"], "the call moved on at once");
    assert_eq!(directory_user(&b, "a").map(|d| d.0), Some(Lifecycle::Deactivated));
    assert_eq!(b.status_of("a"), Status::Offline);
    assert!(!b.engine.inspect().is_eligible(&acme(), &"a".into()));
    let h = b.input(Input::Connect { account: acme(), user: "a".into(), conn: ConnId(77) });
    assert_eq!(code(&h), ErrorCode::Forbidden, "a deactivated user cannot connect");
    // Data and configuration are kept: still assigned and a target.
    assert_eq!(b.engine.inspect().targets(&acme(), &N.into()), ["a", "b"]);
    let o = b.offer_to("b");
    b.accept("b", o);
    b.answered("c1", "b");
    b.take();
    // Skipped while deactivated...
    b.inbound("c2", N);
    assert!(b.offered_users().is_empty(), "b is busy and a is deactivated");
    b.take();
    // ... and back after reactivation: the waiting call goes to it.
    done(&by(&mut b, "adm", AdminCommand::SetLifecycle { user: "a".into(), lifecycle: Lifecycle::Active }));
    b.connect("a");
    assert_eq!(b.offered_users(), ["a"]);
    b.check();
}

#[test]
fn deactivating_or_removing_a_user_on_a_call_keeps_the_call() {
    for lifecycle in [Lifecycle::Deactivated, Lifecycle::Removed] {
        let mut b = ringing_world();
        b.inbound("c1", N);
        let o = b.offer_to("a");
        b.accept("a", o);
        b.answered("c1", "a");
        b.take();
        done(&by(&mut b, "adm", AdminCommand::SetLifecycle { user: "a".into(), lifecycle }));
        assert_eq!(closes(&b).len(), 1, "its connection is closed");
        assert!(
            b.gateway_cmds().iter().all(|c| !matches!(c, GatewayCommand::CallHangup { .. })),
            "the caller is not cut off"
        );
        assert_eq!(b.engine.inspect().live_call_count(), 1);
        b.take();
        b.ended("c1", EndReason::CallerHangup);
        let rec = b.call_record("c1").unwrap();
        assert_eq!(rec.answered_by.as_ref().map(UserId::as_str), Some("a"), "history keeps who answered");
        b.take();
        b.inbound("c2", N);
        assert_eq!(b.offered_users(), ["b"], "{lifecycle:?}: routing skips a");
        let targets = b.engine.inspect().targets(&acme(), &N.into());
        if lifecycle == Lifecycle::Removed {
            assert_eq!(targets, ["b"], "removal unassigns");
            assert_eq!(directory_user(&b, "a"), None, "nothing new about a");
        } else {
            assert_eq!(targets, ["a", "b"], "deactivation keeps the configuration");
        }
        b.check();
    }
}

#[test]
fn removal_unassigns_revokes_the_token_and_an_empty_number_still_queues_and_overflows() {
    let mut b = ringing_world();
    b.inbound("c1", N);
    b.offer_to("a");
    b.take();
    done(&by(&mut b, "adm", AdminCommand::SetLifecycle { user: "a".into(), lifecycle: Lifecycle::Removed }));
    // The token is revoked: it stays known (as removed, so it gets 403) and
    // can never log in again.
    assert_eq!(directory_user(&b, "a").map(|d| d.0), Some(Lifecycle::Removed));
    let h = b.input(Input::Connect { account: acme(), user: "a".into(), conn: ConnId(88) });
    assert_eq!(code(&h), ErrorCode::Forbidden);
    assert_eq!(b.offered_users(), ["b"], "the ringing call moved on");
    assert_eq!(closes(&b)[0].1, crate::core::CloseReason::Removed);
    let v = b.engine.user_view_unchecked(&acme(), &"a".into()).unwrap();
    assert!(v.assigned.is_empty() && v.status == Lifecycle::Removed);
    assert!(b.engine.inspect().numbers(&acme()).contains(&N.into()), "the number stays");
    b.decline("b", b.offer_to("b"));
    b.take();
    done(&by(&mut b, "adm", AdminCommand::SetLifecycle { user: "b".into(), lifecycle: Lifecycle::Removed }));
    assert!(b.engine.inspect().targets(&acme(), &N.into()).is_empty());
    b.take();
    b.inbound("c2", N);
    assert!(
        b.gateway_cmds().iter().any(|c| matches!(c, GatewayCommand::CallQueued { call_id, .. } if call_id == "c2"))
    );
    b.advance(std::time::Duration::from_secs(61));
    let overflowed: Vec<_> = b
        .gateway_cmds()
        .into_iter()
        .filter(|c| matches!(c, GatewayCommand::CallVoicemail { reason: OverflowReason::MaxWait, .. }))
        .collect();
    assert_eq!(overflowed.len(), 2, "both waiting calls overflow as configured: {overflowed:?}");
    b.check();
}

// ---- ownership --------------------------------------------------------------

#[test]
fn ownership_transfer_needs_reauthentication_and_makes_the_old_owner_an_admin() {
    let mut b = world(Pro);
    let wrong = AdminCommand::TransferOwnership { to: "adm".into(), confirm_hash: hash_token("adm-token") };
    assert_eq!(refused(&mut b, "own", wrong), ErrorCode::Forbidden, "someone else's token does not confirm");
    let to_self = AdminCommand::TransferOwnership { to: "own".into(), confirm_hash: hash_token("own-token") };
    assert_eq!(refused(&mut b, "own", to_self), ErrorCode::Conflict);
    done(&b.admin(AdminCommand::SetLifecycle { user: "agt".into(), lifecycle: Lifecycle::Deactivated }));
    let inactive = AdminCommand::TransferOwnership { to: "agt".into(), confirm_hash: hash_token("own-token") };
    assert_eq!(refused(&mut b, "own", inactive), ErrorCode::Conflict, "the new owner must be active");
    let ghost = AdminCommand::TransferOwnership { to: "ghost".into(), confirm_hash: hash_token("own-token") };
    assert_eq!(refused(&mut b, "own", ghost), ErrorCode::NotFound);

    b.take();
    done(&by(
        &mut b,
        "own",
        AdminCommand::TransferOwnership { to: "adm".into(), confirm_hash: hash_token("own-token") },
    ));
    assert_eq!((role_of(&b, "adm"), role_of(&b, "own")), (Role::Owner, Role::Admin));
    let published: Vec<(String, Role)> = b
        .out
        .iter()
        .filter_map(|o| match o {
            Output::Directory(DirectoryChange::User { user, role, .. }) => Some((user.to_string(), *role)),
            _ => None,
        })
        .collect();
    assert_eq!(published, [("adm".to_string(), Role::Owner), ("own".to_string(), Role::Admin)]);
    // Billing follows the owner.
    assert!(b.engine.view_billing(&acme(), &user_actor("adm")).is_ok());
    assert_eq!(b.engine.view_billing(&acme(), &user_actor("own")).unwrap_err().code, ErrorCode::Forbidden);
    // Provisioning at the next start names `own` owner and `adm` admin
    // again: the transfer wins, there is still exactly one owner.
    add_user(&mut b, "acme", "own", Role::Owner);
    add_user(&mut b, "acme", "adm", Role::Admin);
    assert_eq!((role_of(&b, "adm"), role_of(&b, "own")), (Role::Owner, Role::Admin));
    // The old owner can now be removed, by the new one.
    done(&by(&mut b, "adm", AdminCommand::SetLifecycle { user: "own".into(), lifecycle: Lifecycle::Removed }));
    assert_eq!(lifecycle_of(&b, "own"), Lifecycle::Removed);
    let owners =
        b.engine.view_users(&acme(), &user_actor("adm")).unwrap().iter().filter(|u| u.role == Role::Owner).count();
    assert_eq!(owners, 1);
}

#[test]
fn provisioning_matches_the_file_but_never_makes_a_second_owner() {
    let mut b = world(Pro);
    // A new file user named owner while the account has one: an admin.
    add_user(&mut b, "acme", "boss", Role::Owner);
    assert_eq!(role_of(&b, "boss"), Role::Admin);
    // The owner stays owner whatever the file says.
    add_user(&mut b, "acme", "own", Role::Agent);
    assert_eq!(role_of(&b, "own"), Role::Owner);
    // The file is authoritative for what it declares (PROTOCOL: "updated
    // to match the file when present"): a role changed through the API is
    // set back by the next provisioning.
    done(&by(&mut b, "own", AdminCommand::SetRole { user: "agt".into(), role: Role::Admin }));
    assert_eq!(role_of(&b, "agt"), Role::Admin);
    add_user(&mut b, "acme", "agt", Role::Agent);
    assert_eq!(role_of(&b, "agt"), Role::Agent);
    add_user(&mut b, "acme", "t1", Role::Supervisor);
    assert_eq!(role_of(&b, "t1"), Role::Supervisor);
    // A removed user stays removed and gets no new token from the file.
    done(&by(&mut b, "own", AdminCommand::SetLifecycle { user: "t1".into(), lifecycle: Lifecycle::Removed }));
    b.take();
    let cmd = AdminCommand::UpsertUser {
        user: "t1".into(),
        email: "t1@acme.test".into(),
        role: Role::Agent,
        token_hash: Some(hash_token("fresh-token")),
    };
    done(&b.admin(cmd));
    assert_eq!(directory_user(&b, "t1"), Some((Lifecycle::Removed, Some(hash_token("t1-token")))));
}

// ---- bulk invitations -------------------------------------------------------

#[test]
fn bulk_rows_are_checked_one_by_one_and_the_good_ones_invited() {
    let mut b = world(Plan::Team);
    let rows = vec![
        invite_spec("ann@acme.test", Role::Agent, Some(N), "b1"),
        invite_spec("not-an-email", Role::Agent, None, "b2"),
        invite_spec("ben@acme.test", Role::Admin, None, "b3"),
        invite_spec("ANN@acme.test", Role::Agent, None, "b4"),
        invite_spec("own@acme.test", Role::Agent, None, "b5"),
        invite_spec("sue@acme.test", Role::Supervisor, None, "b6"),
        invite_spec("cid@acme.test", Role::Agent, Some("+15559999"), "b7"),
        invite_spec("dan@acme.test", Role::Agent, Some("555-0100"), "b8"),
        invite_spec("eve@acme.test", Role::Owner, None, "b9"),
        invite_spec("fay@acme.test", Role::Agent, None, "b1"),
    ];
    let checks = b.engine.check_invites(&acme(), &user_actor("adm"), &rows).unwrap();
    let got: Vec<Result<String, ErrorCode>> =
        checks.iter().map(|r| r.as_ref().map(|u| u.to_string()).map_err(|e| e.code)).collect();
    use ErrorCode::*;
    assert_eq!(
        got,
        [
            Ok("ann".to_string()),
            Err(BadRequest),
            Ok("ben".to_string()),
            Err(Conflict),   // same email as row 1
            Err(Conflict),   // already a user
            Err(Forbidden),  // supervisor on team
            Err(NotFound),   // no such number here
            Err(BadRequest), // not E.164
            Err(BadRequest), // owner
            Err(Conflict),   // same invite token as row 1
        ]
    );
    // All bad: the whole batch is refused and nothing changes.
    let bad: Vec<InviteSpec> = rows.iter().zip(&checks).filter(|(_, c)| c.is_err()).map(|(r, _)| r.clone()).collect();
    let e = refused(&mut b, "adm", AdminCommand::Invite { invites: bad });
    assert_eq!(e, BadRequest, "the first bad row's reason");
    // Mixed: refused as a whole too (the shell sends only good rows).
    assert_eq!(refused(&mut b, "adm", AdminCommand::Invite { invites: rows.clone() }), BadRequest);
    // All good.
    let good: Vec<InviteSpec> = rows.iter().zip(&checks).filter(|(_, c)| c.is_ok()).map(|(r, _)| r.clone()).collect();
    done(&by(&mut b, "adm", AdminCommand::Invite { invites: good }));
    assert_eq!(lifecycle_of(&b, "ann"), Lifecycle::Invited);
    assert_eq!(role_of(&b, "ben"), Role::Admin);
    assert!(b.engine.view_number(&acme(), &user_actor("adm"), &N.into()).unwrap().assigned.contains(&"ann".into()));
    let again = b.engine.check_invites(&acme(), &user_actor("adm"), &rows[..1]).unwrap();
    assert_eq!(again[0].as_ref().unwrap_err().code, Conflict, "now taken");
    assert_eq!(refused(&mut b, "adm", AdminCommand::Invite { invites: vec![] }), BadRequest);
}

#[test]
fn bulk_respects_the_essentials_seat_cap_row_by_row() {
    let mut b = Bed::with_account("tiny", Plan::Essentials);
    add_user(&mut b, "tiny", "o", Role::Owner);
    add_user(&mut b, "tiny", "p", Role::Agent);
    add_user(&mut b, "tiny", "q", Role::Agent);
    let rows: Vec<InviteSpec> =
        (1..=4).map(|i| invite_spec(&format!("u{i}@tiny.test"), Role::Agent, None, &format!("t{i}"))).collect();
    let checks = b.engine.check_invites(&"tiny".into(), &user_actor("o"), &rows).unwrap();
    let ok: Vec<bool> = checks.iter().map(Result::is_ok).collect();
    assert_eq!(ok, [true, true, false, false], "3 active + 2 invited = 5 seats");
    assert_eq!(checks[2].as_ref().unwrap_err().code, ErrorCode::Conflict);
}

// ---- numbers ----------------------------------------------------------------

#[test]
fn numbers_are_validated_before_anything_changes() {
    let mut b = world(Pro);
    let create = |n: &str, s: NumberSpec| AdminCommand::CreateNumber { number: n.into(), spec: Box::new(s) };
    assert_eq!(refused(&mut b, "adm", create("555-0199", spec("X", &[], None))), ErrorCode::BadRequest);
    assert_eq!(refused(&mut b, "adm", create(N, spec("X", &[], None))), ErrorCode::Conflict, "exists");
    assert_eq!(refused(&mut b, "adm", create("+15550199", spec(" ", &[], None))), ErrorCode::BadRequest);
    assert_eq!(refused(&mut b, "adm", create("+15550199", spec("X", &["zed"], None))), ErrorCode::BadRequest);
    assert_eq!(refused(&mut b, "adm", create("+15550199", spec("X", &["t1", "t1"], None))), ErrorCode::BadRequest);
    let mut both = spec("X", &["t1"], None);
    both.caller_id = vec!["t1".into()];
    assert_eq!(refused(&mut b, "adm", create("+15550199", both)), ErrorCode::BadRequest);
    let mut to_self = spec("X", &[], None);
    to_self.queue.overflow = Overflow::Forward("+15550199".into());
    let e = by(&mut b, "adm", create("+15550199", to_self));
    assert!(e.result.unwrap_err().message.contains("itself"));
    let mut bad_timeout = spec("X", &[], None);
    bad_timeout.routing.ring_timeout = std::time::Duration::ZERO;
    assert_eq!(refused(&mut b, "adm", create("+15550199", bad_timeout)), ErrorCode::BadRequest);
    // Forwarding loops among the account's numbers.
    let fwd = |to: &str| NumberPatch {
        queue: QueuePatch { overflow: Some(Overflow::Forward(to.into())), ..Default::default() },
        ..Default::default()
    };
    done(&by(&mut b, "adm", AdminCommand::UpdateNumber { number: N.into(), patch: Box::new(fwd(N2)) }));
    let e = refused(&mut b, "adm", AdminCommand::UpdateNumber { number: N2.into(), patch: Box::new(fwd(N)) });
    assert_eq!(e, ErrorCode::BadRequest);
    let to_self = AdminCommand::UpdateNumber { number: N2.into(), patch: Box::new(fwd(N2)) };
    assert_eq!(refused(&mut b, "adm", to_self), ErrorCode::BadRequest);
    // Removed users cannot be assigned.
    done(&by(&mut b, "adm", AdminCommand::SetLifecycle { user: "agt".into(), lifecycle: Lifecycle::Removed }));
    let patch = NumberPatch { assigned: Some(vec!["agt".into()]), ..Default::default() };
    assert_eq!(
        refused(&mut b, "adm", AdminCommand::UpdateNumber { number: N2.into(), patch: Box::new(patch) }),
        ErrorCode::BadRequest
    );
    let missing = AdminCommand::UpdateNumber { number: "+15550777".into(), patch: Box::new(fwd(N)) };
    assert_eq!(refused(&mut b, "adm", missing), ErrorCode::NotFound);
    let empty = AdminCommand::UpdateNumber { number: N.into(), patch: Box::new(NumberPatch::default()) };
    assert_eq!(refused(&mut b, "adm", empty), ErrorCode::BadRequest);
}

#[test]
fn patches_change_only_what_they_name_and_apply_to_the_next_decision() {
    let mut b = world(Pro);
    let view = |b: &Bed, n: &str| b.engine.view_number(&acme(), &user_actor("adm"), &n.into()).unwrap();
    let before = view(&b, N);
    let rename = NumberPatch { name: Some("Help desk".into()), ..Default::default() };
    done(&by(&mut b, "adm", AdminCommand::UpdateNumber { number: N.into(), patch: Box::new(rename) }));
    let after = view(&b, N);
    assert_eq!(after.name, "Help desk");
    assert_eq!((after.assigned, after.routing, after.queue), (before.assigned, before.routing, before.queue));

    // Two callers wait on N2 (t1 is not connected).
    b.inbound("w1", N2);
    b.inbound("w2", N2);
    assert_eq!(view(&b, N2).waiting, 2);
    b.connect("agt");
    b.take();
    // Adding a connected agent: the oldest waiting call is offered at once,
    // the other keeps waiting, nobody is dropped.
    let patch = NumberPatch { assigned: Some(vec!["t1".into(), "agt".into()]), ..Default::default() };
    done(&by(&mut b, "adm", AdminCommand::UpdateNumber { number: N2.into(), patch: Box::new(patch) }));
    assert_eq!(b.offers_to("agt").iter().map(|(_, c)| c.as_str()).collect::<Vec<_>>(), ["w1"]);
    let q = b.engine.inspect().queue(&acme(), &N2.into());
    assert_eq!(q.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), ["w1", "w2"], "places kept");
    assert!(
        b.gateway_cmds()
            .iter()
            .all(|c| !matches!(c, GatewayCommand::CallHangup { .. } | GatewayCommand::CallVoicemail { .. }))
    );

    // Explicit targets, then back to the assigned users with null.
    let json = r#"{"routing": {"targets": ["t1"], "strategy": "round_robin", "ring_timeout": "5s"}, "queue": {"max_waiting": 3}}"#;
    let patch: NumberPatch = serde_json::from_str(json).unwrap();
    done(&by(&mut b, "adm", AdminCommand::UpdateNumber { number: N2.into(), patch: Box::new(patch) }));
    let v = view(&b, N2);
    assert_eq!(v.targets, [UserId::from("t1")]);
    assert_eq!(v.routing.strategy, Strategy::RoundRobin);
    assert_eq!(v.routing.ring_timeout, std::time::Duration::from_secs(5));
    assert_eq!(v.queue.max_waiting, 3);
    assert_eq!(v.queue.max_wait, QueueSettings::default().max_wait, "untouched");
    let patch: NumberPatch = serde_json::from_str(r#"{"routing": {"targets": null}}"#).unwrap();
    done(&by(&mut b, "adm", AdminCommand::UpdateNumber { number: N2.into(), patch: Box::new(patch) }));
    assert_eq!(view(&b, N2).targets, [UserId::from("t1"), UserId::from("agt")]);
    assert!(serde_json::from_str::<NumberPatch>(r#"{"routing": {"strategy": "fastest"}}"#).is_err());
    assert!(serde_json::from_str::<NumberPatch>(r#"{"nmae": "typo"}"#).is_err());
    // A patch survives the journal's encoding unchanged (absent, null and
    // present targets are three different things).
    for json in [r#"{"routing": {"targets": null}}"#, r#"{"routing": {"targets": ["a"]}}"#, r#"{"name": "x"}"#] {
        let p: NumberPatch = serde_json::from_str(json).unwrap();
        let back: NumberPatch = rmp_serde::from_slice(&rmp_serde::to_vec_named(&p).unwrap()).unwrap();
        assert_eq!(back, p, "{json}");
    }

    // The file is authoritative for the numbers it declares: provisioning
    // sets an API change back.
    done(&by(
        &mut b,
        "adm",
        AdminCommand::UpdateNumber {
            number: N.into(),
            patch: Box::new(NumberPatch { name: Some("API".into()), ..Default::default() }),
        },
    ));
    assert_eq!(view(&b, N).name, "API");
    let h = b.admin(AdminCommand::UpsertNumber { number: N.into(), spec: spec("File", &["t1"], None) });
    assert_eq!(h.result, Ok(Reply::Done));
    assert_eq!(view(&b, N).name, "File");
    b.check();
}

// ---- seats and billing ------------------------------------------------------

fn amounts(v: &BillingView) -> Vec<(LedgerKind, u64)> {
    v.ledger.iter().map(|e| (e.kind, e.amount_cents)).collect()
}

/// A team-plan account whose owner and four agents are active from T0.
fn five_on_team() -> Bed {
    let mut b = Bed::with_account("shop", Plan::Team);
    add_user(&mut b, "shop", "o", Role::Owner);
    for u in ["a2", "a3", "a4", "a5"] {
        add_user(&mut b, "shop", u, Role::Agent);
    }
    b
}

#[test]
fn the_help_centre_example() {
    let mut b = five_on_team();
    let v = billing(&b, "o");
    use LedgerKind::*;
    // Opening invoice at the 2-seat minimum, then three more full seats
    // (added on day 0: all 30 days left).
    assert_eq!(amounts(&v), [(Opened, 5800), (SeatAdded, 2900), (SeatAdded, 2900), (SeatAdded, 2900)]);
    assert_eq!((v.seats.active, v.seats.paid, v.next_invoice.amount_cents), (5, 5, 14_500));
    // Day 15 of 30: a sixth user is invited and accepts.
    b.now = T0 + DAY * 15;
    done(&by(
        &mut b,
        "o",
        AdminCommand::Invite { invites: vec![invite_spec("six@shop.test", Role::Agent, None, "h6")] },
    ));
    let v = billing(&b, "o");
    assert_eq!(v.ledger.len(), 4, "an invitation is not billed");
    assert_eq!(v.seats.invited, 1);
    done(&accept(&mut b, "h6", "six-token"));
    let v = billing(&b, "o");
    let last = v.ledger.last().unwrap();
    assert_eq!((last.kind, last.amount_cents, last.days, last.cycle_days), (SeatAdded, 1450, 15, 30));
    assert_eq!(last.user.as_ref().map(UserId::as_str), Some("six"));
    assert_eq!(last.seats, 6);
    assert_eq!((v.next_invoice.seats, v.next_invoice.unit_cents, v.next_invoice.amount_cents), (6, 2900, 17_400));
    assert_eq!(v.next_invoice.at.as_deref(), Some((T0 + DAY * 30).rfc3339().as_str()));
    assert_eq!(v.cycle.as_ref().map(|c| (c.day, c.days_left)), Some((15, 15)));
    // The renewal, on the core timer, writes exactly that invoice.
    b.advance(DAY * 15);
    let v = billing(&b, "o");
    let last = v.ledger.last().unwrap();
    assert_eq!((last.kind, last.seats, last.amount_cents), (Renewal, 6, 17_400));
    assert_eq!(last.at, (T0 + DAY * 30).rfc3339());
    assert_eq!(v.cycle.unwrap().renews_at, (T0 + DAY * 60).rfc3339());
}

#[test]
fn the_minimum_applies_and_paid_seats_are_reused() {
    let mut b = Bed::with_account("solo", Plan::Pro);
    add_user(&mut b, "solo", "o", Role::Owner);
    let v = billing(&b, "o");
    assert_eq!(amounts(&v), [(LedgerKind::Opened, 2 * 4900)]);
    assert_eq!((v.seats.active, v.next_invoice.seats, v.next_invoice.amount_cents), (1, 2, 9800));
    // The second user takes the second paid seat: nothing charged.
    add_user(&mut b, "solo", "p", Role::Agent);
    assert_eq!(billing(&b, "o").ledger.len(), 1);
    // Removing refunds nothing; a replacement in the same cycle is free.
    add_user(&mut b, "solo", "q", Role::Agent);
    assert_eq!(billing(&b, "o").ledger.len(), 2);
    b.now = T0 + DAY * 10;
    done(&by(&mut b, "o", AdminCommand::SetLifecycle { user: "q".into(), lifecycle: Lifecycle::Removed }));
    let v = billing(&b, "o");
    assert_eq!(v.ledger.len(), 2, "no refund");
    assert_eq!((v.seats.paid, v.next_invoice.seats), (3, 2), "the seat ends at renewal");
    done(&by(&mut b, "o", AdminCommand::Invite { invites: vec![invite_spec("r@solo.test", Role::Agent, None, "hr")] }));
    done(&accept(&mut b, "hr", "r-token"));
    assert_eq!(billing(&b, "o").ledger.len(), 2, "the paid seat is reused");
    // Renewal bills the active users.
    b.advance(DAY * 20);
    let last = billing(&b, "o").ledger.last().cloned().unwrap();
    assert_eq!((last.kind, last.seats, last.amount_cents), (LedgerKind::Renewal, 3, 3 * 4900));
}

#[test]
fn deactivated_users_are_not_charged() {
    let mut b = five_on_team();
    let off = |u: &str| AdminCommand::SetLifecycle { user: u.into(), lifecycle: Lifecycle::Deactivated };
    let on = |u: &str| AdminCommand::SetLifecycle { user: u.into(), lifecycle: Lifecycle::Active };
    done(&by(&mut b, "o", off("a5")));
    let v = billing(&b, "o");
    assert_eq!((v.seats.active, v.seats.deactivated, v.next_invoice.amount_cents), (4, 1, 4 * 2900));
    // Back in the same cycle: its seat is already paid.
    done(&by(&mut b, "o", on("a5")));
    assert_eq!(billing(&b, "o").ledger.len(), 4);
    done(&by(&mut b, "o", off("a5")));
    b.advance(DAY * 30);
    let last = billing(&b, "o").ledger.last().cloned().unwrap();
    assert_eq!((last.kind, last.seats, last.amount_cents), (LedgerKind::Renewal, 4, 4 * 2900));
    // Reactivated on day 10 of the new cycle: 20 of 30 days, rounded half
    // up: 2900 * 20 / 30 = 1933.33 -> 1933.
    b.advance(DAY * 10);
    done(&by(&mut b, "o", on("a5")));
    let last = billing(&b, "o").ledger.last().cloned().unwrap();
    assert_eq!((last.kind, last.days, last.amount_cents), (LedgerKind::SeatAdded, 20, 1933));
}

#[test]
fn essentials_caps_seats_at_five() {
    let mut b = Bed::with_account("tiny", Plan::Essentials);
    add_user(&mut b, "tiny", "o", Role::Owner);
    for u in ["b", "c", "d"] {
        add_user(&mut b, "tiny", u, Role::Agent);
    }
    let inv = |e: &str, h: &str| AdminCommand::Invite { invites: vec![invite_spec(e, Role::Agent, None, h)] };
    done(&by(&mut b, "o", inv("e@tiny.test", "he")));
    // 4 active + 1 pending invitation = 5.
    assert_eq!(refused(&mut b, "o", inv("f@tiny.test", "hf")), ErrorCode::Conflict);
    done(&accept(&mut b, "he", "e-token"));
    assert_eq!(refused(&mut b, "o", inv("f@tiny.test", "hf")), ErrorCode::Conflict);
    // A deactivated user frees its seat, and cannot come back over the cap.
    done(&by(&mut b, "o", AdminCommand::SetLifecycle { user: "d".into(), lifecycle: Lifecycle::Deactivated }));
    done(&by(&mut b, "o", inv("f@tiny.test", "hf")));
    let back = AdminCommand::SetLifecycle { user: "d".into(), lifecycle: Lifecycle::Active };
    assert_eq!(refused(&mut b, "o", back), ErrorCode::Conflict);
    // An expired invitation frees its seat; resending needs it back.
    b.advance(INVITE_TTL);
    done(&by(&mut b, "o", AdminCommand::SetLifecycle { user: "d".into(), lifecycle: Lifecycle::Active }));
    let resend = AdminCommand::ResendInvite { user: "f".into(), invite_hash: "hf2".into() };
    assert_eq!(refused(&mut b, "o", resend), ErrorCode::Conflict);
    let v = billing(&b, "o");
    assert_eq!((v.max_seats, v.seats.active), (Some(5), 5));
}

#[test]
fn plan_changes_are_the_owners_and_checked() {
    let mut b = world(Pro);
    // Six seat holders do not fit essentials; supervisors need pro.
    let to = |plan| AdminCommand::SetPlan { plan };
    let e = by(&mut b, "own", to(Plan::Team));
    assert_eq!(code(&e), ErrorCode::Conflict);
    assert!(e.result.unwrap_err().message.contains("sup"));
    done(&by(&mut b, "own", AdminCommand::SetRole { user: "sup".into(), role: Role::Agent }));
    // Five active users fit essentials; a pending invitation makes six.
    done(&by(
        &mut b,
        "own",
        AdminCommand::Invite { invites: vec![invite_spec("x@acme.test", Role::Agent, None, "hx")] },
    ));
    assert_eq!(refused(&mut b, "own", to(Plan::Essentials)), ErrorCode::Conflict);
    done(&by(&mut b, "own", to(Plan::Team)));
    let v = billing(&b, "own");
    assert_eq!(v.plan, Plan::Team);
    assert_eq!(v.ledger.last().map(|e| (e.kind, e.amount_cents)), Some((LedgerKind::PlanChanged, 0)));
    assert_eq!(v.next_invoice.unit_cents, 2900);
    assert_eq!(by(&mut b, "own", to(Plan::Team)).result, Ok(Reply::ReadOnly));
    // The plan is declared in the file: the next start applies the file's.
    assert_eq!(b.admin(to(Plan::Pro)).result, Ok(Reply::Done));
    assert_eq!(billing(&b, "own").plan, Plan::Pro);
}

#[test]
fn prices_come_from_the_provisioned_table() {
    let mut b = Bed::with_account("shop", Plan::Team);
    let prices = Billing { team: 3000, min_seats: 3, cycle_days: 31, ..Billing::default() };
    done(&b.input(Input::Admin {
        account: "shop".into(),
        actor: Actor::System,
        cmd: Box::new(AdminCommand::SetPrices { prices }),
    }));
    add_user(&mut b, "shop", "o", Role::Owner);
    let v = billing(&b, "o");
    assert_eq!(amounts(&v), [(LedgerKind::Opened, 9000)]);
    assert_eq!(v.cycle.unwrap().days, 31);
    let bad = Billing { min_seats: 0, ..Billing::default() };
    let h = b.input(Input::Admin {
        account: "shop".into(),
        actor: Actor::System,
        cmd: Box::new(AdminCommand::SetPrices { prices: bad }),
    });
    assert_eq!(code(&h), ErrorCode::BadRequest);
}

// ---- journal replay -------------------------------------------------------

#[test]
fn replaying_the_journal_rebuilds_teams_invitations_and_billing() {
    let mut b = five_on_team();
    let mut log: Vec<(Instant, Input)> = Vec::new();
    // The same provisioning, at the same times, is the journal's start.
    let mut fresh: Engine = five_on_team().engine;
    let feed = |b: &mut Bed, log: &mut Vec<(Instant, Input)>, input: Input| {
        let h = b.input(input.clone());
        if h.journal {
            log.push((b.now, input));
        }
        h
    };
    let admin = |who: Actor, cmd| Input::Admin { account: "shop".into(), actor: who, cmd: Box::new(cmd) };
    let o = || user_actor("o");
    b.now = T0 + DAY * 3;
    feed(
        &mut b,
        &mut log,
        admin(o(), AdminCommand::Invite { invites: vec![invite_spec("x@shop.test", Role::Agent, None, "hx")] }),
    );
    feed(
        &mut b,
        &mut log,
        admin(o(), AdminCommand::Invite { invites: vec![invite_spec("bad", Role::Agent, None, "hy")] }),
    );
    b.now = T0 + DAY * 9;
    feed(
        &mut b,
        &mut log,
        admin(Actor::Invitee, AdminCommand::AcceptInvite { invite_hash: "hx".into(), token_hash: "tx".into() }),
    );
    feed(&mut b, &mut log, admin(o(), AdminCommand::SetLifecycle { user: "a2".into(), lifecycle: Lifecycle::Removed }));
    b.now = T0 + DAY * 31;
    feed(&mut b, &mut log, admin(o(), AdminCommand::SetRole { user: "x".into(), role: Role::Admin }));
    feed(
        &mut b,
        &mut log,
        admin(o(), AdminCommand::TransferOwnership { to: "x".into(), confirm_hash: hash_token("o-token") }),
    );
    b.now = T0 + DAY * 70;
    b.input(Input::Tick);
    assert_eq!(log.len(), 5, "the refused invitation is not journaled");
    for (at, input) in log {
        fresh.handle(at, input);
    }
    fresh.handle(b.now, Input::Tick);
    assert!(fresh.state_bytes() == b.engine.state_bytes(), "replay diverged");
    let renewals = billing(&b, "x").ledger.iter().filter(|e| e.kind == LedgerKind::Renewal).count();
    assert_eq!(renewals, 2, "days 30 and 60");
    // And through a snapshot.
    let restored = Engine::restore(&b.engine.snapshot().unwrap()).unwrap();
    assert!(restored.state_bytes() == b.engine.state_bytes(), "snapshot diverged");
}

#[test]
fn provisioning_leaves_off_a_user_removed_at_run_time() {
    let view = |b: &Bed, n: &str| b.engine.view_number(&acme(), &user_actor("adm"), &n.into()).unwrap();
    let mut b = world(Plan::Pro);
    done(&b.admin(AdminCommand::UpsertNumber {
        number: N.into(),
        spec: spec("File", &["t1", "agt"], Some(&["t1", "agt"])),
    }));
    done(&by(&mut b, "adm", AdminCommand::SetLifecycle { user: "t1".into(), lifecycle: Lifecycle::Removed }));
    // The next start provisions the same file, which still names t1.
    let mut s = spec("File", &["t1", "agt"], Some(&["t1", "agt"]));
    s.caller_id = vec!["t1".into()];
    done(&b.admin(AdminCommand::UpsertNumber { number: N.into(), spec: s }));
    let v = view(&b, N);
    assert_eq!(v.targets, [UserId::from("agt")]);
    assert!(!v.assigned.contains(&UserId::from("t1")) && !v.caller_id.contains(&UserId::from("t1")), "{v:?}");
    // An API change still may not name a removed user.
    let patch: NumberPatch = serde_json::from_str(r#"{"assigned": ["t1"]}"#).unwrap();
    let h = by(&mut b, "adm", AdminCommand::UpdateNumber { number: N.into(), patch: Box::new(patch) });
    assert_eq!(code(&h), ErrorCode::BadRequest);
    b.check();
}
