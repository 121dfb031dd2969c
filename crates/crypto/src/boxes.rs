//! libsodium-compatible public-key (`crypto_box`) and secret-key
//! (`crypto_secretbox`) authenticated encryption.
//!
//! Ciphertexts use exactly the `crypto_box_easy` / `crypto_secretbox_easy`
//! layout: the 16-byte Poly1305 MAC first, then the XSalsa20-encrypted bytes, so
//! they interoperate byte-for-byte with libsodium peers. Public-key boxes take
//! the ed25519 identity keys and convert them to X25519 the way libsodium's
//! `crypto_sign_ed25519_*_to_curve25519` does.
//!
//! This module never chooses nonces implicitly: callers pass one (use
//! [`random_nonce`]), and must never reuse a nonce with the same key. It must not
//! log or print keys or plaintexts; opening returns the single opaque
//! [`CryptoError::Decrypt`] for every failure, including inputs shorter than the
//! MAC, and never panics on malformed input.

use std::fmt;

use crypto_box::SalsaBox;
use crypto_box::aead::generic_array::GenericArray;
use crypto_box::aead::{AeadInPlace, KeyInit};
use crypto_secretbox::XSalsa20Poly1305;
use zeroize::Zeroizing;

use crate::{CryptoError, PublicKey, SecretKey, random_bytes};

/// Length of a box / secretbox nonce in bytes.
pub const NONCE_LEN: usize = 24;
/// Length of a secretbox key in bytes.
pub const KEY_LEN: usize = 32;
/// Length of the Poly1305 MAC that prefixes every ciphertext.
pub const MAC_LEN: usize = 16;

/// `MAC ‖ encrypt(plaintext)` with any NaCl-style AEAD (no associated data).
fn seal_with<A>(aead: &A, nonce: &[u8; NONCE_LEN], plaintext: &[u8]) -> Vec<u8>
where
    A: AeadInPlace<NonceSize = crypto_box::aead::consts::U24>,
{
    let mut out = vec![0u8; MAC_LEN];
    out.extend_from_slice(plaintext);
    let nonce = GenericArray::from_slice(nonce);
    if let Some((mac, body)) = out.split_first_chunk_mut::<MAC_LEN>() {
        #[allow(clippy::expect_used)]
        // Invariant: XSalsa20Poly1305 (and crypto_box over it) only returns an
        // error from detached encryption when associated data is non-empty, and
        // we always pass an empty slice.
        let tag = aead
            .encrypt_in_place_detached(nonce, &[], body)
            .expect("NaCl box encryption without associated data cannot fail");
        mac.copy_from_slice(tag.as_slice());
    }
    out
}

/// Verify and decrypt `MAC ‖ ciphertext`.
fn open_with<A>(
    aead: &A,
    nonce: &[u8; NONCE_LEN],
    ciphertext: &[u8],
) -> Result<Vec<u8>, CryptoError>
where
    A: AeadInPlace<NonceSize = crypto_box::aead::consts::U24>,
{
    let (mac, body) = ciphertext
        .split_first_chunk::<MAC_LEN>()
        .ok_or(CryptoError::Decrypt)?;
    let nonce = GenericArray::from_slice(nonce);
    let tag = GenericArray::from_slice(mac);
    let mut out = body.to_vec();
    aead.decrypt_in_place_detached(nonce, &[], &mut out, tag)
        .map_err(|_| CryptoError::Decrypt)?;
    Ok(out)
}

/// The precomputed shared key between my secret key and a peer's public key
/// (libsodium `crypto_box_beforenm`). The same value results from either side:
/// `SharedBox::new(alice, bob_pk)` and `SharedBox::new(bob, alice_pk)` seal and
/// open each other's messages. The key is zeroized on drop. Not `Clone` (the
/// underlying cipher is not); share it behind an `Arc` if needed.
pub struct SharedBox(SalsaBox);

impl SharedBox {
    /// X25519 between `mine` and `theirs` (both converted from ed25519), then
    /// HSalsa20, exactly like `crypto_box_beforenm`.
    pub fn new(mine: &SecretKey, theirs: &PublicKey) -> Self {
        let my_x = crypto_box::SecretKey::from_bytes(*mine.x25519_secret());
        let their_x = crypto_box::PublicKey::from_bytes(theirs.to_x25519());
        Self(SalsaBox::new(&their_x, &my_x))
    }

    /// `crypto_box_easy_afternm`: returns `MAC ‖ ciphertext`
    /// (`plaintext.len() + MAC_LEN` bytes).
    pub fn seal(&self, nonce: &[u8; NONCE_LEN], plaintext: &[u8]) -> Vec<u8> {
        seal_with(&self.0, nonce, plaintext)
    }

    /// `crypto_box_open_easy_afternm`: verifies the MAC, then decrypts.
    pub fn open(&self, nonce: &[u8; NONCE_LEN], ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        open_with(&self.0, nonce, ciphertext)
    }
}

impl fmt::Debug for SharedBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedBox { .. }")
    }
}

/// `crypto_box_easy` from `sender` to `recipient`: returns `MAC ‖ ciphertext`.
pub fn box_seal(
    plaintext: &[u8],
    nonce: &[u8; NONCE_LEN],
    recipient: &PublicKey,
    sender: &SecretKey,
) -> Vec<u8> {
    SharedBox::new(sender, recipient).seal(nonce, plaintext)
}

/// `crypto_box_open_easy`: open a box that `sender` sealed for `recipient`.
pub fn box_open(
    ciphertext: &[u8],
    nonce: &[u8; NONCE_LEN],
    sender: &PublicKey,
    recipient: &SecretKey,
) -> Result<Vec<u8>, CryptoError> {
    SharedBox::new(recipient, sender).open(nonce, ciphertext)
}

/// `crypto_secretbox_easy` (XSalsa20Poly1305): returns `MAC ‖ ciphertext`.
pub fn secretbox_seal(key: &[u8; KEY_LEN], nonce: &[u8; NONCE_LEN], plaintext: &[u8]) -> Vec<u8> {
    let cipher = XSalsa20Poly1305::new(GenericArray::from_slice(key));
    seal_with(&cipher, nonce, plaintext)
}

/// `crypto_secretbox_open_easy`: verifies the MAC, then decrypts.
pub fn secretbox_open(
    key: &[u8; KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    ciphertext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let cipher = XSalsa20Poly1305::new(GenericArray::from_slice(key));
    open_with(&cipher, nonce, ciphertext)
}

/// A fresh random 24-byte nonce (random nonces of this size are safe to use
/// without a counter).
pub fn random_nonce() -> [u8; NONCE_LEN] {
    random_bytes()
}

/// A fresh random 32-byte secretbox key, zeroized on drop.
pub fn random_key() -> Zeroizing<[u8; KEY_LEN]> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, key.as_mut_slice());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_round_trip_both_directions() {
        let alice = SecretKey::generate();
        let bob = SecretKey::generate();
        let nonce = random_nonce();
        let ct = box_seal(b"hi bob", &nonce, &bob.public(), &alice);
        assert_eq!(ct.len(), 6 + MAC_LEN);
        assert_eq!(
            box_open(&ct, &nonce, &alice.public(), &bob).unwrap(),
            b"hi bob"
        );
        let bob_side = SharedBox::new(&bob, &alice.public());
        assert_eq!(bob_side.open(&nonce, &ct).unwrap(), b"hi bob");
        let reply = bob_side.seal(&nonce, b"hi alice");
        assert_eq!(
            box_open(&reply, &nonce, &bob.public(), &alice).unwrap(),
            b"hi alice"
        );
        assert_eq!(
            SharedBox::new(&alice, &bob.public()).seal(&nonce, b"hi bob"),
            ct
        );
    }

    #[test]
    fn box_rejects_wrong_key_nonce_and_tampering() {
        let alice = SecretKey::generate();
        let bob = SecretKey::generate();
        let eve = SecretKey::generate();
        let nonce = random_nonce();
        let ct = box_seal(b"secret", &nonce, &bob.public(), &alice);
        assert_eq!(
            box_open(&ct, &nonce, &alice.public(), &eve),
            Err(CryptoError::Decrypt)
        );
        assert_eq!(
            box_open(&ct, &nonce, &eve.public(), &bob),
            Err(CryptoError::Decrypt)
        );
        assert_eq!(
            box_open(&ct, &random_nonce(), &alice.public(), &bob),
            Err(CryptoError::Decrypt)
        );
        for i in 0..ct.len() {
            let mut bad = ct.clone();
            bad[i] ^= 0x01;
            assert_eq!(
                box_open(&bad, &nonce, &alice.public(), &bob),
                Err(CryptoError::Decrypt)
            );
        }
    }

    #[test]
    fn short_ciphertexts_fail_cleanly() {
        let alice = SecretKey::generate();
        let bob = SecretKey::generate();
        let shared = SharedBox::new(&bob, &alice.public());
        let key = random_key();
        let nonce = random_nonce();
        for len in 0..=MAC_LEN {
            let ct = vec![0u8; len];
            assert_eq!(shared.open(&nonce, &ct), Err(CryptoError::Decrypt));
            assert_eq!(secretbox_open(&key, &nonce, &ct), Err(CryptoError::Decrypt));
        }
    }

    #[test]
    fn empty_plaintext_is_just_a_mac() {
        let key = random_key();
        let nonce = random_nonce();
        let ct = secretbox_seal(&key, &nonce, b"");
        assert_eq!(ct.len(), MAC_LEN);
        assert_eq!(secretbox_open(&key, &nonce, &ct).unwrap(), b"");
    }

    #[test]
    fn secretbox_round_trip_and_rejections() {
        let key = random_key();
        let nonce = random_nonce();
        let ct = secretbox_seal(&key, &nonce, b"group hello");
        assert_eq!(secretbox_open(&key, &nonce, &ct).unwrap(), b"group hello");
        let other = random_key();
        assert_eq!(
            secretbox_open(&other, &nonce, &ct),
            Err(CryptoError::Decrypt)
        );
        assert_eq!(
            secretbox_open(&key, &random_nonce(), &ct),
            Err(CryptoError::Decrypt)
        );
        let mut truncated = ct.clone();
        truncated.pop();
        assert_eq!(
            secretbox_open(&key, &nonce, &truncated),
            Err(CryptoError::Decrypt)
        );
        let mut extended = ct;
        extended.push(0);
        assert_eq!(
            secretbox_open(&key, &nonce, &extended),
            Err(CryptoError::Decrypt)
        );
    }

    #[test]
    fn randomness_differs() {
        assert_ne!(random_nonce(), random_nonce());
        assert_ne!(*random_key(), *random_key());
    }

    #[test]
    fn shared_box_debug_hides_key() {
        let s = SharedBox::new(&SecretKey::generate(), &SecretKey::generate().public());
        assert_eq!(format!("{s:?}"), "SharedBox { .. }");
    }
}
