//! NAR archives: packing a file tree, hashing it, and parsing, validating and unpacking archives.
//!
//! A NAR ("Nix ARchive") is the canonical serialisation of a file system object. Every integer is
//! a 64-bit little-endian number; every string is its length, its bytes and zero padding to a
//! multiple of 8. An archive is the string `nix-archive-1` followed by one node:
//!
//! ```text
//! ( type regular [executable ""] contents <bytes> )
//! ( type symlink target <target> )
//! ( type directory [entry ( name <name> node <node> )]* )
//! ```
//!
//! Only the executable bit of a regular file survives; directory entries are sorted bytewise by
//! name.
//!
//! What lives where:
//! - [`dump`](mod@dump): [`dump_path`] writes the NAR of a path to any writer and [`hash_path`]
//!   computes its SHA-256 and size, both streaming with one fixed buffer.
//! - [`error`]: [`NarError`], what is wrong with a refused archive and at which byte.
//! - [`parser`]: [`NarParser`], a state machine that is fed bytes and emits [`NarEvent`]s without
//!   touching the disk, and refuses anything that is not the exact encoding Nix writes.
//! - [`validate`](mod@validate): [`NarValidator`] (feed it chunks), [`ValidatingReader`] (wraps a
//!   reader and validates the bytes passing through it) and [`validate`](validate()) (consume a
//!   reader); all three report the NAR's hash and size.
//! - [`unpack`](mod@unpack): [`unpack`](unpack()) restores an archive into a new directory entry
//!   without ever writing outside it.
//!
//! Kiln accepts exactly the canonical encoding Nix's dumper produces, within [`NarLimits`]. Nix's
//! own restore (2.8) is more lenient: it takes a regular file's fields in any order and more than
//! once, does not check that entries are sorted (only a duplicate fails, when the file exists),
//! ignores bytes after the archive and cuts symlink targets at a NUL. Kiln refuses all of these:
//! one tree must have one NAR, hence one NAR hash, and a cache must not store bytes no client
//! would read.

pub mod dump;
pub mod error;
pub mod parser;
pub mod unpack;
pub mod validate;

pub use dump::{DumpError, dump_path, hash_path};
pub use error::{ByteString, NameProblem, NarError, NarErrorKind, TargetProblem};
pub use parser::{NarEvent, NarLimits, NarParser, Step};
pub use unpack::{UnpackError, unpack, unpack_with_limits};
pub use validate::{NarReadError, NarValidator, ValidatingReader, validate, validate_with_limits};

/// The string every NAR starts with.
pub const MAGIC: &[u8] = b"nix-archive-1";

/// Number of zero bytes that follow a string or file contents of `len` bytes.
pub(crate) const fn padding(len: u64) -> usize {
    ((8 - len % 8) % 8) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_rounds_up_to_eight() {
        assert_eq!(padding(0), 0);
        assert_eq!(padding(1), 7);
        assert_eq!(padding(7), 1);
        assert_eq!(padding(8), 0);
        assert_eq!(padding(u64::MAX), 1);
    }
}
