//! Cryptography for claudemesh: ed25519 identities and signatures, and
//! libsodium-compatible `crypto_box` / `crypto_secretbox` encryption.
//!
//! Every peer is identified by an ed25519 [`PublicKey`]; signatures are over the
//! UTF-8 bytes of canonical strings; direct messages are `crypto_box`es between
//! the peers' keys converted to X25519, and group messages are `crypto_secretbox`es
//! under a shared key. All encodings are byte-compatible with libsodium (checked
//! against vectors in `testdata/libsodium-v1.json`).
//!
//! This crate is pure computation: no I/O, no async, no logging. It must never
//! print, log or put secret material into error values, and it must not panic on
//! untrusted input (hex strings, ciphertexts, signatures). The broker only needs
//! [`PublicKey`], [`Signature`] and [`sha256_hex`]; it must never hold a
//! [`SecretKey`] of a peer or a [`SharedBox`].

pub mod boxes;
pub mod error;
mod hexutil;
pub mod keys;

pub use boxes::{
    KEY_LEN, MAC_LEN, NONCE_LEN, SharedBox, box_open, box_seal, random_key, random_nonce,
    secretbox_open, secretbox_seal,
};
pub use error::CryptoError;
pub use keys::{PublicKey, SecretKey, Signature};

use rand_core::RngCore;
use sha2::{Digest, Sha256};

/// Lowercase hex of the SHA-256 of `data` (64 characters; used for ids).
pub fn sha256_hex(data: &[u8]) -> String {
    hexutil::encode_lower(&Sha256::digest(data))
}

/// `N` bytes from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    rand_core::OsRng.fill_bytes(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_hex_known_values() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn random_bytes_has_requested_length_and_varies() {
        let a: [u8; 32] = random_bytes();
        let b: [u8; 32] = random_bytes();
        assert_ne!(a, b);
        assert_eq!(random_bytes::<0>(), []);
        assert_eq!(random_bytes::<7>().len(), 7);
    }
}
