//! Who may do what in a mesh, as types: a member's [`Role`], how it was removed
//! ([`Removal`]), and what kind of recipient identity a key is ([`PeerKind`]). Travels as
//! text on the wire and in the database, and as these enums everywhere else.

use crate::http::RemoveMode;
use crate::invite::InviteRole;

crate::text_enum! {
    /// A member's role. The owner created the mesh; admins may invite and remove members.
    pub enum Role {
        Owner = "owner",
        Admin = "admin",
        Member = "member",
    }
}

impl Role {
    /// Owner or admin: may register member invites, list invites, and remove members.
    pub fn is_admin(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }

    /// The role an invite grants.
    pub fn granted_by(invite: InviteRole) -> Self {
        match invite {
            InviteRole::Admin => Role::Admin,
            InviteRole::Member => Role::Member,
        }
    }
}

crate::text_enum! {
    /// Why a member is no longer active. A kicked key may re-join with a new invite; a
    /// revoked key is banned.
    pub enum Removal {
        Kicked = "kicked",
        Revoked = "revoked",
    }
}

impl From<RemoveMode> for Removal {
    fn from(mode: RemoveMode) -> Self {
        match mode {
            RemoveMode::Kick => Removal::Kicked,
            RemoveMode::Revoke => Removal::Revoked,
        }
    }
}

crate::text_enum! {
    /// A recipient identity: a member's own key, or one of its session keys.
    pub enum PeerKind {
        Member = "member",
        Session = "session",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_removals() {
        assert!(Role::Owner.is_admin() && Role::Admin.is_admin() && !Role::Member.is_admin());
        assert_eq!(Role::granted_by(InviteRole::Admin), Role::Admin);
        assert_eq!(Removal::from(RemoveMode::Revoke).as_str(), "revoked");
        assert_eq!(PeerKind::parse("session"), Some(PeerKind::Session));
    }
}
