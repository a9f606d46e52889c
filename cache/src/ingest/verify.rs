//! Checking an uploaded NAR file as it arrives: its file hash, its decompression and the NAR
//! inside (structure, hash, size), chunk by chunk, without holding the file in memory.

use kiln_nix::hash::{Hash, Sha256Counter};
use kiln_nix::nar::NarValidator;
use zstd::stream::raw::{Decoder, Operation};

use crate::error::CacheError;
use crate::index::Compression;

/// Size of the buffer decompressed bytes pass through.
const OUT_BUF: usize = 128 * 1024;

/// Hashes and sizes of a verified NAR file and of the NAR inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// SHA-256 of the file as received.
    pub file_hash: Hash,
    /// Size of the file as received.
    pub file_size: u64,
    /// SHA-256 of the NAR.
    pub nar_hash: Hash,
    /// Size of the NAR.
    pub nar_size: u64,
}

/// Verifies a (possibly compressed) NAR file fed in chunks of any size.
pub struct NarFileVerifier {
    file: Sha256Counter,
    decoder: Option<Decoder<'static>>,
    out: Vec<u8>,
    nar: NarValidator,
    max_nar_size: u64,
    /// The file hash the upload's name promises, checked at the end.
    expected_file_hash: Option<Hash>,
    /// Whether the last zstd frame seen has ended (a file cut inside a frame must be refused
    /// even if the NAR in it happens to be complete: clients could not decompress it).
    frame_complete: bool,
}

impl NarFileVerifier {
    /// A verifier for a file compressed with `compression`, refusing NARs over `max_nar_size`
    /// and, if `expected_file_hash` is given, files with another SHA-256.
    pub fn new(
        compression: Compression,
        max_nar_size: u64,
        expected_file_hash: Option<Hash>,
    ) -> Result<NarFileVerifier, CacheError> {
        let decoder =
            match compression {
                Compression::None => None,
                Compression::Zstd => Some(Decoder::new().map_err(|e| {
                    CacheError::Internal(format!("cannot create a zstd decoder: {e}"))
                })?),
            };
        Ok(NarFileVerifier {
            file: Sha256Counter::new(),
            decoder,
            out: vec![0; OUT_BUF],
            nar: NarValidator::new(),
            max_nar_size,
            expected_file_hash,
            frame_complete: false,
        })
    }

    /// Checks the next chunk of the file.
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), CacheError> {
        self.file.update(chunk);
        let Some(decoder) = self.decoder.as_mut() else {
            return feed_nar(&mut self.nar, self.max_nar_size, chunk);
        };
        let mut input = chunk;
        loop {
            let status = decoder.run_on_buffers(input, &mut self.out).map_err(|e| {
                CacheError::BadRequest(format!("invalid zstd data in the NAR file: {e}"))
            })?;
            input = &input[status.bytes_read..];
            feed_nar(
                &mut self.nar,
                self.max_nar_size,
                &self.out[..status.bytes_written],
            )?;
            self.frame_complete = status.remaining == 0;
            // Done with this chunk once it is consumed and the decoder had no more to give.
            if input.is_empty() && status.bytes_written < self.out.len() {
                return Ok(());
            }
        }
    }

    /// Ends the file: its hashes and sizes, or why it is not a valid NAR file.
    pub fn finish(self) -> Result<Verified, CacheError> {
        if self.decoder.is_some() && !self.frame_complete {
            return Err(CacheError::BadRequest(
                "the zstd stream of the NAR file is truncated".to_owned(),
            ));
        }
        let (nar_hash, nar_size) = self
            .nar
            .finish()
            .map_err(|e| CacheError::BadRequest(format!("invalid NAR: {e}")))?;
        let (file_hash, file_size) = self.file.finish();
        if let Some(expected) = &self.expected_file_hash
            && expected != &file_hash
        {
            return Err(CacheError::BadRequest(format!(
                "the NAR file's name promises FileHash {expected} but its content hashes to {file_hash}"
            )));
        }
        Ok(Verified {
            file_hash,
            file_size,
            nar_hash,
            nar_size,
        })
    }
}

/// Feeds decompressed bytes to the NAR validator, enforcing the size limit.
pub(crate) fn feed_nar(nar: &mut NarValidator, max: u64, bytes: &[u8]) -> Result<(), CacheError> {
    if bytes.is_empty() {
        return Ok(());
    }
    if nar.bytes_seen() + bytes.len() as u64 > max {
        return Err(CacheError::TooLarge {
            what: "the uncompressed NAR".to_owned(),
            limit: max,
        });
    }
    nar.update(bytes)
        .map_err(|e| CacheError::BadRequest(format!("invalid NAR: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nar_of(content: &[u8]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), content).unwrap();
        let mut nar = Vec::new();
        kiln_nix::nar::dump_path(&dir.path().join("f"), &mut nar).unwrap();
        nar
    }

    fn verify(
        compression: Compression,
        file: &[u8],
        chunk: usize,
        max: u64,
    ) -> Result<Verified, CacheError> {
        let mut verifier = NarFileVerifier::new(compression, max, None)?;
        for piece in file.chunks(chunk) {
            verifier.update(piece)?;
        }
        verifier.finish()
    }

    #[test]
    fn hashes_file_and_nar_whatever_the_chunking() {
        let nar = nar_of(&vec![7u8; 500_000]);
        let file = zstd::encode_all(nar.as_slice(), 3).unwrap();
        for chunk in [1, 7, 4096, 1 << 20] {
            let v = verify(Compression::Zstd, &file, chunk, u64::MAX).unwrap();
            assert_eq!(
                (v.file_hash, v.file_size),
                (Hash::sha256(&file), file.len() as u64)
            );
            assert_eq!(
                (v.nar_hash, v.nar_size),
                (Hash::sha256(&nar), nar.len() as u64)
            );
        }
        let v = verify(Compression::None, &nar, 1000, u64::MAX).unwrap();
        assert_eq!(v.file_hash, v.nar_hash);
    }

    #[test]
    fn refuses_what_clients_could_not_use() {
        let nar = nar_of(b"content");
        let file = zstd::encode_all(nar.as_slice(), 3).unwrap();
        let mut two_frames = file.clone();
        two_frames.extend_from_slice(&file);
        assert!(
            verify(Compression::Zstd, &two_frames, 64, u64::MAX)
                .unwrap_err()
                .to_string()
                .contains("invalid NAR")
        );
        assert!(
            verify(Compression::Zstd, &nar, 64, u64::MAX)
                .unwrap_err()
                .to_string()
                .contains("zstd")
        );
        assert!(
            verify(Compression::None, &file, 64, u64::MAX)
                .unwrap_err()
                .to_string()
                .contains("invalid NAR")
        );
        assert!(verify(Compression::Zstd, &[], 64, u64::MAX).is_err());
        let err = verify(Compression::Zstd, &file, 64, 16).unwrap_err();
        assert!(
            matches!(err, CacheError::TooLarge { limit: 16, .. }),
            "{err}"
        );
        let mut verifier =
            NarFileVerifier::new(Compression::None, u64::MAX, Some(Hash::sha256(b"other")))
                .unwrap();
        verifier.update(&nar).unwrap();
        assert!(
            verifier
                .finish()
                .unwrap_err()
                .to_string()
                .contains("FileHash")
        );
    }
}
