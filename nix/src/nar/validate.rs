//! Validating a NAR while it streams: chunk by chunk, through a reader, or by consuming a reader.
//!
//! All three check the whole grammar (the [`NarParser`]) and compute the NAR's SHA-256 and size,
//! the `NarHash` and `NarSize` a narinfo must state. None of them keeps more than a few hundred
//! bytes of the archive in memory.

use std::io::{self, Read};

use thiserror::Error;

use super::error::{NarError, NarErrorKind};
use super::parser::{NarLimits, NarParser};
use crate::hash::{Hash, Sha256Counter};

/// Size of the buffer [`validate`] reads with.
const READ_BUF: usize = 64 * 1024;

/// Why a NAR read from an [`io::Read`] was refused.
#[derive(Debug, Error)]
pub enum NarReadError {
    /// Reading failed.
    #[error("cannot read the NAR")]
    Io(#[source] io::Error),
    /// The archive is invalid.
    #[error(transparent)]
    Nar(#[from] NarError),
}

/// Checks a NAR fed in chunks of any size and computes its hash and size.
///
/// This is the form for a server that receives an upload in pieces and forwards them: call
/// [`update`](Self::update) on each piece before passing it on and [`finish`](Self::finish) at the
/// end of the upload.
pub struct NarValidator {
    parser: NarParser,
    hasher: Sha256Counter,
}

impl std::fmt::Debug for NarValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NarValidator")
            .field("parser", &self.parser)
            .finish_non_exhaustive()
    }
}

impl Default for NarValidator {
    fn default() -> Self {
        NarValidator::new()
    }
}

impl NarValidator {
    /// A validator with the default [`NarLimits`].
    pub fn new() -> Self {
        NarValidator::with_limits(NarLimits::default())
    }

    /// A validator enforcing `limits`.
    pub fn with_limits(limits: NarLimits) -> Self {
        NarValidator {
            parser: NarParser::with_limits(limits),
            hasher: Sha256Counter::new(),
        }
    }

    /// Checks the next piece of the archive. After an error, every further call returns it again.
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), NarError> {
        let mut pos = 0;
        loop {
            let step = self.parser.advance(&chunk[pos..])?;
            pos += step.consumed;
            if step.event.is_none() {
                break;
            }
        }
        self.hasher.update(chunk);
        Ok(())
    }

    /// Bytes accepted so far.
    pub fn bytes_seen(&self) -> u64 {
        self.parser.offset()
    }

    /// Whether a whole archive has been seen; further bytes would be an error.
    pub fn is_complete(&self) -> bool {
        self.parser.is_complete()
    }

    /// Ends the input: returns the archive's SHA-256 and size in bytes, or why it is invalid
    /// (including [`NarErrorKind::Truncated`] if it is incomplete).
    pub fn finish(self) -> Result<(Hash, u64), NarError> {
        self.parser.finish()?;
        Ok(self.hasher.finish())
    }
}

/// Reads a whole NAR from `reader`, checking it; returns its SHA-256 and size in bytes.
pub fn validate<R: Read>(reader: R) -> Result<(Hash, u64), NarReadError> {
    validate_with_limits(reader, NarLimits::default())
}

/// [`validate`] with explicit limits.
pub fn validate_with_limits<R: Read>(
    mut reader: R,
    limits: NarLimits,
) -> Result<(Hash, u64), NarReadError> {
    let mut validator = NarValidator::with_limits(limits);
    let mut buf = vec![0u8; READ_BUF];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(NarReadError::Io(e)),
        };
        validator.update(&buf[..n])?;
    }
    Ok(validator.finish()?)
}

/// A reader that checks the NAR passing through it.
///
/// Every byte it hands out has been accepted by the parser: a read that would return invalid bytes
/// fails instead, with an [`io::Error`] of kind `InvalidData` whose
/// [`get_ref`](io::Error::get_ref) is the [`NarError`]. At the end of the input a truncated
/// archive fails the read with kind `UnexpectedEof`, again carrying the [`NarError`]. So copying
/// from a `ValidatingReader` to storage (for example with [`io::copy`]) either forwards a complete,
/// valid archive or fails; then [`finish`](Self::finish) gives its hash and size.
#[derive(Debug)]
pub struct ValidatingReader<R> {
    inner: R,
    validator: NarValidator,
}

impl<R: Read> ValidatingReader<R> {
    /// Wraps `inner` with the default [`NarLimits`].
    pub fn new(inner: R) -> Self {
        ValidatingReader::with_limits(inner, NarLimits::default())
    }

    /// Wraps `inner`, enforcing `limits`.
    pub fn with_limits(inner: R, limits: NarLimits) -> Self {
        ValidatingReader {
            inner,
            validator: NarValidator::with_limits(limits),
        }
    }

    /// Bytes handed out so far.
    pub fn bytes_seen(&self) -> u64 {
        self.validator.bytes_seen()
    }

    /// The archive's SHA-256 and size, once the whole archive has been read; an error if the
    /// archive was invalid or has not been read to its end.
    pub fn finish(self) -> Result<(Hash, u64), NarError> {
        self.validator.finish()
    }

    /// The wrapped reader.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for ValidatingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            if let Err(err) = self.validator.parser.finish() {
                let kind = match err.kind {
                    NarErrorKind::Truncated { .. } => io::ErrorKind::UnexpectedEof,
                    _ => io::ErrorKind::InvalidData,
                };
                return Err(io::Error::new(kind, err));
            }
            return Ok(0);
        }
        self.validator
            .update(&buf[..n])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `nix-store --dump` of a file containing "hi\n".
    fn small_nar() -> Vec<u8> {
        let mut nar = Vec::new();
        for s in [
            &b"nix-archive-1"[..],
            b"(",
            b"type",
            b"regular",
            b"contents",
            b"hi\n",
            b")",
        ] {
            nar.extend_from_slice(&(s.len() as u64).to_le_bytes());
            nar.extend_from_slice(s);
            nar.resize(nar.len().next_multiple_of(8), 0);
        }
        nar
    }

    #[test]
    fn validator_hashes_exactly_the_archive_bytes() {
        let nar = small_nar();
        let mut v = NarValidator::new();
        for chunk in nar.chunks(3) {
            v.update(chunk).unwrap();
        }
        assert!(v.is_complete());
        assert_eq!(v.finish().unwrap(), (Hash::sha256(&nar), nar.len() as u64));
    }

    #[test]
    fn validator_refuses_truncation_at_finish() {
        let nar = small_nar();
        let mut v = NarValidator::new();
        v.update(&nar[..nar.len() - 1]).unwrap();
        let err = v.finish().unwrap_err();
        assert_eq!(err.offset, nar.len() as u64 - 1);
        assert!(matches!(err.kind, NarErrorKind::Truncated { .. }));
    }

    #[test]
    fn validator_stays_failed_after_an_error() {
        let mut v = NarValidator::new();
        let first = v.update(&[1; 16]).unwrap_err();
        assert_eq!(first.kind, NarErrorKind::BadMagic);
        assert_eq!(v.update(&small_nar()).unwrap_err(), first);
    }

    #[test]
    fn validating_reader_passes_valid_archives_through() {
        let nar = small_nar();
        let mut reader = ValidatingReader::new(nar.as_slice());
        let mut copy = Vec::new();
        io::copy(&mut reader, &mut copy).unwrap();
        assert_eq!(copy, nar);
        assert_eq!(
            reader.finish().unwrap(),
            (Hash::sha256(&nar), nar.len() as u64)
        );
    }

    #[test]
    fn validating_reader_fails_the_read_that_would_pass_bad_bytes() {
        let mut nar = small_nar();
        nar.extend_from_slice(b"trailing");
        let mut reader = ValidatingReader::new(nar.as_slice());
        let err = io::copy(&mut reader, &mut io::sink()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let nar_err = err.get_ref().unwrap().downcast_ref::<NarError>().unwrap();
        assert_eq!(nar_err.kind, NarErrorKind::TrailingData);
    }

    #[test]
    fn validating_reader_reports_truncation_as_unexpected_eof() {
        let nar = small_nar();
        let mut reader = ValidatingReader::new(&nar[..20]);
        let err = io::copy(&mut reader, &mut io::sink()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let nar_err = err.get_ref().unwrap().downcast_ref::<NarError>().unwrap();
        assert_eq!(nar_err.offset, 20);
    }

    #[test]
    fn validate_consumes_a_reader() {
        let nar = small_nar();
        assert_eq!(
            validate(nar.as_slice()).unwrap(),
            (Hash::sha256(&nar), nar.len() as u64)
        );
        assert!(matches!(validate(&nar[..9]), Err(NarReadError::Nar(_))));
    }
}
