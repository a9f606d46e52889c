//! Why an archive is refused: typed errors with the byte offset of the problem.

use std::fmt;

use thiserror::Error;

#[cfg(doc)]
use super::NarLimits;

/// Bytes from an archive, shown quoted with non-printable bytes escaped.
#[derive(Clone, PartialEq, Eq)]
pub struct ByteString(pub Vec<u8>);

impl fmt::Display for ByteString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0.escape_ascii())
    }
}

impl fmt::Debug for ByteString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a directory entry name is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameProblem {
    /// The name is the empty string.
    Empty,
    /// The name is `.`.
    Dot,
    /// The name is `..`.
    DotDot,
    /// The name contains `/`, so it is a path rather than a name.
    Slash,
    /// The name contains a NUL byte, which no file name can hold.
    Nul,
}

impl fmt::Display for NameProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameProblem::Empty => "it is empty",
            NameProblem::Dot => "it is \".\"",
            NameProblem::DotDot => "it is \"..\"",
            NameProblem::Slash => "it contains \"/\"",
            NameProblem::Nul => "it contains a NUL byte",
        })
    }
}

/// Why a symlink target is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetProblem {
    /// The target is empty; Linux cannot create such a symlink.
    Empty,
    /// The target contains a NUL byte, which no symlink can hold.
    Nul,
}

impl fmt::Display for TargetProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetProblem::Empty => "it is empty",
            TargetProblem::Nul => "it contains a NUL byte",
        })
    }
}

/// What is wrong with an archive; [`NarError`] adds where.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NarErrorKind {
    /// The archive does not start with the string `nix-archive-1`.
    #[error("the archive does not start with the \"nix-archive-1\" magic")]
    BadMagic,
    /// A keyword other than the one(s) the grammar allows here.
    #[error("expected {expected}, found {found}")]
    UnexpectedToken {
        /// What the grammar allows at this point.
        expected: &'static str,
        /// The string found instead.
        found: ByteString,
    },
    /// A string too long to be any keyword allowed here; its bytes were not read.
    #[error("expected {expected}, found a string of {len} bytes")]
    OversizedToken {
        /// What the grammar allows at this point.
        expected: &'static str,
        /// The declared length of the string.
        len: u64,
    },
    /// A node `type` other than `regular`, `symlink` or `directory`.
    #[error("unknown node type {found} (expected \"regular\", \"symlink\" or \"directory\")")]
    UnknownNodeType {
        /// The type found.
        found: ByteString,
    },
    /// An entry name longer than [`NarLimits::max_name_len`]; its bytes were not read.
    #[error("entry name of {len} bytes exceeds the limit of {max} bytes")]
    NameTooLong {
        /// The declared length of the name.
        len: u64,
        /// The limit in force.
        max: usize,
    },
    /// A symlink target longer than [`NarLimits::max_target_len`]; its bytes were not
    /// read.
    #[error("symlink target of {len} bytes exceeds the limit of {max} bytes")]
    TargetTooLong {
        /// The declared length of the target.
        len: u64,
        /// The limit in force.
        max: usize,
    },
    /// An entry name that is not a single path component.
    #[error("invalid entry name {name}: {problem}")]
    InvalidName {
        /// The name found.
        name: ByteString,
        /// What is wrong with it.
        problem: NameProblem,
    },
    /// A symlink target no file system can hold.
    #[error("invalid symlink target: {problem}")]
    InvalidTarget {
        /// What is wrong with it.
        problem: TargetProblem,
    },
    /// An entry with the same name as the entry before it.
    #[error("duplicate entry name {name}")]
    DuplicateEntry {
        /// The repeated name.
        name: ByteString,
    },
    /// An entry whose name sorts bytewise before the entry before it.
    #[error("entry {name} is out of order: it sorts before the previous entry {previous}")]
    UnsortedEntry {
        /// The name of the entry before it.
        previous: ByteString,
        /// The out-of-order name.
        name: ByteString,
    },
    /// Directories nested deeper than [`NarLimits::max_depth`].
    #[error("directories are nested deeper than the limit of {max}")]
    TooDeep {
        /// The limit in force.
        max: usize,
    },
    /// Padding after a string or file contents that is not zero.
    #[error("padding byte is {byte:#04x}, not zero")]
    NonZeroPadding {
        /// The offending byte.
        byte: u8,
    },
    /// The input ended before the archive did.
    #[error("the input ends inside the archive, while expecting {expected}")]
    Truncated {
        /// What the grammar expected next.
        expected: &'static str,
    },
    /// Bytes follow the end of the archive.
    #[error("bytes follow the end of the archive")]
    TrailingData,
}

/// An archive refused by the parser: what is wrong and at which byte.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid NAR at byte {offset}: {kind}")]
pub struct NarError {
    /// Offset from the start of the archive of the offending item: the length field of a bad
    /// string, the bad padding byte, the first trailing byte, or the end of a truncated input.
    pub offset: u64,
    /// What is wrong.
    pub kind: NarErrorKind,
}
