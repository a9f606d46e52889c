//! nixbase32: Nix's own base-32 encoding of hashes.
//!
//! The alphabet omits `e`, `o`, `t` and `u`, and the string is written from the most significant
//! 5-bit group of the byte string read as a little-endian number, so it is not RFC 4648.

use thiserror::Error;

/// The 32 characters of nixbase32, in digit order.
pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Why a nixbase32 string could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Base32Error {
    /// The string has a character outside the nixbase32 alphabet.
    #[error("invalid character {0:?} in nixbase32 string")]
    InvalidChar(char),
    /// The string is not as long as the encoding of the expected number of bytes.
    #[error("nixbase32 string has length {actual}, expected {expected}")]
    WrongLength { expected: usize, actual: usize },
    /// The string encodes more bits than fit in the expected number of bytes.
    #[error("nixbase32 string has non-zero padding bits")]
    Overflow,
}

/// Length of the nixbase32 encoding of `n` bytes.
pub const fn encoded_len(n: usize) -> usize {
    if n == 0 { 0 } else { (n * 8 - 1) / 5 + 1 }
}

/// Encodes bytes as nixbase32.
pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let b = n * 5;
        let i = b / 8;
        let j = b % 8;
        let low = bytes[i] >> j;
        let high = if i + 1 < bytes.len() {
            (bytes[i + 1] as u16) << (8 - j)
        } else {
            0
        } as u8;
        out.push(ALPHABET[((low | high) & 0x1f) as usize] as char);
    }
    out
}

/// Decodes a nixbase32 string into exactly `size` bytes.
pub fn decode(s: &str, size: usize) -> Result<Vec<u8>, Base32Error> {
    let expected = encoded_len(size);
    if s.len() != expected {
        return Err(Base32Error::WrongLength {
            expected,
            actual: s.len(),
        });
    }
    let mut out = vec![0u8; size];
    for (n, c) in s.bytes().rev().enumerate() {
        let digit = digit_value(c).ok_or(Base32Error::InvalidChar(c as char))? as u16;
        let b = n * 5;
        let i = b / 8;
        let j = b % 8;
        out[i] |= (digit << j) as u8;
        let carry = digit >> (8 - j);
        if i + 1 < size {
            out[i + 1] |= carry as u8;
        } else if carry != 0 {
            return Err(Base32Error::Overflow);
        }
    }
    Ok(out)
}

/// Whether `c` is a nixbase32 character.
pub fn is_base32_char(c: u8) -> bool {
    digit_value(c).is_some()
}

fn digit_value(c: u8) -> Option<u8> {
    ALPHABET.iter().position(|&a| a == c).map(|p| p as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_known_sha256_of_empty_string() {
        // `nix hash to-base32 sha256:e3b0c442...` as printed by Nix itself.
        let bytes = hex::decode("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
            .unwrap();
        let s = encode(&bytes);
        assert_eq!(s, "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73");
        assert_eq!(decode(&s, 32).unwrap(), bytes);
    }

    #[test]
    fn round_trips_every_length() {
        for n in 0..70 {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(decode(&encode(&bytes), n).unwrap(), bytes, "length {n}");
        }
    }

    #[test]
    fn refuses_bad_characters_length_and_overflow() {
        assert_eq!(
            decode("e", 1),
            Err(Base32Error::WrongLength {
                expected: 2,
                actual: 1
            })
        );
        assert_eq!(decode("0e", 1), Err(Base32Error::InvalidChar('e')));
        // 2 chars = 10 bits for 1 byte: the top two bits must be zero.
        assert_eq!(decode("z0", 1), Err(Base32Error::Overflow));
    }
}
