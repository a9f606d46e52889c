//! The serve protocol's encoding: little-endian 64-bit integers and padded byte strings.
//!
//! Nix's `Sink`/`Source` serialisation: every integer is a `u64` in little-endian order, every
//! string is its length, its bytes and zero padding to a multiple of 8, and a collection is its
//! element count followed by the elements. Requests are assembled in memory ([`Request`]) and
//! written in one go; answers are read from the process's stdout with a bound on every length,
//! so a confused or hostile peer cannot make the worker allocate without limit.

use std::io;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest string accepted from the serve process (error messages, paths, hashes).
pub const MAX_STRING: u64 = 16 * 1024 * 1024;
/// Most elements accepted in one collection from the serve process.
pub const MAX_COUNT: u64 = 1 << 20;

/// Why an answer from the serve process could not be read.
#[derive(Debug, Error)]
pub enum WireError {
    /// The pipe failed or ended in the middle of an answer.
    #[error("reading from nix-store --serve failed")]
    Io(#[from] io::Error),
    /// A length field was larger than anything Nix sends.
    #[error("nix-store --serve sent a {what} of {len}, more than the {limit} accepted")]
    TooLong {
        /// What was being read (`string`, `list`).
        what: &'static str,
        /// The length announced.
        len: u64,
        /// The limit it exceeds.
        limit: u64,
    },
    /// Padding after a string was not zero.
    #[error("nix-store --serve sent a string with non-zero padding")]
    BadPadding,
    /// A string that must be text was not UTF-8.
    #[error("nix-store --serve sent a {what} that is not UTF-8")]
    NotUtf8 {
        /// What was being read.
        what: &'static str,
    },
    /// The answer does not fit the protocol (wrong magic, unknown status, ...).
    #[error("nix-store --serve answered out of protocol: {0}")]
    Protocol(String),
}

/// A request being assembled for the serve process.
#[derive(Debug, Default)]
pub struct Request {
    buf: Vec<u8>,
}

impl Request {
    /// An empty request.
    pub fn new() -> Request {
        Request::default()
    }

    /// Appends an integer.
    pub fn int(&mut self, n: u64) -> &mut Request {
        self.buf.extend_from_slice(&n.to_le_bytes());
        self
    }

    /// Appends a byte string with its length and padding.
    pub fn bytes(&mut self, s: &[u8]) -> &mut Request {
        self.int(s.len() as u64);
        self.buf.extend_from_slice(s);
        let pad = (8 - s.len() % 8) % 8;
        self.buf.extend_from_slice(&[0u8; 8][..pad]);
        self
    }

    /// Appends a text string.
    pub fn str(&mut self, s: &str) -> &mut Request {
        self.bytes(s.as_bytes())
    }

    /// Appends a list of strings (also how Nix writes sets of store paths).
    pub fn strings<I, S>(&mut self, items: I) -> &mut Request
    where
        I: IntoIterator<Item = S>,
        I::IntoIter: ExactSizeIterator,
        S: AsRef<[u8]>,
    {
        let items = items.into_iter();
        self.int(items.len() as u64);
        for item in items {
            self.bytes(item.as_ref());
        }
        self
    }

    /// The encoded request.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    /// The encoded request so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// Reads one integer.
pub async fn read_int<R: AsyncRead + Unpin>(r: &mut R) -> Result<u64, WireError> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b).await?;
    Ok(u64::from_le_bytes(b))
}

/// Reads one byte string of at most [`MAX_STRING`] bytes.
pub async fn read_bytes<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, WireError> {
    let len = read_int(r).await?;
    if len > MAX_STRING {
        return Err(WireError::TooLong {
            what: "string",
            len,
            limit: MAX_STRING,
        });
    }
    // The bound above keeps the cast lossless and the allocation modest.
    let mut s = vec![0u8; len as usize];
    r.read_exact(&mut s).await?;
    let pad = ((8 - len % 8) % 8) as usize;
    let mut zeros = [0u8; 8];
    r.read_exact(&mut zeros[..pad]).await?;
    if zeros[..pad].iter().any(|&b| b != 0) {
        return Err(WireError::BadPadding);
    }
    Ok(s)
}

/// Reads one UTF-8 string; `what` names it in errors.
pub async fn read_string<R: AsyncRead + Unpin>(
    r: &mut R,
    what: &'static str,
) -> Result<String, WireError> {
    String::from_utf8(read_bytes(r).await?).map_err(|_| WireError::NotUtf8 { what })
}

/// Reads the element count of a collection, at most [`MAX_COUNT`].
pub async fn read_count<R: AsyncRead + Unpin>(r: &mut R) -> Result<u64, WireError> {
    let n = read_int(r).await?;
    if n > MAX_COUNT {
        return Err(WireError::TooLong {
            what: "list",
            len: n,
            limit: MAX_COUNT,
        });
    }
    Ok(n)
}

/// Reads a list of UTF-8 strings (a set of store paths, signatures, ...).
pub async fn read_strings<R: AsyncRead + Unpin>(
    r: &mut R,
    what: &'static str,
) -> Result<Vec<String>, WireError> {
    let n = read_count(r).await?;
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(read_string(r, what).await?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_length_prefixed_and_padded_to_eight_bytes() {
        let mut req = Request::new();
        req.str("abc").int(7).str("");
        let bytes = req.into_bytes();
        assert_eq!(
            bytes,
            [
                &3u64.to_le_bytes()[..],
                b"abc\0\0\0\0\0",
                &7u64.to_le_bytes(),
                &0u64.to_le_bytes(),
            ]
            .concat()
        );
    }

    #[tokio::test]
    async fn reading_gives_back_what_was_written() {
        let mut req = Request::new();
        req.strings(["/nix/store/a", "x"]).str("12345678").int(42);
        let bytes = req.into_bytes();
        let mut r = bytes.as_slice();
        assert_eq!(
            read_strings(&mut r, "path").await.unwrap(),
            ["/nix/store/a", "x"]
        );
        assert_eq!(read_string(&mut r, "s").await.unwrap(), "12345678");
        assert_eq!(read_int(&mut r).await.unwrap(), 42);
        assert!(r.is_empty());
    }

    #[tokio::test]
    async fn oversized_lengths_are_refused_before_allocating() {
        let bytes = (MAX_STRING + 1).to_le_bytes();
        let err = read_bytes(&mut bytes.as_slice()).await.unwrap_err();
        assert!(matches!(err, WireError::TooLong { what: "string", .. }));
        let bytes = u64::MAX.to_le_bytes();
        let err = read_count(&mut bytes.as_slice()).await.unwrap_err();
        assert!(matches!(err, WireError::TooLong { what: "list", .. }));
    }

    #[tokio::test]
    async fn non_zero_padding_is_refused() {
        let bytes = [&1u64.to_le_bytes()[..], b"a\0\0\0\0\0\0\x01"].concat();
        let err = read_bytes(&mut bytes.as_slice()).await.unwrap_err();
        assert!(matches!(err, WireError::BadPadding));
    }

    #[tokio::test]
    async fn a_truncated_answer_is_an_io_error() {
        let bytes = [&8u64.to_le_bytes()[..], b"abc"].concat();
        let err = read_bytes(&mut bytes.as_slice()).await.unwrap_err();
        assert!(matches!(err, WireError::Io(_)));
    }
}
