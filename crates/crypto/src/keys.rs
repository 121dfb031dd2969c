//! Ed25519 identity keys and signatures, with libsodium-compatible encodings.
//!
//! [`PublicKey`] and [`Signature`] are plain, copyable values that parse from and
//! print as lowercase hex. [`SecretKey`] wraps an ed25519 signing key, signs the
//! UTF-8 bytes of canonical strings, and converts to the X25519 secret that
//! `crypto_box` needs exactly as libsodium's `crypto_sign_ed25519_sk_to_curve25519`
//! does. Secret material is zeroized on drop and never printed: `SecretKey` has no
//! `Display`, its `Debug` shows only the public key, and every accessor that
//! exposes secret bytes returns them inside [`Zeroizing`]. This module does no
//! I/O and must not log.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::OsRng;
use zeroize::Zeroizing;

use crate::CryptoError;
use crate::hexutil::{decode_lower, decode_lower_into, encode_lower, encode_lower_into};

/// Length of an ed25519 public key in bytes.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of an ed25519 signature in bytes.
pub const SIGNATURE_LEN: usize = 64;
/// Length of an ed25519 seed (the 32-byte secret) in bytes.
pub const SEED_LEN: usize = 32;

/// An ed25519 public key (the peer / session / mesh-owner identity).
///
/// Invariant: the bytes always decompress to an ed25519 point; the only
/// constructors ([`PublicKey::from_bytes`], [`PublicKey::from_hex`],
/// [`SecretKey::public`]) check this.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; PUBLIC_KEY_LEN]);

impl PublicKey {
    /// Accept 32 bytes if they decompress to an ed25519 point.
    ///
    /// Small-order points decompress and are therefore accepted here, but
    /// [`PublicKey::verify`] (which uses `verify_strict`) rejects every signature
    /// under them.
    ///
    /// Small-order ("weak") points are refused too: no signature verifies under them, and a
    /// crypto_box to one has a predictable shared key (libsodium refuses them as well).
    pub fn from_bytes(bytes: &[u8; PUBLIC_KEY_LEN]) -> Result<Self, CryptoError> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| CryptoError::BadPoint)?;
        if key.is_weak() {
            return Err(CryptoError::BadPoint);
        }
        Ok(Self(*bytes))
    }

    /// The 32 raw bytes.
    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.0
    }

    /// Parse exactly 64 lowercase hex characters. Never panics.
    pub fn from_hex(s: &str) -> Result<Self, CryptoError> {
        Self::from_bytes(&decode_lower::<PUBLIC_KEY_LEN>(s)?)
    }

    /// Lowercase hex (64 characters).
    pub fn to_hex(&self) -> String {
        encode_lower(&self.0)
    }

    /// The dalek verifying key for these bytes.
    fn verifying_key(&self) -> Result<VerifyingKey, CryptoError> {
        VerifyingKey::from_bytes(&self.0).map_err(|_| CryptoError::BadPoint)
    }

    /// Verify `sig` over `msg` with ed25519 `verify_strict` (rejects small-order
    /// keys and non-canonical / malleable signatures).
    pub fn verify(&self, msg: &[u8], sig: &Signature) -> Result<(), CryptoError> {
        let vk = self.verifying_key()?;
        let sig = ed25519_dalek::Signature::from_bytes(&sig.0);
        vk.verify_strict(msg, &sig)
            .map_err(|_| CryptoError::BadSignature)
    }

    /// Verify `sig` over the UTF-8 bytes of the canonical string `s`.
    pub fn verify_str(&self, s: &str, sig: &Signature) -> Result<(), CryptoError> {
        self.verify(s.as_bytes(), sig)
    }

    /// The X25519 (Montgomery) public key for this ed25519 key, identical to
    /// libsodium's `crypto_sign_ed25519_pk_to_curve25519`.
    pub fn to_x25519(&self) -> [u8; 32] {
        #[allow(clippy::expect_used)]
        // Invariant: every constructor of `PublicKey` checked that these exact
        // bytes decompress, and decompression is deterministic.
        let vk = self
            .verifying_key()
            .expect("PublicKey bytes were validated at construction");
        vk.to_montgomery().to_bytes()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.to_hex();
        write!(f, "PublicKey({}…)", hex.get(..8).unwrap_or(&hex))
    }
}

impl FromStr for PublicKey {
    type Err = CryptoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_hex(s)
    }
}

/// A detached ed25519 signature (64 bytes, `R ‖ S`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature([u8; SIGNATURE_LEN]);

impl Signature {
    /// Wrap 64 raw bytes. No validation happens until [`PublicKey::verify`].
    pub fn from_bytes(bytes: [u8; SIGNATURE_LEN]) -> Self {
        Self(bytes)
    }

    /// The 64 raw bytes.
    pub fn to_bytes(&self) -> [u8; SIGNATURE_LEN] {
        self.0
    }

    /// Parse exactly 128 lowercase hex characters. Never panics.
    pub fn from_hex(s: &str) -> Result<Self, CryptoError> {
        decode_lower::<SIGNATURE_LEN>(s).map(Self)
    }

    /// Lowercase hex (128 characters).
    pub fn to_hex(&self) -> String {
        encode_lower(&self.0)
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.to_hex();
        write!(f, "Signature({}…)", hex.get(..8).unwrap_or(&hex))
    }
}

impl FromStr for Signature {
    type Err = CryptoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_hex(s)
    }
}

/// An ed25519 secret key (seed plus cached public key). Zeroized on drop.
#[derive(Clone)]
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        Self(SigningKey::generate(&mut OsRng))
    }

    /// The key for a 32-byte seed (libsodium `crypto_sign_seed_keypair`).
    pub fn from_seed(seed: &[u8; SEED_LEN]) -> Self {
        Self(SigningKey::from_bytes(seed))
    }

    /// Parse libsodium's 64-byte secret key `seed ‖ pk` as 128 lowercase hex
    /// characters. Fails with [`CryptoError::KeyMismatch`] if the embedded public
    /// key is not the one derived from the seed.
    pub fn from_sk64_hex(s: &str) -> Result<Self, CryptoError> {
        let mut sk64 = Zeroizing::new([0u8; 64]);
        decode_lower_into(s, sk64.as_mut_slice())?;
        let (seed, embedded_pk) =
            sk64.split_first_chunk::<SEED_LEN>()
                .ok_or(CryptoError::BadLength {
                    expected: 64,
                    got: 0,
                })?;
        let key = Self::from_seed(seed);
        if key.public().as_bytes().as_slice() != embedded_pk {
            return Err(CryptoError::KeyMismatch);
        }
        Ok(key)
    }

    /// libsodium's 64-byte secret key `seed ‖ pk` as 128 lowercase hex characters.
    pub fn to_sk64_hex(&self) -> Zeroizing<String> {
        let bytes = Zeroizing::new(self.0.to_keypair_bytes());
        let mut out = Zeroizing::new(String::with_capacity(bytes.len() * 2));
        encode_lower_into(bytes.as_slice(), &mut out);
        out
    }

    /// The 32-byte seed.
    pub fn seed(&self) -> Zeroizing<[u8; SEED_LEN]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    /// Sign `msg` (deterministic ed25519, identical to libsodium
    /// `crypto_sign_detached`).
    pub fn sign(&self, msg: &[u8]) -> Signature {
        use ed25519_dalek::Signer;
        Signature(self.0.sign(msg).to_bytes())
    }

    /// Sign the UTF-8 bytes of the canonical string `s`.
    pub fn sign_str(&self, s: &str) -> Signature {
        self.sign(s.as_bytes())
    }

    /// The X25519 secret scalar for this key, identical to libsodium's
    /// `crypto_sign_ed25519_sk_to_curve25519`: the first 32 bytes of
    /// SHA-512(seed), clamped.
    pub fn x25519_secret(&self) -> Zeroizing<[u8; 32]> {
        let mut k = Zeroizing::new(self.0.to_scalar_bytes());
        let bytes: &mut [u8; 32] = &mut k;
        bytes[0] &= 248;
        bytes[31] &= 127;
        bytes[31] |= 64;
        k
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("public", &self.public().to_hex())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_sign_verify_round_trip() {
        let sk = SecretKey::generate();
        let pk = sk.public();
        let sig = sk.sign_str("claudemesh|hello");
        assert_eq!(pk.verify_str("claudemesh|hello", &sig), Ok(()));
        assert_eq!(pk.verify(b"claudemesh|hello", &sig), Ok(()));
        assert_eq!(
            pk.verify_str("claudemesh|hellO", &sig),
            Err(CryptoError::BadSignature)
        );
        let other = SecretKey::generate().public();
        assert_eq!(
            other.verify_str("claudemesh|hello", &sig),
            Err(CryptoError::BadSignature)
        );
        let mut bytes = sig.to_bytes();
        bytes[10] ^= 1;
        assert_eq!(
            pk.verify_str("claudemesh|hello", &Signature::from_bytes(bytes)),
            Err(CryptoError::BadSignature)
        );
    }

    #[test]
    fn seed_and_sk64_round_trip() {
        let sk = SecretKey::generate();
        let again = SecretKey::from_seed(&sk.seed());
        assert_eq!(again.public(), sk.public());
        let sk64 = sk.to_sk64_hex();
        assert_eq!(sk64.len(), 128);
        let parsed = SecretKey::from_sk64_hex(&sk64).unwrap();
        assert_eq!(*parsed.seed(), *sk.seed());
        assert_eq!(parsed.public(), sk.public());
        assert_eq!(*parsed.x25519_secret(), *sk.x25519_secret());
    }

    #[test]
    fn sk64_with_foreign_public_key_is_rejected() {
        let a = SecretKey::generate();
        let b = SecretKey::generate();
        let mut mixed = a.to_sk64_hex().get(..64).unwrap().to_owned();
        mixed.push_str(&b.public().to_hex());
        assert_eq!(
            SecretKey::from_sk64_hex(&mixed).unwrap_err(),
            CryptoError::KeyMismatch
        );
    }

    #[test]
    fn public_hex_round_trip() {
        let pk = SecretKey::generate().public();
        let hex = pk.to_hex();
        assert_eq!(hex.len(), 64);
        assert_eq!(PublicKey::from_hex(&hex), Ok(pk));
        assert_eq!(hex.parse::<PublicKey>(), Ok(pk));
        assert_eq!(pk.to_string(), hex);
        assert_eq!(PublicKey::from_bytes(pk.as_bytes()), Ok(pk));
        let dbg = format!("{pk:?}");
        assert!(dbg.starts_with("PublicKey(") && dbg.contains(hex.get(..8).unwrap()));
    }

    #[test]
    fn signature_hex_round_trip() {
        let sig = SecretKey::generate().sign(b"x");
        let hex = sig.to_hex();
        assert_eq!(hex.len(), 128);
        assert_eq!(Signature::from_hex(&hex), Ok(sig));
        assert_eq!(hex.parse::<Signature>(), Ok(sig));
        assert_eq!(sig.to_string(), hex);
        assert_eq!(Signature::from_bytes(sig.to_bytes()), sig);
        assert!(format!("{sig:?}").starts_with("Signature("));
    }

    /// Inputs every strict hex parser must reject without panicking.
    fn bad_hex_inputs(n: usize) -> Vec<String> {
        let good = "ab".repeat(n / 2);
        vec![
            String::new(),
            "a".repeat(n - 1),
            "a".repeat(n + 1),
            "A".repeat(n),
            format!("{}G", "a".repeat(n - 1)),
            format!("{} ", "a".repeat(n - 1)),
            format!("0x{}", "a".repeat(n - 2)),
            // multi-byte UTF-8 with the right byte length and the wrong one
            format!("é{}", "a".repeat(n - 2)),
            format!("{}é", "a".repeat(n - 1)),
            "é".repeat(n / 2),
            "✓".repeat(n),
            format!("{good}\n"),
            "\u{0}".repeat(n),
        ]
    }

    #[test]
    fn public_key_hex_rejects_garbage() {
        for s in bad_hex_inputs(64) {
            assert!(PublicKey::from_hex(&s).is_err(), "{s:?}");
            assert!(s.parse::<PublicKey>().is_err(), "{s:?}");
        }
        let pk = SecretKey::generate().public().to_hex();
        assert_eq!(
            PublicKey::from_hex(pk.get(..63).unwrap()),
            Err(CryptoError::BadLength {
                expected: 64,
                got: 63
            })
        );
        assert_eq!(
            PublicKey::from_hex(&format!("{pk}0")),
            Err(CryptoError::BadLength {
                expected: 64,
                got: 65
            })
        );
        assert_eq!(
            PublicKey::from_hex(&pk.to_uppercase()),
            Err(CryptoError::BadHex)
        );
    }

    #[test]
    fn signature_and_sk64_hex_reject_garbage() {
        for s in bad_hex_inputs(128) {
            assert!(Signature::from_hex(&s).is_err(), "{s:?}");
            assert!(SecretKey::from_sk64_hex(&s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn public_key_rejects_non_points() {
        // y = 2 is not the y-coordinate of any ed25519 point.
        let mut not_a_point = [0u8; 32];
        not_a_point[0] = 2;
        assert_eq!(
            PublicKey::from_bytes(&not_a_point),
            Err(CryptoError::BadPoint)
        );
        assert_eq!(
            PublicKey::from_hex(&encode_lower(&not_a_point)),
            Err(CryptoError::BadPoint)
        );
    }

    #[test]
    fn debug_never_prints_secret_material() {
        let sk = SecretKey::generate();
        let dbg = format!("{sk:?}");
        let alt = format!("{sk:#?}");
        let seed_hex = encode_lower(sk.seed().as_slice());
        let x_hex = encode_lower(sk.x25519_secret().as_slice());
        for d in [&dbg, &alt] {
            assert!(!d.contains(&seed_hex));
            assert!(!d.contains(sk.to_sk64_hex().get(..64).unwrap()));
            assert!(!d.contains(sk.to_sk64_hex().as_str()));
            assert!(!d.contains(&x_hex));
            assert!(d.contains(&sk.public().to_hex()));
        }
    }

    #[test]
    fn x25519_secret_is_clamped_and_matches_public() {
        let sk = SecretKey::generate();
        let x = sk.x25519_secret();
        assert_eq!(x[0] & 7, 0);
        assert_eq!(x[31] & 0xc0, 0x40);
        let derived = crypto_box::SecretKey::from_bytes(*x).public_key();
        assert_eq!(derived.as_bytes(), &sk.public().to_x25519());
    }

    #[test]
    fn small_order_points_are_refused() {
        // The identity point (y = 1) and the all-zero encoding are small-order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(PublicKey::from_bytes(&identity), Err(CryptoError::BadPoint));
        assert_eq!(
            PublicKey::from_bytes(&[0u8; 32]),
            Err(CryptoError::BadPoint)
        );
        assert!(PublicKey::from_bytes(SecretKey::generate().public().as_bytes()).is_ok());
    }
}
