//! Roles, plans and the user lifecycle.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Admin,
    Supervisor,
    Agent,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Supervisor => "supervisor",
            Role::Agent => "agent",
        }
    }
    /// Owners and admins see and manage the whole account.
    pub fn is_manager(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }

    pub const ALL: [Role; 4] = [Role::Owner, Role::Admin, Role::Supervisor, Role::Agent];

    /// The permission matrix: whether this role may do `action` on `plan`.
    /// Rules about *whom* an action targets (nobody but the owner touches
    /// the owner, a user may read its own profile and numbers) are checked
    /// where the target is known; this is the role-level table that
    /// `docs/permissions.md` writes out.
    pub fn may(self, action: Action, plan: Plan) -> bool {
        match action {
            Action::ViewAccount | Action::UseOwnNumbers => true,
            Action::ViewTeam | Action::ManageTeam | Action::ViewAllNumbers | Action::ManageNumbers => self.is_manager(),
            Action::Billing | Action::TransferOwnership => self == Role::Owner,
            Action::Supervise => match self {
                Role::Owner | Role::Admin => true,
                Role::Supervisor => plan.has_supervisors(),
                Role::Agent => false,
            },
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a user may ask for, one row of the permission matrix each.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, PartialOrd, Ord)]
pub enum Action {
    /// The account summary (`GET /v1/account`).
    ViewAccount,
    /// Calls, SMS and presence on the numbers one is assigned to or may use
    /// as caller id; reading one's own profile and numbers.
    UseOwnNumbers,
    /// Every user's profile.
    ViewTeam,
    /// Invite (one or bulk), resend, change roles, deactivate, reactivate,
    /// remove.
    ManageTeam,
    /// Every number's configuration.
    ViewAllNumbers,
    /// Create numbers and change their name, users, routing and queue.
    ManageNumbers,
    /// The plan, seats and the ledger.
    Billing,
    TransferOwnership,
    /// `monitor` and `subscribe queues` on the WebSocket.
    Supervise,
}

impl Action {
    pub const ALL: [Action; 9] = [
        Action::ViewAccount,
        Action::UseOwnNumbers,
        Action::ViewTeam,
        Action::ManageTeam,
        Action::ViewAllNumbers,
        Action::ManageNumbers,
        Action::Billing,
        Action::TransferOwnership,
        Action::Supervise,
    ];

    /// Used in refusal messages.
    pub fn describe(self) -> &'static str {
        match self {
            Action::ViewAccount => "view the account",
            Action::UseOwnNumbers => "use its numbers",
            Action::ViewTeam => "view the team",
            Action::ManageTeam => "manage users",
            Action::ViewAllNumbers => "view every number",
            Action::ManageNumbers => "manage numbers",
            Action::Billing => "manage billing",
            Action::TransferOwnership => "transfer ownership",
            Action::Supervise => "monitor calls or subscribe to queue stats",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, Hash, PartialOrd, Ord, Default)]
#[serde(rename_all = "snake_case")]
pub enum Plan {
    Essentials,
    #[default]
    Team,
    Pro,
}

impl Plan {
    pub fn as_str(self) -> &'static str {
        match self {
            Plan::Essentials => "essentials",
            Plan::Team => "team",
            Plan::Pro => "pro",
        }
    }

    /// The supervisor role (monitoring, live queue stats) is a Pro feature.
    pub fn has_supervisors(self) -> bool {
        matches!(self, Plan::Pro)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    Invited,
    Active,
    Deactivated,
    Removed,
}

impl Lifecycle {
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Invited => "invited",
            Lifecycle::Active => "active",
            Lifecycle::Deactivated => "deactivated",
            Lifecycle::Removed => "removed",
        }
    }
}
