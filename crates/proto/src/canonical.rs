//! The canonical strings that are signed (WIRE-V1 §Canonical signed strings, plus the
//! admin requests of our extension). Each string starts with, or is bound by, its purpose,
//! so a signature made for one purpose can never be replayed as another. Numbers are
//! decimal, no trailing newline; the signature is detached ed25519 over the UTF-8 bytes.

/// `{meshId}|{memberId}|{pubkey}|{timestamp}` — signed by the member key.
pub fn hello(mesh_id: &str, member_id: &str, pubkey: &str, timestamp_ms: i64) -> String {
    format!("{mesh_id}|{member_id}|{pubkey}|{timestamp_ms}")
}

/// `claudemesh-session-attest|{parentMemberPubkey}|{sessionPubkey}|{expiresAt}` — signed by
/// the member key.
pub fn session_attestation(
    parent_member_pubkey: &str,
    session_pubkey: &str,
    expires_at_ms: i64,
) -> String {
    format!("claudemesh-session-attest|{parent_member_pubkey}|{session_pubkey}|{expires_at_ms}")
}

/// `claudemesh-session-hello|{meshId}|{parentMemberPubkey}|{sessionPubkey}|{timestamp}` —
/// signed by the session key.
pub fn session_hello(
    mesh_id: &str,
    parent_member_pubkey: &str,
    session_pubkey: &str,
    timestamp_ms: i64,
) -> String {
    format!(
        "claudemesh-session-hello|{mesh_id}|{parent_member_pubkey}|{session_pubkey}|{timestamp_ms}"
    )
}

/// The administrative actions of the mesh-admin extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAction {
    CreateMesh,
    RegisterInvite,
    ListInvites,
    RevokeInvite,
    ListMembers,
    RemoveMember,
    /// Extension `dashboard`: ask for a single-use dashboard sign-in code.
    DashboardLogin,
}

impl AdminAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminAction::CreateMesh => "create_mesh",
            AdminAction::RegisterInvite => "register_invite",
            AdminAction::ListInvites => "list_invites",
            AdminAction::RevokeInvite => "revoke_invite",
            AdminAction::ListMembers => "list_members",
            AdminAction::RemoveMember => "remove_member",
            AdminAction::DashboardLogin => "dashboard_login",
        }
    }
}

/// `claudemesh-admin-v1|{action}|{meshId}|{signerPubkey}|{timestamp}|{args}` — signed by
/// the signer key (the owner key, or an admin/member key where the action allows it).
/// `args` is the action's arguments joined with `|` (see PROTOCOL.md); for `create_mesh`
/// the mesh id is empty.
pub fn admin(
    action: AdminAction,
    mesh_id: &str,
    signer_pubkey: &str,
    timestamp_ms: i64,
    args: &[&str],
) -> String {
    format!(
        "claudemesh-admin-v1|{}|{mesh_id}|{signer_pubkey}|{timestamp_ms}|{}",
        action.as_str(),
        args.join("|")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_have_the_documented_shape() {
        assert_eq!(hello("m", "u", "k", 5), "m|u|k|5");
        assert_eq!(
            session_attestation("p", "s", 7),
            "claudemesh-session-attest|p|s|7"
        );
        assert_eq!(
            session_hello("m", "p", "s", 9),
            "claudemesh-session-hello|m|p|s|9"
        );
        assert_eq!(
            admin(AdminAction::RemoveMember, "m", "k", 1, &["id", "revoke"]),
            "claudemesh-admin-v1|remove_member|m|k|1|id|revoke"
        );
        assert_eq!(
            admin(AdminAction::ListInvites, "m", "k", 1, &[]),
            "claudemesh-admin-v1|list_invites|m|k|1|"
        );
    }
}
