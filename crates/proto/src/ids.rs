//! The one id generator: 128 random bits as 32 lowercase hex characters, for message ids,
//! mesh and member ids, invite ids and client message ids alike. Ids are opaque on the
//! wire; only their uniqueness matters.

/// A fresh random id (32 hex characters).
pub fn new_id() -> String {
    hex(&claudemesh_crypto::random_bytes::<16>())
}

/// Lowercase hex, by table: every message gets an id, and `write!("{:02x}")` per byte
/// was 4 % of the broker's instructions per message.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    let digit = |n: u8| char::from(DIGITS.get(usize::from(n)).copied().unwrap_or(b'0'));
    for b in bytes {
        s.push(digit(b >> 4));
        s.push(digit(b & 0x0f));
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_is_lowercase_two_digits_per_byte() {
        assert_eq!(super::hex(&[0x00, 0x0f, 0xab, 0xff]), "000fabff");
    }

    #[test]
    fn ids_are_32_hex_and_distinct() {
        let (a, b) = (super::new_id(), super::new_id());
        assert_eq!(a.len(), 32);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, b);
    }
}
