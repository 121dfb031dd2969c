//! Strict lowercase-hex helpers shared by the key types.
//!
//! Parsing accepts exactly `2 * N` ASCII characters from `[0-9a-f]` and nothing
//! else; it never panics on arbitrary input. Encoding into a pre-sized `String`
//! lets secret material be hex-encoded without reallocations that would leave
//! unzeroized copies behind. This module must not log or format its inputs.

use crate::CryptoError;

/// The lowercase hex digit for the low four bits of `n`.
fn nibble(n: u8) -> char {
    let n = n & 0x0f;
    char::from(if n < 10 { b'0' + n } else { b'a' + (n - 10) })
}

/// Decode exactly `out.len()` bytes from lowercase hex into `out`.
pub(crate) fn decode_lower_into(s: &str, out: &mut [u8]) -> Result<(), CryptoError> {
    let expected = out.len() * 2;
    if s.len() != expected {
        return Err(CryptoError::BadLength {
            expected,
            got: s.len(),
        });
    }
    if !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(CryptoError::BadHex);
    }
    hex::decode_to_slice(s, out).map_err(|_| CryptoError::BadHex)
}

/// Decode exactly `N` bytes from lowercase hex.
pub(crate) fn decode_lower<const N: usize>(s: &str) -> Result<[u8; N], CryptoError> {
    let mut out = [0u8; N];
    decode_lower_into(s, &mut out)?;
    Ok(out)
}

/// Append the lowercase hex of `bytes` to `out`. Callers that encode secrets
/// must reserve `2 * bytes.len()` capacity first so `out` never reallocates.
pub(crate) fn encode_lower_into(bytes: &[u8], out: &mut String) {
    for &b in bytes {
        out.push(nibble(b >> 4));
        out.push(nibble(b));
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn encode_lower(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    encode_lower_into(bytes, &mut s);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let bytes: [u8; 4] = decode_lower("00ff7a10").unwrap();
        assert_eq!(bytes, [0x00, 0xff, 0x7a, 0x10]);
        assert_eq!(encode_lower(&bytes), "00ff7a10");
        assert_eq!(
            decode_lower::<4>("00ff7a1"),
            Err(CryptoError::BadLength {
                expected: 8,
                got: 7
            })
        );
        assert_eq!(decode_lower::<4>("00FF7a10"), Err(CryptoError::BadHex));
        assert_eq!(decode_lower::<4>("00ff7g10"), Err(CryptoError::BadHex));
        assert_eq!(decode_lower::<4>("+0ff7a10"), Err(CryptoError::BadHex));
        // 8 bytes of UTF-8 but only 4 chars: must be rejected, not panic.
        assert_eq!(decode_lower::<4>("éééé"), Err(CryptoError::BadHex));
        assert_eq!(decode_lower::<0>(""), Ok([]));
    }
}
