//! Dashboard sign-in state, in this node's memory: single-use codes (60 s) that a
//! signed `dashboard_login` request obtains, and the browser sessions (12 h) they turn
//! into (or that an operator's password opens), each with its own CSRF token. Both maps
//! are bounded. A session names a member key or an operator account; the engine checks
//! it on every read, and sessions of a removed member are ended here as soon as the
//! engine reports the removal.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngCore;

/// How long a sign-in code may wait for its browser.
pub const CODE_TTL: Duration = Duration::from_secs(60);
/// How long a browser session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most codes or sessions held at once (expired ones are dropped first).
const MAX_ENTRIES: usize = 10_000;

/// A member signed in with its key, to one mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub mesh_id: String,
    /// The member key that signed the login request.
    pub pubkey: String,
    /// Empty for an owner key that is not a member key.
    pub member_id: String,
}

/// Who a session (or code) signs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Viewer {
    Member(Member),
    /// An operator account (every mesh's metadata, the broker's figures; no actions).
    Operator {
        name: String,
        /// The account's `created_at`: a removed and re-added, or reset, account is
        /// another account, and this session does not open it.
        since: i64,
    },
}

/// A signed-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    pub viewer: Viewer,
    /// The token every state-changing request must carry.
    pub csrf: String,
    expires: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    codes: HashMap<String, (Viewer, Instant)>,
    sessions: HashMap<String, Session>,
}

/// Codes and sessions (see the module doc).
#[derive(Debug, Default)]
pub struct Sessions {
    inner: Mutex<Inner>,
}

/// The maps are full of live entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many dashboard sign-ins at once; try again in a minute")]
pub struct Full;

/// 32 random bytes, hex.
fn token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn make_room<V>(map: &mut HashMap<String, V>, expiry: impl Fn(&V) -> Instant) -> Result<(), Full> {
    if map.len() >= MAX_ENTRIES {
        let now = Instant::now();
        map.retain(|_, v| expiry(v) > now);
    }
    if map.len() >= MAX_ENTRIES {
        return Err(Full);
    }
    Ok(())
}

fn insert_session(inner: &mut Inner, viewer: Viewer) -> (String, Session) {
    let session = Session {
        viewer,
        csrf: token(),
        expires: Instant::now() + SESSION_TTL,
    };
    let id = token();
    inner.sessions.insert(id.clone(), session.clone());
    (id, session)
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new single-use code for `viewer`.
    pub fn issue_code(&self, viewer: Member) -> Result<String, Full> {
        let mut inner = self.lock();
        make_room(&mut inner.codes, |(_, at)| *at)?;
        let code = token();
        inner.codes.insert(
            code.clone(),
            (Viewer::Member(viewer), Instant::now() + CODE_TTL),
        );
        Ok(code)
    }

    /// A session for an operator whose password was checked; its token.
    pub fn open_operator(&self, name: &str, since: i64) -> Result<(String, Session), Full> {
        let mut inner = self.lock();
        make_room(&mut inner.sessions, |s| s.expires)?;
        Ok(insert_session(
            &mut inner,
            Viewer::Operator {
                name: name.to_owned(),
                since,
            },
        ))
    }

    /// Spend a code: the new session's token and the session, if the code was live.
    pub fn redeem(&self, code: &str) -> Result<Option<(String, Session)>, Full> {
        let mut inner = self.lock();
        let Some((viewer, expires)) = inner.codes.remove(code) else {
            return Ok(None);
        };
        if expires <= Instant::now() {
            return Ok(None);
        }
        make_room(&mut inner.sessions, |s| s.expires)?;
        Ok(Some(insert_session(&mut inner, viewer)))
    }

    /// The live session with this token.
    pub fn get(&self, id: &str) -> Option<Session> {
        let mut inner = self.lock();
        match inner.sessions.get(id) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                inner.sessions.remove(id);
                None
            }
            None => None,
        }
    }

    /// Sign out.
    pub fn end(&self, id: &str) {
        self.lock().sessions.remove(id);
    }

    /// End every session and code of a removed member.
    pub fn end_member(&self, mesh_id: &str, member_id: &str) {
        let gone = |v: &Viewer| matches!(v, Viewer::Member(m) if m.mesh_id == mesh_id && m.member_id == member_id);
        let mut inner = self.lock();
        inner.sessions.retain(|_, s| !gone(&s.viewer));
        inner.codes.retain(|_, (v, _)| !gone(v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn viewer(member: &str) -> Member {
        Member {
            mesh_id: "m".into(),
            pubkey: "k".into(),
            member_id: member.into(),
        }
    }

    #[test]
    fn a_code_is_spent_once_and_a_removed_member_is_signed_out() {
        let s = Sessions::default();
        let code = s.issue_code(viewer("a")).unwrap();
        let (id, session) = s.redeem(&code).unwrap().unwrap();
        assert_eq!(session.viewer, Viewer::Member(viewer("a")));
        assert!(s.redeem(&code).unwrap().is_none(), "second use");
        assert!(s.get(&id).is_some());
        s.end_member("m", "b");
        assert!(s.get(&id).is_some(), "another member's removal");
        s.end_member("m", "a");
        assert!(s.get(&id).is_none());
        assert!(s.redeem("nope").unwrap().is_none());
    }
}
