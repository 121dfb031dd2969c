//! The one id generator: 128 random bits as 32 lowercase hex characters, for message ids,
//! mesh and member ids, invite ids and client message ids alike. Ids are opaque on the
//! wire; only their uniqueness matters.

/// A fresh random id (32 hex characters).
pub fn new_id() -> String {
    hex(&claudemesh_crypto::random_bytes::<16>())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
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
