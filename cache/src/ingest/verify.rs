//! Checking an uploaded NAR file as it arrives: its file hash, its decompression and the NAR
//! inside (structure, hash, size), chunk by chunk, without holding the file in memory.

use kiln_nix::hash::{Hash, Sha256Counter};
use kiln_nix::nar::NarValidator;
use zstd::stream::raw::Operation;

use crate::error::CacheError;
use crate::index::Compression;

/// Size of the buffer decompressed bytes pass through.
const OUT_BUF: usize = 128 * 1024;

/// Most memory an xz stream may need to be decompressed. `xz -9` (a 64 MiB dictionary, the
/// most Nix's `compression-level` asks for) needs about 65 MiB; anything beyond is refused
/// rather than allocated for a client.
pub const XZ_MEMORY_LIMIT: u64 = 128 << 20;

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

/// A decompressor fed in pieces.
enum Decoder {
    Zstd(zstd::stream::raw::Decoder<'static>),
    Xz(liblzma::stream::Stream),
    Bzip2(bzip2::Decompress),
}

/// What one decompression step did.
struct Stepped {
    read: usize,
    written: usize,
    /// Whether the input so far ends a whole stream (zstd: a frame), so the file may end here.
    at_end: bool,
}

fn invalid(what: &str, e: impl std::fmt::Display) -> CacheError {
    CacheError::BadRequest(format!("invalid {what} data in the NAR file: {e}"))
}

impl Decoder {
    fn new(compression: Compression) -> Result<Option<Decoder>, CacheError> {
        Ok(match compression {
            Compression::None => None,
            Compression::Zstd => Some(Decoder::Zstd(zstd::stream::raw::Decoder::new().map_err(
                |e| CacheError::Internal(format!("cannot create a zstd decoder: {e}")),
            )?)),
            // Concatenated streams, as Nix's own decompressor reads them.
            Compression::Xz => Some(Decoder::Xz(
                liblzma::stream::Stream::new_stream_decoder(
                    XZ_MEMORY_LIMIT,
                    liblzma::stream::CONCATENATED,
                )
                .map_err(|e| CacheError::Internal(format!("cannot create an xz decoder: {e}")))?,
            )),
            Compression::Bzip2 => Some(Decoder::Bzip2(bzip2::Decompress::new(false))),
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Decoder::Zstd(_) => "zstd",
            Decoder::Xz(_) => "xz",
            Decoder::Bzip2(_) => "bzip2",
        }
    }

    /// Decompresses from `input` into `out` as far as both allow.
    fn step(&mut self, input: &[u8], out: &mut [u8], ended: bool) -> Result<Stepped, CacheError> {
        match self {
            Decoder::Zstd(d) => {
                let status = d
                    .run_on_buffers(input, out)
                    .map_err(|e| invalid("zstd", e))?;
                Ok(Stepped {
                    read: status.bytes_read,
                    written: status.bytes_written,
                    at_end: status.remaining == 0,
                })
            }
            Decoder::Xz(d) => {
                let (in_before, out_before) = (d.total_in(), d.total_out());
                d.process(input, out, liblzma::stream::Action::Run)
                    .map_err(xz_error)?;
                Ok(Stepped {
                    read: (d.total_in() - in_before) as usize,
                    written: (d.total_out() - out_before) as usize,
                    // Known only when the file ends (see `Decoder::finish`).
                    at_end: false,
                })
            }
            Decoder::Bzip2(d) => {
                if ended && input.is_empty() {
                    return Ok(Stepped {
                        read: 0,
                        written: 0,
                        at_end: true,
                    });
                }
                if ended {
                    return Err(CacheError::BadRequest(
                        "the NAR file has data after the end of its bzip2 stream".to_owned(),
                    ));
                }
                let (in_before, out_before) = (d.total_in(), d.total_out());
                let status = d.decompress(input, out).map_err(|e| invalid("bzip2", e))?;
                Ok(Stepped {
                    read: (d.total_in() - in_before) as usize,
                    written: (d.total_out() - out_before) as usize,
                    at_end: status == bzip2::Status::StreamEnd,
                })
            }
        }
    }

    /// Ends the input: any output still held back, and whether the file ended a stream.
    fn finish(&mut self, out: &mut [u8]) -> Result<(usize, bool), CacheError> {
        match self {
            Decoder::Xz(d) => {
                let before = d.total_out();
                match d.process(&[], out, liblzma::stream::Action::Finish) {
                    Ok(liblzma::stream::Status::StreamEnd) => {
                        Ok(((d.total_out() - before) as usize, true))
                    }
                    // Still output to take, or (nothing written) the input stops inside a
                    // stream.
                    Ok(_) => Ok(((d.total_out() - before) as usize, false)),
                    Err(e) => Err(xz_error(e)),
                }
            }
            Decoder::Zstd(_) | Decoder::Bzip2(_) => Ok((0, false)),
        }
    }
}

fn xz_error(e: liblzma::stream::Error) -> CacheError {
    match e {
        liblzma::stream::Error::MemLimit => CacheError::BadRequest(format!(
            "the xz stream of the NAR file needs more than {} MiB of memory to decompress",
            XZ_MEMORY_LIMIT >> 20
        )),
        e => invalid("xz", e),
    }
}

/// Verifies a (possibly compressed) NAR file fed in chunks of any size.
pub struct NarFileVerifier {
    file: Sha256Counter,
    decoder: Option<Decoder>,
    out: Vec<u8>,
    nar: NarValidator,
    max_nar_size: u64,
    /// The file hash the upload's name promises, checked at the end.
    expected_file_hash: Option<Hash>,
    /// Whether the input so far ends a whole compressed stream (a file cut inside one must be
    /// refused even if the NAR in it happens to be complete: clients could not decompress it).
    stream_complete: bool,
}

impl NarFileVerifier {
    /// A verifier for a file compressed with `compression`, refusing NARs over `max_nar_size`
    /// and, if `expected_file_hash` is given, files with another SHA-256.
    pub fn new(
        compression: Compression,
        max_nar_size: u64,
        expected_file_hash: Option<Hash>,
    ) -> Result<NarFileVerifier, CacheError> {
        Ok(NarFileVerifier {
            file: Sha256Counter::new(),
            decoder: Decoder::new(compression)?,
            out: vec![0; OUT_BUF],
            nar: NarValidator::new(),
            max_nar_size,
            expected_file_hash,
            stream_complete: false,
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
            let step = decoder.step(input, &mut self.out, self.stream_complete)?;
            input = &input[step.read..];
            feed_nar(&mut self.nar, self.max_nar_size, &self.out[..step.written])?;
            self.stream_complete = step.at_end;
            // Done with this chunk once it is consumed and the decoder had no more to give.
            if input.is_empty() && step.written < self.out.len() {
                return Ok(());
            }
            if step.read == 0 && step.written == 0 {
                return Err(CacheError::BadRequest(format!(
                    "the {} stream of the NAR file cannot be decompressed further",
                    decoder.name()
                )));
            }
        }
    }

    /// Ends the file: its hashes and sizes, or why it is not a valid NAR file.
    pub fn finish(mut self) -> Result<Verified, CacheError> {
        if let Some(decoder) = self.decoder.as_mut() {
            loop {
                let (written, ended) = decoder.finish(&mut self.out)?;
                feed_nar(&mut self.nar, self.max_nar_size, &self.out[..written])?;
                self.stream_complete |= ended;
                if written == 0 || ended {
                    break;
                }
            }
            if !self.stream_complete {
                return Err(CacheError::BadRequest(format!(
                    "the {} stream of the NAR file is truncated",
                    decoder.name()
                )));
            }
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
pub(crate) mod tests {
    use super::*;

    /// The NAR of a regular file holding `content`.
    pub(crate) fn nar_of(content: &[u8]) -> Vec<u8> {
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

    fn compress(compression: Compression, data: &[u8]) -> Vec<u8> {
        match compression {
            Compression::None => data.to_vec(),
            Compression::Zstd => zstd::encode_all(data, 3).unwrap(),
            Compression::Xz => liblzma::encode_all(data, 6).unwrap(),
            Compression::Bzip2 => {
                use std::io::Write;
                let mut enc =
                    bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
                enc.write_all(data).unwrap();
                enc.finish().unwrap()
            }
        }
    }

    const ALL: [Compression; 4] = [
        Compression::None,
        Compression::Zstd,
        Compression::Xz,
        Compression::Bzip2,
    ];

    #[test]
    fn hashes_file_and_nar_whatever_the_chunking() {
        // Varied content, so that compressed files span many decoder steps.
        let content: Vec<u8> = (0..600_000u64).map(|i| (i * i % 251) as u8).collect();
        let nar = nar_of(&content);
        for compression in ALL {
            let file = compress(compression, &nar);
            for chunk in [1, 7, 4096, 1 << 20] {
                if chunk == 1 && file.len() > 100_000 {
                    continue;
                }
                let v = verify(compression, &file, chunk, u64::MAX)
                    .unwrap_or_else(|e| panic!("{compression:?} in chunks of {chunk}: {e}"));
                assert_eq!(
                    (v.file_hash, v.file_size),
                    (Hash::sha256(&file), file.len() as u64)
                );
                assert_eq!(
                    (v.nar_hash, v.nar_size),
                    (Hash::sha256(&nar), nar.len() as u64)
                );
            }
        }
        let v = verify(Compression::None, &nar, 1000, u64::MAX).unwrap();
        assert_eq!(v.file_hash, v.nar_hash);
    }

    #[test]
    fn truncated_or_trailing_compressed_streams_are_refused() {
        let nar = nar_of(&vec![3u8; 200_000]);
        for compression in [Compression::Zstd, Compression::Xz, Compression::Bzip2] {
            let file = compress(compression, &nar);
            let cut = &file[..file.len() - 4];
            let err = verify(compression, cut, 4096, u64::MAX).unwrap_err();
            assert!(
                matches!(err, CacheError::BadRequest(_)),
                "{compression:?}: {err}"
            );
            let mut trailing = file.clone();
            trailing.extend_from_slice(b"garbage!");
            assert!(
                verify(compression, &trailing, 4096, u64::MAX).is_err(),
                "{compression:?} with trailing garbage"
            );
            assert!(
                verify(compression, &nar, 4096, u64::MAX).is_err(),
                "{compression:?}: an uncompressed NAR"
            );
            let err = verify(compression, &file, 4096, 1000).unwrap_err();
            assert!(
                matches!(err, CacheError::TooLarge { limit: 1000, .. }),
                "{compression:?}: {err}"
            );
        }
        // Nix's xz decompressor reads concatenated streams; so does the cache.
        let (head, tail) = nar.split_at(1000);
        let mut two = compress(Compression::Xz, head);
        two.extend_from_slice(&compress(Compression::Xz, tail));
        let v = verify(Compression::Xz, &two, 333, u64::MAX).unwrap();
        assert_eq!(v.nar_hash, Hash::sha256(&nar));
    }

    /// CRC-32 (IEEE), as xz block headers carry it.
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in data {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn xz_streams_needing_too_much_memory_are_refused() {
        let file = compress(Compression::Xz, &nar_of(b"small"));
        // Stream header (12 bytes), then the block header: size, flags, LZMA2 filter id,
        // property size, dictionary size property, padding, CRC-32.
        let header = 12;
        assert_eq!(&file[header..header + 4], &[0x02, 0x00, 0x21, 0x01]);
        let mut huge = file.clone();
        huge[header + 4] = 40; // a 4 GiB dictionary
        let crc = crc32(&huge[header..header + 8]);
        huge[header + 8..header + 12].copy_from_slice(&crc.to_le_bytes());
        let err = verify(Compression::Xz, &huge, 4096, u64::MAX).unwrap_err();
        assert!(err.to_string().contains("MiB of memory"), "{err}");
        // The same file with its own dictionary size passes: the patch is what is refused.
        verify(Compression::Xz, &file, 4096, u64::MAX).unwrap();
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
