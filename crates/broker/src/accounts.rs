//! Operator accounts of the dashboard: names, Argon2id password hashes (PHC strings,
//! the crate's default parameters: 19 MiB, 2 passes) and single-use setup links. An
//! account is created without a password; `claudemesh-broker account add` prints a link
//! whose token only the person it is given to has (the database keeps its SHA-256), and
//! the password is chosen on that page. Hashing is slow on purpose, so callers on an
//! async runtime run it on a blocking thread.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use claudemesh_store::{OperatorRow, Store, StoreError};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// How long a setup link works.
pub const SETUP_TTL_MS: i64 = 24 * 3600 * 1_000;
/// The shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// The longest (hashing cost grows with it).
pub const MAX_PASSWORD_BYTES: usize = 1_024;

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("an account name is 1-64 characters of a-z, 0-9, '.', '_' and '-'")]
    BadName,
    #[error("there is already an account named {0} (add --reset to give it a new setup link)")]
    Exists(String),
    #[error("there is no account named {0}")]
    NotFound(String),
    #[error(
        "a password needs at least {MIN_PASSWORD_CHARS} characters (and at most {MAX_PASSWORD_BYTES} bytes)"
    )]
    BadPassword,
    #[error("hashing the password failed: {0}")]
    Hash(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

pub fn valid_password(password: &str) -> bool {
    password.chars().count() >= MIN_PASSWORD_CHARS && password.len() <= MAX_PASSWORD_BYTES
}

/// The Argon2id PHC string of a password, with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, AccountError> {
    if !valid_password(password) {
        return Err(AccountError::BadPassword);
    }
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| AccountError::Hash(e.to_string()))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AccountError::Hash(e.to_string()))
}

/// Whether `password` matches the stored PHC string (false for a malformed one).
pub fn verify_password(password: &str, phc: &str) -> bool {
    if password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    PasswordHash::new(phc).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// What the database keeps of a setup token.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Create (or, with `reset`, replace) the account `name` without a password; the setup
/// token to put in its link.
pub fn add(
    store: &mut dyn Store,
    name: &str,
    reset: bool,
    now: i64,
) -> Result<String, AccountError> {
    if !valid_name(name) {
        return Err(AccountError::BadName);
    }
    if !reset && store.operator(name)?.is_some() {
        return Err(AccountError::Exists(name.to_owned()));
    }
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = hex::encode(bytes);
    store.put_operator(&OperatorRow {
        name: name.to_owned(),
        password_hash: None,
        setup_hash: Some(token_hash(&token)),
        setup_expires_at: now + SETUP_TTL_MS,
        created_at: now,
    })?;
    store.commit()?;
    Ok(token)
}

/// Remove the account `name` (its sessions end at their next read).
pub fn remove(store: &mut dyn Store, name: &str) -> Result<(), AccountError> {
    if !store.remove_operator(name)? {
        return Err(AccountError::NotFound(name.to_owned()));
    }
    store.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_verifies_only_against_its_own_hash() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("correct horse battery!", &h));
        assert!(!verify_password("x", "not a phc string"));
        assert!(matches!(
            hash_password("short"),
            Err(AccountError::BadPassword)
        ));
        assert!(valid_name("ops-1.root_a") && !valid_name("Root") && !valid_name(""));
    }
}
