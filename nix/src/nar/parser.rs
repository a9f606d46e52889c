//! Streaming NAR parser: a state machine fed with bytes, emitting events, never touching the disk.
//!
//! [`NarParser`] does no I/O. The caller hands it whatever bytes it has; the parser consumes them
//! and returns at most one [`NarEvent`] per call, so the same parser serves a validator that only
//! counts and hashes, a server that checks an upload while forwarding it, and the unpacker. File
//! contents are never buffered: they come back as slices of the caller's input. Everything else
//! (keywords, entry names, symlink targets) is buffered up to a small limit that is checked
//! *before* any byte of the string is read, so a hostile length costs nothing.

use super::error::{ByteString, NameProblem, NarError, NarErrorKind, TargetProblem};
use super::{MAGIC, padding};

/// Longest keyword the grammar has (`executable`), rounded up: longer strings cannot be keywords.
const MAX_KEYWORD_LEN: u64 = 16;

/// Bounds the parser enforces on an archive, beyond its grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NarLimits {
    /// Longest directory entry name, in bytes. Default 255, `NAME_MAX` on Linux: no file system
    /// Nix runs on can hold a longer name.
    pub max_name_len: usize,
    /// Longest symlink target, in bytes. Default 4095: Linux refuses targets of `PATH_MAX` (4096)
    /// bytes or more.
    pub max_target_len: usize,
    /// Deepest nesting of directories, counting a root directory as 1. Default 256, far beyond real
    /// store paths; it bounds the parser's memory and the unpacker's open directory handles.
    pub max_depth: usize,
}

impl Default for NarLimits {
    fn default() -> Self {
        NarLimits {
            max_name_len: 255,
            max_target_len: 4095,
            max_depth: 256,
        }
    }
}

/// One step of an archive, in archive order.
///
/// Every node starts with `DirectoryStart`, `FileStart` or `Symlink` and ends with `DirectoryEnd`,
/// `FileEnd` or the same `Symlink`. `name` is `None` for the archive's root node and the entry's
/// name otherwise; the parser has already checked it is a valid, correctly ordered name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NarEvent<'a> {
    /// A directory begins; its entries follow until the matching `DirectoryEnd`.
    DirectoryStart {
        /// Entry name, `None` for the root.
        name: Option<&'a [u8]>,
    },
    /// The innermost open directory ends.
    DirectoryEnd,
    /// A regular file begins; `FileData` events carrying `size` bytes in total follow, then
    /// `FileEnd`.
    FileStart {
        /// Entry name, `None` for the root.
        name: Option<&'a [u8]>,
        /// Whether the file is executable.
        executable: bool,
        /// Length of the contents in bytes, as declared by the archive (not yet received).
        size: u64,
    },
    /// A piece of the current file's contents, borrowed from the input.
    FileData(&'a [u8]),
    /// The current file's contents and padding are complete.
    FileEnd,
    /// A symbolic link.
    Symlink {
        /// Entry name, `None` for the root.
        name: Option<&'a [u8]>,
        /// Link target, verbatim.
        target: &'a [u8],
    },
}

/// What one call to [`NarParser::advance`] did.
#[derive(Debug)]
pub struct Step<'a> {
    /// How many bytes of the input were consumed. The caller passes the rest next time.
    pub consumed: usize,
    /// The event reached, or `None` when all of the input was consumed without reaching one.
    pub event: Option<NarEvent<'a>>,
}

/// Where the parser is in the grammar: what the next string must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Magic,
    NodeOpen,
    TypeKeyword,
    TypeValue,
    RegularField,
    ExecutableValue,
    ContentsKeyword,
    Contents,
    TargetKeyword,
    TargetValue,
    NodeClose,
    DirectoryItem,
    EntryOpen,
    NameKeyword,
    NameValue,
    NodeKeyword,
    EntryClose,
    End,
}

impl Expect {
    fn describe(self) -> &'static str {
        match self {
            Expect::Magic => "the \"nix-archive-1\" magic",
            Expect::NodeOpen | Expect::EntryOpen => "\"(\"",
            Expect::TypeKeyword => "\"type\"",
            Expect::TypeValue => "a node type",
            Expect::RegularField => "\"executable\" or \"contents\"",
            Expect::ExecutableValue => "the empty string after \"executable\"",
            Expect::ContentsKeyword => "\"contents\"",
            Expect::Contents => "file contents",
            Expect::TargetKeyword => "\"target\"",
            Expect::TargetValue => "a symlink target",
            Expect::NodeClose | Expect::EntryClose => "\")\"",
            Expect::DirectoryItem => "\"entry\" or \")\"",
            Expect::NameKeyword => "\"name\"",
            Expect::NameValue => "an entry name",
            Expect::NodeKeyword => "\"node\"",
            Expect::End => "the end of the archive",
        }
    }
}

/// Which bytes the parser is reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lex {
    /// The 8-byte length of the next string; `have` bytes of it are in `len_buf`.
    Len { have: usize },
    /// The bytes of a string, collected in `buf`.
    Body { remaining: usize },
    /// File contents, passed through to the caller.
    Contents { remaining: u64 },
    /// Zero padding after a string (`after_contents` false) or after file contents.
    Padding {
        remaining: usize,
        after_contents: bool,
    },
    /// The archive is complete.
    End,
}

/// An event reached by the state machine; built into a [`NarEvent`] on return.
#[derive(Debug, Clone, Copy)]
enum Pending {
    DirectoryStart,
    DirectoryEnd,
    FileStart,
    Data { start: usize, end: usize },
    FileEnd,
    Symlink,
}

/// A push parser for NAR archives. See the [module documentation](self).
///
/// Feed input with [`advance`](Self::advance) until it returns no event, then feed the next input;
/// when the input is exhausted call [`finish`](Self::finish) to detect truncation. After an error
/// the parser is poisoned and keeps returning that error.
#[derive(Debug)]
pub struct NarParser {
    limits: NarLimits,
    /// Bytes consumed so far.
    offset: u64,
    lex: Lex,
    expect: Expect,
    len_buf: [u8; 8],
    /// Body of the string being read or just read.
    buf: Vec<u8>,
    /// Offset of the length field of the string being read.
    string_start: u64,
    /// Last entry name of each open directory (empty before its first entry); slots beyond
    /// `depth` are kept to reuse their allocations.
    last_names: Vec<Vec<u8>>,
    /// Number of open directories.
    depth: usize,
    /// Name of the current entry.
    name: Vec<u8>,
    /// Whether the node being parsed is a directory entry rather than the root.
    named: bool,
    executable: bool,
    /// Declared size of the current file.
    size: u64,
    failed: Option<NarError>,
}

impl Default for NarParser {
    fn default() -> Self {
        NarParser::new()
    }
}

impl NarParser {
    /// A parser with the default [`NarLimits`].
    pub fn new() -> Self {
        NarParser::with_limits(NarLimits::default())
    }

    /// A parser enforcing `limits`.
    pub fn with_limits(limits: NarLimits) -> Self {
        NarParser {
            limits,
            offset: 0,
            lex: Lex::Len { have: 0 },
            expect: Expect::Magic,
            len_buf: [0; 8],
            buf: Vec::new(),
            string_start: 0,
            last_names: Vec::new(),
            depth: 0,
            name: Vec::new(),
            named: false,
            executable: false,
            size: 0,
            failed: None,
        }
    }

    /// Bytes consumed so far: the size of the archive once it is complete.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Whether a whole archive has been consumed.
    pub fn is_complete(&self) -> bool {
        self.lex == Lex::End && self.failed.is_none()
    }

    /// Checks that the input ended exactly at the end of the archive.
    pub fn finish(&self) -> Result<(), NarError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        if self.is_complete() {
            return Ok(());
        }
        let expected = match self.lex {
            Lex::Padding { .. } => "zero padding",
            _ => self.expect.describe(),
        };
        Err(NarError {
            offset: self.offset,
            kind: NarErrorKind::Truncated { expected },
        })
    }

    /// Consumes input until the next event or the end of `input`.
    ///
    /// Returns the number of bytes consumed and the event reached, if any. While it returns an
    /// event, call it again with the unconsumed rest (possibly empty: some events need no input);
    /// once it returns `None` all of `input` has been consumed. Bytes after the end of the archive
    /// are an error ([`NarErrorKind::TrailingData`]), not left unconsumed.
    pub fn advance<'a>(&'a mut self, input: &'a [u8]) -> Result<Step<'a>, NarError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        match self.run(input) {
            Ok((consumed, pending)) => {
                let event = pending.map(|p| self.event(p, input));
                Ok(Step { consumed, event })
            }
            Err(kind_at) => {
                let err = NarError {
                    offset: kind_at.0,
                    kind: kind_at.1,
                };
                self.failed = Some(err.clone());
                Err(err)
            }
        }
    }

    fn event<'a>(&'a self, pending: Pending, input: &'a [u8]) -> NarEvent<'a> {
        let name = self.named.then_some(self.name.as_slice());
        match pending {
            Pending::DirectoryStart => NarEvent::DirectoryStart { name },
            Pending::DirectoryEnd => NarEvent::DirectoryEnd,
            Pending::FileStart => NarEvent::FileStart {
                name,
                executable: self.executable,
                size: self.size,
            },
            Pending::Data { start, end } => NarEvent::FileData(&input[start..end]),
            Pending::FileEnd => NarEvent::FileEnd,
            Pending::Symlink => NarEvent::Symlink {
                name,
                target: &self.buf,
            },
        }
    }

    /// The state machine. Returns bytes consumed and the event reached, or the error with its
    /// offset.
    fn run(&mut self, input: &[u8]) -> Result<(usize, Option<Pending>), (u64, NarErrorKind)> {
        let mut pos = 0;
        loop {
            // Transitions that need no input come first, so that an event never waits for bytes
            // that belong to what follows it.
            let event = match self.lex {
                Lex::End if pos < input.len() => {
                    return Err((self.offset, NarErrorKind::TrailingData));
                }
                Lex::End => return Ok((pos, None)),
                Lex::Body { remaining: 0 } => {
                    self.lex = Lex::Padding {
                        remaining: padding(self.buf.len() as u64),
                        after_contents: false,
                    };
                    None
                }
                Lex::Contents { remaining: 0 } => {
                    self.lex = Lex::Padding {
                        remaining: padding(self.size),
                        after_contents: true,
                    };
                    None
                }
                Lex::Padding {
                    remaining: 0,
                    after_contents: true,
                } => {
                    self.expect = Expect::NodeClose;
                    self.next_string();
                    Some(Pending::FileEnd)
                }
                Lex::Padding {
                    remaining: 0,
                    after_contents: false,
                } => {
                    let event = self.end_string()?;
                    if self.expect != Expect::End {
                        self.next_string();
                    }
                    event
                }
                _ if pos == input.len() => return Ok((pos, None)),
                Lex::Len { have } => {
                    let n = (8 - have).min(input.len() - pos);
                    self.len_buf[have..have + n].copy_from_slice(&input[pos..pos + n]);
                    pos += n;
                    self.offset += n as u64;
                    if have + n < 8 {
                        self.lex = Lex::Len { have: have + n };
                        None
                    } else {
                        self.begin_string(u64::from_le_bytes(self.len_buf))?
                    }
                }
                Lex::Body { remaining } => {
                    let n = remaining.min(input.len() - pos);
                    self.buf.extend_from_slice(&input[pos..pos + n]);
                    pos += n;
                    self.offset += n as u64;
                    self.lex = Lex::Body {
                        remaining: remaining - n,
                    };
                    None
                }
                Lex::Contents { remaining } => {
                    let n = remaining.min((input.len() - pos) as u64) as usize;
                    let start = pos;
                    pos += n;
                    self.offset += n as u64;
                    self.lex = Lex::Contents {
                        remaining: remaining - n as u64,
                    };
                    Some(Pending::Data { start, end: pos })
                }
                Lex::Padding {
                    remaining,
                    after_contents,
                } => {
                    let n = remaining.min(input.len() - pos);
                    if let Some(i) = input[pos..pos + n].iter().position(|&b| b != 0) {
                        let byte = input[pos + i];
                        return Err((
                            self.offset + i as u64,
                            NarErrorKind::NonZeroPadding { byte },
                        ));
                    }
                    pos += n;
                    self.offset += n as u64;
                    self.lex = Lex::Padding {
                        remaining: remaining - n,
                        after_contents,
                    };
                    None
                }
            };
            if event.is_some() {
                return Ok((pos, event));
            }
        }
    }

    /// Prepares to read the length field of the next string.
    fn next_string(&mut self) {
        self.lex = Lex::Len { have: 0 };
        self.string_start = self.offset;
    }

    fn error(&self, kind: NarErrorKind) -> (u64, NarErrorKind) {
        (self.string_start, kind)
    }

    /// Acts on a length field: starts streaming contents, or checks the length of a string
    /// against what may come here before reading any of its bytes.
    fn begin_string(&mut self, len: u64) -> Result<Option<Pending>, (u64, NarErrorKind)> {
        if self.expect == Expect::Contents {
            self.size = len;
            self.lex = Lex::Contents { remaining: len };
            return Ok(Some(Pending::FileStart));
        }
        let max = match self.expect {
            Expect::Magic => MAGIC.len() as u64,
            Expect::NameValue => self.limits.max_name_len as u64,
            Expect::TargetValue => self.limits.max_target_len as u64,
            _ => MAX_KEYWORD_LEN,
        };
        if len > max {
            let kind = match self.expect {
                Expect::Magic => NarErrorKind::BadMagic,
                Expect::NameValue => NarErrorKind::NameTooLong {
                    len,
                    max: self.limits.max_name_len,
                },
                Expect::TargetValue => NarErrorKind::TargetTooLong {
                    len,
                    max: self.limits.max_target_len,
                },
                other => NarErrorKind::OversizedToken {
                    expected: other.describe(),
                    len,
                },
            };
            return Err(self.error(kind));
        }
        self.buf.clear();
        // `len <= max`, and every maximum is a `usize`.
        self.lex = Lex::Body {
            remaining: len as usize,
        };
        Ok(None)
    }

    /// Requires the string just read to be `keyword`.
    fn keyword(&self, keyword: &[u8]) -> Result<(), (u64, NarErrorKind)> {
        if self.buf == keyword {
            Ok(())
        } else {
            Err(self.unexpected())
        }
    }

    fn unexpected(&self) -> (u64, NarErrorKind) {
        self.error(NarErrorKind::UnexpectedToken {
            expected: self.expect.describe(),
            found: ByteString(self.buf.clone()),
        })
    }

    /// Acts on a complete string (body and padding read).
    fn end_string(&mut self) -> Result<Option<Pending>, (u64, NarErrorKind)> {
        let mut event = None;
        self.expect = match self.expect {
            Expect::Magic => {
                if self.buf != MAGIC {
                    return Err(self.error(NarErrorKind::BadMagic));
                }
                Expect::NodeOpen
            }
            Expect::NodeOpen => self.keyword(b"(").map(|()| Expect::TypeKeyword)?,
            Expect::TypeKeyword => self.keyword(b"type").map(|()| Expect::TypeValue)?,
            Expect::TypeValue => match self.buf.as_slice() {
                b"regular" => {
                    self.executable = false;
                    Expect::RegularField
                }
                b"symlink" => Expect::TargetKeyword,
                b"directory" => {
                    if self.depth >= self.limits.max_depth {
                        return Err(self.error(NarErrorKind::TooDeep {
                            max: self.limits.max_depth,
                        }));
                    }
                    if self.last_names.len() == self.depth {
                        self.last_names.push(Vec::new());
                    }
                    self.last_names[self.depth].clear();
                    self.depth += 1;
                    event = Some(Pending::DirectoryStart);
                    Expect::DirectoryItem
                }
                _ => {
                    let found = ByteString(self.buf.clone());
                    return Err(self.error(NarErrorKind::UnknownNodeType { found }));
                }
            },
            Expect::RegularField => match self.buf.as_slice() {
                b"executable" => Expect::ExecutableValue,
                b"contents" => Expect::Contents,
                _ => return Err(self.unexpected()),
            },
            Expect::ExecutableValue => {
                self.keyword(b"")?;
                self.executable = true;
                Expect::ContentsKeyword
            }
            Expect::ContentsKeyword => self.keyword(b"contents").map(|()| Expect::Contents)?,
            Expect::TargetKeyword => self.keyword(b"target").map(|()| Expect::TargetValue)?,
            Expect::TargetValue => {
                let problem = if self.buf.is_empty() {
                    Some(TargetProblem::Empty)
                } else if self.buf.contains(&0) {
                    Some(TargetProblem::Nul)
                } else {
                    None
                };
                if let Some(problem) = problem {
                    return Err(self.error(NarErrorKind::InvalidTarget { problem }));
                }
                event = Some(Pending::Symlink);
                Expect::NodeClose
            }
            Expect::NodeClose => {
                self.keyword(b")")?;
                self.end_node()
            }
            Expect::DirectoryItem => match self.buf.as_slice() {
                b"entry" => Expect::EntryOpen,
                b")" => {
                    self.depth -= 1;
                    event = Some(Pending::DirectoryEnd);
                    self.end_node()
                }
                _ => return Err(self.unexpected()),
            },
            Expect::EntryOpen => self.keyword(b"(").map(|()| Expect::NameKeyword)?,
            Expect::NameKeyword => self.keyword(b"name").map(|()| Expect::NameValue)?,
            Expect::NameValue => {
                self.check_name()?;
                let last = &mut self.last_names[self.depth - 1];
                last.clear();
                last.extend_from_slice(&self.buf);
                self.name.clear();
                self.name.extend_from_slice(&self.buf);
                Expect::NodeKeyword
            }
            Expect::NodeKeyword => {
                self.keyword(b"node")?;
                self.named = true;
                Expect::NodeOpen
            }
            Expect::EntryClose => self.keyword(b")").map(|()| Expect::DirectoryItem)?,
            Expect::Contents | Expect::End => {
                unreachable!("no string is read in {:?}", self.expect)
            }
        };
        Ok(event)
    }

    /// Checks the entry name in `buf`: a single path component, sorting after the previous entry.
    fn check_name(&self) -> Result<(), (u64, NarErrorKind)> {
        let name = self.buf.as_slice();
        let problem = match name {
            b"" => Some(NameProblem::Empty),
            b"." => Some(NameProblem::Dot),
            b".." => Some(NameProblem::DotDot),
            _ if name.contains(&b'/') => Some(NameProblem::Slash),
            _ if name.contains(&0) => Some(NameProblem::Nul),
            _ => None,
        };
        if let Some(problem) = problem {
            let name = ByteString(name.to_vec());
            return Err(self.error(NarErrorKind::InvalidName { name, problem }));
        }
        // Names are never empty, so an empty previous name means this is the first entry.
        let previous = &self.last_names[self.depth - 1];
        if previous.is_empty() || name > previous.as_slice() {
            return Ok(());
        }
        let kind = if name == previous.as_slice() {
            NarErrorKind::DuplicateEntry {
                name: ByteString(name.to_vec()),
            }
        } else {
            NarErrorKind::UnsortedEntry {
                previous: ByteString(previous.clone()),
                name: ByteString(name.to_vec()),
            }
        };
        Err(self.error(kind))
    }

    /// A node has been closed: what comes next is its entry's `)` or the end of the archive.
    fn end_node(&mut self) -> Expect {
        if self.depth == 0 {
            self.lex = Lex::End;
            Expect::End
        } else {
            Expect::EntryClose
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes NAR strings; `Contents` is written as a string too, which is what it is.
    fn nar(strings: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for s in strings {
            out.extend_from_slice(&(s.len() as u64).to_le_bytes());
            out.extend_from_slice(s);
            out.resize(out.len().next_multiple_of(8), 0);
        }
        out
    }

    /// A directory with an executable file, an empty file, a symlink and a nested empty directory.
    #[rustfmt::skip]
    fn tree() -> Vec<u8> {
        nar(&[
            b"nix-archive-1", b"(", b"type", b"directory",
            b"entry", b"(", b"name", b"a", b"node",
            b"(", b"type", b"regular", b"executable", b"", b"contents", b"#!/bin/sh\n", b")", b")",
            b"entry", b"(", b"name", b"b", b"node",
            b"(", b"type", b"regular", b"contents", b"", b")", b")",
            b"entry", b"(", b"name", b"c", b"node",
            b"(", b"type", b"directory", b")", b")",
            b"entry", b"(", b"name", b"d", b"node",
            b"(", b"type", b"symlink", b"target", b"/nix/store/x", b")", b")",
            b")",
        ])
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Owned {
        DirStart(Option<Vec<u8>>),
        DirEnd,
        FileStart(Option<Vec<u8>>, bool, u64),
        Data(Vec<u8>),
        FileEnd,
        Symlink(Option<Vec<u8>>, Vec<u8>),
    }

    /// Parses `input` split into pieces of `piece` bytes; file data is merged per file.
    fn events(input: &[u8], piece: usize) -> Result<Vec<Owned>, NarError> {
        let mut parser = NarParser::new();
        let mut out = Vec::new();
        for chunk in input.chunks(piece) {
            let mut pos = 0;
            loop {
                let step = parser.advance(&chunk[pos..])?;
                pos += step.consumed;
                let Some(event) = step.event else { break };
                let owned = match event {
                    NarEvent::DirectoryStart { name } => Owned::DirStart(name.map(<[u8]>::to_vec)),
                    NarEvent::DirectoryEnd => Owned::DirEnd,
                    NarEvent::FileStart {
                        name,
                        executable,
                        size,
                    } => Owned::FileStart(name.map(<[u8]>::to_vec), executable, size),
                    NarEvent::FileData(d) => {
                        if let Some(Owned::Data(prev)) = out.last_mut() {
                            prev.extend_from_slice(d);
                            continue;
                        }
                        Owned::Data(d.to_vec())
                    }
                    NarEvent::FileEnd => Owned::FileEnd,
                    NarEvent::Symlink { name, target } => {
                        Owned::Symlink(name.map(<[u8]>::to_vec), target.to_vec())
                    }
                };
                out.push(owned);
            }
            assert_eq!(
                pos,
                chunk.len(),
                "advance returned no event before consuming its input"
            );
        }
        parser.finish()?;
        Ok(out)
    }

    fn name(s: &str) -> Option<Vec<u8>> {
        Some(s.as_bytes().to_vec())
    }

    #[test]
    fn emits_events_in_archive_order() {
        assert_eq!(
            events(&tree(), 4096).unwrap(),
            vec![
                Owned::DirStart(None),
                Owned::FileStart(name("a"), true, 10),
                Owned::Data(b"#!/bin/sh\n".to_vec()),
                Owned::FileEnd,
                Owned::FileStart(name("b"), false, 0),
                Owned::FileEnd,
                Owned::DirStart(name("c")),
                Owned::DirEnd,
                Owned::Symlink(name("d"), b"/nix/store/x".to_vec()),
                Owned::DirEnd,
            ]
        );
    }

    #[test]
    fn events_do_not_depend_on_how_the_input_is_split() {
        let whole = events(&tree(), usize::MAX).unwrap();
        for piece in 1..64 {
            assert_eq!(
                events(&tree(), piece).unwrap(),
                whole,
                "pieces of {piece} bytes"
            );
        }
    }

    #[test]
    fn root_nodes_have_no_name() {
        let file = nar(&[
            b"nix-archive-1",
            b"(",
            b"type",
            b"regular",
            b"contents",
            b"x",
            b")",
        ]);
        assert_eq!(
            events(&file, 1).unwrap(),
            vec![
                Owned::FileStart(None, false, 1),
                Owned::Data(b"x".to_vec()),
                Owned::FileEnd
            ]
        );
        let link = nar(&[
            b"nix-archive-1",
            b"(",
            b"type",
            b"symlink",
            b"target",
            b"t",
            b")",
        ]);
        assert_eq!(
            events(&link, 5).unwrap(),
            vec![Owned::Symlink(None, b"t".to_vec())]
        );
    }

    #[test]
    fn offset_counts_the_whole_archive() {
        let input = tree();
        let mut parser = NarParser::new();
        let mut pos = 0;
        while parser.advance(&input[pos..]).map(|s| {
            pos += s.consumed;
            s.event.is_some()
        }) == Ok(true)
        {}
        assert!(parser.is_complete());
        assert_eq!(parser.offset(), input.len() as u64);
    }

    #[test]
    fn errors_point_at_the_offending_bytes() {
        // Non-zero padding after "type": the string starts at 40, its padding at 52.
        let mut input = nar(&[b"nix-archive-1", b"(", b"type", b"regular"]);
        input[53] = 7;
        let err = events(&input, 3).unwrap_err();
        assert_eq!(
            err,
            NarError {
                offset: 53,
                kind: NarErrorKind::NonZeroPadding { byte: 7 }
            }
        );

        // A bad keyword is reported at its length field.
        let input = nar(&[b"nix-archive-1", b"(", b"tpye"]);
        let err = events(&input, 1).unwrap_err();
        assert_eq!(err.offset, 40);
        assert_eq!(
            err.kind,
            NarErrorKind::UnexpectedToken {
                expected: "\"type\"",
                found: ByteString(b"tpye".to_vec())
            }
        );
    }

    /// Feeds `input` to `parser` until it fails.
    fn first_error(mut parser: NarParser, input: &[u8]) -> NarError {
        let mut pos = 0;
        loop {
            match parser.advance(&input[pos..]) {
                Ok(step) if step.event.is_none() => panic!("no error in {input:?}"),
                Ok(step) => pos += step.consumed,
                Err(err) => return err,
            }
        }
    }

    #[test]
    fn limits_are_configurable() {
        let limits = NarLimits {
            max_name_len: 1,
            max_target_len: 1,
            max_depth: 1,
        };
        let long_name = nar(&[
            b"nix-archive-1",
            b"(",
            b"type",
            b"directory",
            b"entry",
            b"(",
            b"name",
            b"ab",
        ]);
        assert_eq!(
            first_error(NarParser::with_limits(limits), &long_name).kind,
            NarErrorKind::NameTooLong { len: 2, max: 1 }
        );
        assert!(
            events(&long_name, 1).is_err_and(|e| matches!(e.kind, NarErrorKind::Truncated { .. }))
        );
        let long_target = nar(&[
            b"nix-archive-1",
            b"(",
            b"type",
            b"symlink",
            b"target",
            b"ab",
        ]);
        assert_eq!(
            first_error(NarParser::with_limits(limits), &long_target).kind,
            NarErrorKind::TargetTooLong { len: 2, max: 1 }
        );
        let nested = nar(&[
            b"nix-archive-1",
            b"(",
            b"type",
            b"directory",
            b"entry",
            b"(",
            b"name",
            b"a",
            b"node",
            b"(",
            b"type",
            b"directory",
        ]);
        assert_eq!(
            first_error(NarParser::with_limits(limits), &nested),
            NarError {
                offset: 192,
                kind: NarErrorKind::TooDeep { max: 1 }
            }
        );
    }

    #[test]
    fn error_messages_name_the_problem_and_the_offset() {
        let err = NarError {
            offset: 96,
            kind: NarErrorKind::InvalidName {
                name: ByteString(b"..".to_vec()),
                problem: NameProblem::DotDot,
            },
        };
        assert_eq!(
            err.to_string(),
            "invalid NAR at byte 96: invalid entry name \"..\": it is \"..\""
        );
        let err = NarError {
            offset: 8,
            kind: NarErrorKind::NonZeroPadding { byte: 0xff },
        };
        assert_eq!(
            err.to_string(),
            "invalid NAR at byte 8: padding byte is 0xff, not zero"
        );
    }
}
