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
