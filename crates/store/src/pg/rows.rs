//! Row mapping for the PostgreSQL backend: driver errors into [`StoreError`], text
//! columns into the protocol's enums, rows into row types, and the redaction that keeps a
//! password in a database URL out of every error message. No SQL is decided here.

use postgres::Row;

use crate::{
    InviteRow, MemberRow, MeshRow, MessageRow, OperatorRow, PeerRow, PresenceRow, Result,
    StoreError,
};

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        StoreError::db(e)
    }
}

/// A text column holding one of a closed set of values (a role, a kind, a priority).
pub(super) fn text<T>(row: &Row, idx: usize) -> Result<T>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let s: String = row.try_get(idx)?;
    s.parse().map_err(StoreError::db)
}

/// The same, for a nullable column.
pub(super) fn opt_text<T>(row: &Row, idx: usize) -> Result<Option<T>>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    match row.try_get::<_, Option<String>>(idx)? {
        None => Ok(None),
        Some(s) => s.parse().map(Some).map_err(StoreError::db),
    }
}

/// A use count stored as BIGINT, read back as the row type's `u32`.
fn count(row: &Row, idx: usize, what: &str) -> Result<u32> {
    u32::try_from(row.try_get::<_, i64>(idx)?)
        .map_err(|_| StoreError::Corrupt { what: what.into() })
}

/// A message from `row`, its columns from `base` on in `message_cols!()` order.
pub(super) fn message_from_row(row: &Row, base: usize) -> Result<MessageRow> {
    Ok(MessageRow {
        message_id: row.try_get(base)?,
        mesh_id: row.try_get(base + 1)?,
        sender_pubkey: row.try_get(base + 2)?,
        sender_member_pubkey: row.try_get(base + 3)?,
        sender_name: row.try_get(base + 4)?,
        target_spec: row.try_get(base + 5)?,
        priority: text(row, base + 6)?,
        nonce: row.try_get(base + 7)?,
        ciphertext: row.try_get(base + 8)?,
        client_message_id: row.try_get(base + 9)?,
        created_at: row.try_get(base + 10)?,
        expires_at: row.try_get(base + 11)?,
    })
}

/// An invite from `row`, its columns in `invite_cols!()` order.
pub(super) fn operator_from_row(row: &Row) -> Result<OperatorRow> {
    Ok(OperatorRow {
        name: row.try_get(0)?,
        password_hash: row.try_get(1)?,
        setup_hash: row.try_get(2)?,
        setup_expires_at: row.try_get(3)?,
        created_at: row.try_get(4)?,
    })
}

pub(super) fn invite_from_row(row: &Row) -> Result<InviteRow> {
    Ok(InviteRow {
        id: row.try_get(0)?,
        mesh_id: row.try_get(1)?,
        role: text(row, 2)?,
        max_uses: count(row, 3, "invites.max_uses")?,
        uses: count(row, 4, "invites.uses")?,
        expires_at: row.try_get(5)?,
        revoked: row.try_get(6)?,
        created_by: row.try_get(7)?,
        created_at: row.try_get(8)?,
    })
}

/// `url` with any password replaced by `***`, in either connection-string form: the URL
/// (`postgres://user:secret@host/db`, `?password=secret`) and key/value
/// (`host=… password=secret`). Also scrubs `password` (the parsed value) wherever it
/// still appears, so an error message built from this text never carries it.
/// A database URL fit to print: any password in it (userinfo or `password=`) masked.
pub fn redact_url(url: &str) -> String {
    redact(url, None)
}

pub(super) fn redact(url: &str, password: Option<&str>) -> String {
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    // URL userinfo: scheme://user:password@host
    if let Some((scheme, after)) = url.split_once("://") {
        let end = after.find(['/', '?']).unwrap_or(after.len());
        let (authority, tail) = after.split_at(end);
        out.push_str(scheme);
        out.push_str("://");
        match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
                out.push_str(user);
                if userinfo.contains(':') {
                    out.push_str(":***");
                }
                out.push('@');
                out.push_str(host);
            }
            None => out.push_str(authority),
        }
        rest = tail;
    }
    // `password=value` as a query parameter or a key/value pair.
    while let Some(at) = rest.find("password=") {
        let (before, from) = rest.split_at(at + "password=".len());
        out.push_str(before);
        out.push_str("***");
        let end = from.find(['&', ' ']).unwrap_or(from.len());
        rest = from.split_at(end).1;
    }
    out.push_str(rest);
    match password {
        Some(p) if !p.is_empty() => out.replace(p, "***"),
        _ => out,
    }
}

/// A mesh from `row`, in `mesh_cols!()` order.
pub(super) fn mesh_from_row(r: &Row) -> Result<MeshRow> {
    Ok(MeshRow {
        id: r.try_get(0)?,
        slug: r.try_get(1)?,
        name: r.try_get(2)?,
        owner_pubkey: r.try_get(3)?,
        created_at: r.try_get(4)?,
    })
}

/// A member from `row`, in `member_cols!()` order.
pub(super) fn member_from_row(r: &Row) -> Result<MemberRow> {
    Ok(MemberRow {
        id: r.try_get(0)?,
        mesh_id: r.try_get(1)?,
        pubkey: r.try_get(2)?,
        display_name: r.try_get(3)?,
        role: text(r, 4)?,
        joined_at: r.try_get(5)?,
        removed: opt_text(r, 6)?,
    })
}

/// A known identity from `row`, in `peer_cols!()` order.
pub(super) fn peer_from_row(r: &Row) -> Result<PeerRow> {
    Ok(PeerRow {
        pubkey: r.try_get(0)?,
        mesh_id: r.try_get(1)?,
        member_id: r.try_get(2)?,
        kind: text(r, 3)?,
        display_name: r.try_get(4)?,
        groups_json: r.try_get(5)?,
        last_seen: r.try_get(6)?,
        e2e_multicast: r.try_get(7)?,
        retired_at: r.try_get(8)?,
        online: r.try_get(9)?,
    })
}

/// A presence from `row`: mesh_id, pubkey, node_id, session_id, live, data, updated_at.
pub(super) fn presence_from_row(r: &Row) -> Result<PresenceRow> {
    Ok(PresenceRow {
        mesh_id: r.try_get(0)?,
        pubkey: r.try_get(1)?,
        node_id: r.try_get(2)?,
        session_id: r.try_get(3)?,
        live: r.try_get(4)?,
        data: r.try_get(5)?,
        updated_at: r.try_get(6)?,
    })
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_never_survive_redaction() {
        for (url, want) in [
            (
                "postgres://u:hunter2@db:5432/x",
                "postgres://u:***@db:5432/x",
            ),
            ("postgres://u@db/x", "postgres://u@db/x"),
            (
                "postgres://db/x?password=hunter2&a=b",
                "postgres://db/x?password=***&a=b",
            ),
            (
                "host=db password=hunter2 user=u",
                "host=db password=*** user=u",
            ),
            ("postgres://u:p@ss:w@rd@db/x", "postgres://u:***@db/x"),
        ] {
            assert_eq!(redact(url, None), want, "{url}");
        }
        assert_eq!(redact("odd hunter2 form", Some("hunter2")), "odd *** form");
    }
}
