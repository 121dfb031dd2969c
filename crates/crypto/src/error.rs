//! The single error type of `claudemesh-crypto`.
//!
//! Every fallible operation in this crate returns [`CryptoError`]. The variants
//! are deliberately coarse: they say *what kind* of input was rejected, never
//! *which bytes* were wrong. Error values and their messages must never carry
//! secret material (seeds, secret keys, shared keys, plaintexts), and decryption
//! failures are a single opaque variant so callers cannot build an oracle out of
//! them.

/// Why a key, signature, hex string or ciphertext was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum CryptoError {
    /// The string is not lowercase hexadecimal (uppercase digits, non-hex
    /// characters and multi-byte UTF-8 all land here).
    #[error("invalid hex: expected lowercase hexadecimal digits")]
    BadHex,

    /// The input has the wrong length. For hex input the lengths count bytes of
    /// the string (two per decoded byte); for binary input they count bytes.
    #[error("invalid length: expected {expected}, got {got}")]
    BadLength {
        /// The required length.
        expected: usize,
        /// The length that was supplied.
        got: usize,
    },

    /// The 32 bytes do not decompress to a point on the ed25519 curve, so they
    /// cannot be a public key.
    #[error("not a valid ed25519 public key")]
    BadPoint,

    /// The signature does not verify (under `verify_strict`) for this key and
    /// message.
    #[error("signature verification failed")]
    BadSignature,

    /// A libsodium 64-byte secret key (`seed ‖ pk`) embeds a public key that is
    /// not the one derived from its seed.
    #[error("secret key does not match its embedded public key")]
    KeyMismatch,

    /// Authenticated decryption failed: wrong key, wrong nonce, tampered or
    /// truncated ciphertext (including one shorter than the 16-byte MAC).
    #[error("decryption failed")]
    Decrypt,
}
