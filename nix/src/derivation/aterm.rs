//! The ATerm text of `.drv` files: a strict parser and a printer byte-identical with Nix 2.8.
//!
//! The grammar Nix writes is
//! `Derive([outputs],[inputDrvs],[inputSrcs],"system","builder",[args],[env])` with outputs
//! `("name","path","hashAlgo","hash")`, input derivations `("path",["output",...])` and
//! environment pairs `("key","value")`. It has a fixed depth, so the parser needs no recursion,
//! and it allocates no more than the input holds.

use std::collections::{BTreeMap, BTreeSet};

use thiserror::Error;

use super::{DRV_EXTENSION, Derivation, DerivationOutput, FixedOutputHash, KindError};
use crate::hash::{Hash, HashAlgo};
use crate::store_path::{self, FileIngestionMethod, StoreDir, StorePath, StorePathError};

/// Longest excerpt of the input quoted in an error message, in bytes.
const EXCERPT_LEN: usize = 80;

/// Why a `.drv` file was refused, and the byte offset where the problem starts.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid derivation at byte {offset}: {kind}")]
pub struct ParseError {
    /// Offset in the input of the token that is wrong (for whole-derivation problems, the start
    /// of the outputs list).
    pub offset: usize,
    /// What is wrong.
    pub kind: ParseErrorKind,
}

/// What is wrong with a `.drv` file.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParseErrorKind {
    /// A token other than the one the grammar requires.
    #[error("expected {expected}, found {found}")]
    Expected {
        /// What the grammar requires here.
        expected: String,
        /// What the input holds instead (an excerpt, or "end of input").
        found: String,
    },
    /// A string runs to the end of the input.
    #[error("string is not terminated")]
    UnterminatedString,
    /// A backslash escape Nix never writes (Nix writes only `\"`, `\\`, `\n`, `\r`, `\t`).
    #[error("unsupported escape sequence {0} (Nix writes only \\\" \\\\ \\n \\r \\t)")]
    BadEscape(String),
    /// A backslash in a field Nix writes without escaping: the file cannot mean what was written.
    #[error("backslash in {0}, a field Nix writes without escaping")]
    BackslashInVerbatimField(&'static str),
    /// A store path field is not a valid path in the store.
    #[error("{field}: invalid store path {path:?}: {source}")]
    BadStorePath {
        /// Which field holds the path.
        field: &'static str,
        /// The path as written (an excerpt).
        path: String,
        /// Why it is invalid.
        source: StorePathError,
    },
    /// An input derivation path does not name a `.drv` file.
    #[error("input derivation {0:?} is not a .drv path")]
    InputNotDerivation(String),
    /// An output name is empty or has characters a store path name cannot have.
    #[error("invalid output name {0:?}")]
    BadOutputName(String),
    /// Keys or set members out of order or repeated.
    #[error("{what} {key:?} is out of order or repeated (Nix writes them sorted and unique)")]
    Unsorted {
        /// Which list.
        what: &'static str,
        /// The offending entry (an excerpt).
        key: String,
    },
    /// An output's path, hash algorithm and hash do not form a valid output.
    #[error("output {output:?}: {reason}")]
    BadOutput {
        /// The output's name.
        output: String,
        /// What is inconsistent.
        reason: String,
    },
    /// The outputs form no derivation kind Nix accepts.
    #[error("{0}")]
    Kind(KindError),
    /// Bytes follow the closing `)`.
    #[error("unexpected data after the end of the derivation: {0}")]
    TrailingData(String),
    /// The name given for the derivation cannot name a `.drv` file.
    #[error("invalid derivation name: {0}")]
    BadName(StorePathError),
    /// The path given for the file does not end in `.drv`.
    #[error("{0} is not a .drv path")]
    NotDrvPath(String),
}

/// A short, printable rendering of input bytes for error messages.
fn excerpt(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(EXCERPT_LEN)];
    let mut text = String::from_utf8_lossy(cut).into_owned();
    if bytes.len() > EXCERPT_LEN {
        text.push_str("...");
    }
    text
}

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
    store_dir: &'a StoreDir,
}

type Result<T> = std::result::Result<T, ParseError>;

impl<'a> Parser<'a> {
    fn error(&self, offset: usize, kind: ParseErrorKind) -> ParseError {
        ParseError { offset, kind }
    }

    fn found_here(&self) -> String {
        match self.input.get(self.pos..) {
            Some(rest) if !rest.is_empty() => format!("{:?}", excerpt(&rest[..rest.len().min(16)])),
            _ => "end of input".to_owned(),
        }
    }

    fn expect(&mut self, token: &'static str) -> Result<()> {
        if self.input[self.pos..].starts_with(token.as_bytes()) {
            self.pos += token.len();
            Ok(())
        } else {
            let found = self.found_here();
            let expected = format!("`{token}`");
            Err(self.error(self.pos, ParseErrorKind::Expected { expected, found }))
        }
    }

    /// Parses a list `[item,item,...]`, calling `item` for each element.
    fn list(&mut self, mut item: impl FnMut(&mut Self) -> Result<()>) -> Result<()> {
        self.expect("[")?;
        if self.input.get(self.pos) == Some(&b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            item(self)?;
            match self.input.get(self.pos) {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => {
                    let found = self.found_here();
                    return Err(self.error(
                        self.pos,
                        ParseErrorKind::Expected {
                            expected: "`,` or `]`".to_owned(),
                            found,
                        },
                    ));
                }
            }
        }
    }

    /// A string Nix writes without escaping: the bytes up to the next quote; a backslash is
    /// refused. Returns the bytes and the offset of the opening quote.
    fn verbatim(&mut self, field: &'static str) -> Result<(&'a [u8], usize)> {
        let start = self.pos;
        self.expect("\"")?;
        let rest = &self.input[self.pos..];
        match rest.iter().position(|&b| b == b'"' || b == b'\\') {
            Some(end) if rest[end] == b'"' => {
                self.pos += end + 1;
                Ok((&rest[..end], start))
            }
            Some(end) => Err(self.error(
                self.pos + end,
                ParseErrorKind::BackslashInVerbatimField(field),
            )),
            None => Err(self.error(start, ParseErrorKind::UnterminatedString)),
        }
    }

    /// A string Nix writes with escapes, unescaped.
    fn escaped(&mut self) -> Result<Vec<u8>> {
        let start = self.pos;
        self.expect("\"")?;
        let mut out = Vec::new();
        loop {
            let rest = &self.input[self.pos..];
            let Some(end) = rest.iter().position(|&b| b == b'"' || b == b'\\') else {
                return Err(self.error(start, ParseErrorKind::UnterminatedString));
            };
            out.extend_from_slice(&rest[..end]);
            self.pos += end + 1;
            if rest[end] == b'"' {
                return Ok(out);
            }
            let unescaped = match self.input.get(self.pos) {
                Some(b'n') => b'\n',
                Some(b'r') => b'\r',
                Some(b't') => b'\t',
                Some(&c @ (b'"' | b'\\')) => c,
                Some(_) => {
                    let window = &self.input[self.pos..self.input.len().min(self.pos + 4)];
                    let len = window
                        .utf8_chunks()
                        .next()
                        .and_then(|chunk| chunk.valid().chars().next())
                        .map_or(1, char::len_utf8);
                    let seq = format!("\\{}", excerpt(&self.input[self.pos..self.pos + len]));
                    return Err(self.error(self.pos - 1, ParseErrorKind::BadEscape(seq)));
                }
                None => return Err(self.error(start, ParseErrorKind::UnterminatedString)),
            };
            out.push(unescaped);
            self.pos += 1;
        }
    }

    /// A verbatim string that must be a store path.
    fn store_path(&mut self, field: &'static str) -> Result<(StorePath, &'a [u8], usize)> {
        let (raw, offset) = self.verbatim(field)?;
        let path = self.to_store_path(field, raw, offset)?;
        Ok((path, raw, offset))
    }

    fn to_store_path(&self, field: &'static str, raw: &[u8], offset: usize) -> Result<StorePath> {
        let text = std::str::from_utf8(raw).map_err(|_| {
            self.error(
                offset,
                ParseErrorKind::BadStorePath {
                    field,
                    path: excerpt(raw),
                    source: StorePathError::NotInStore {
                        path: excerpt(raw),
                        store_dir: self.store_dir.to_string(),
                    },
                },
            )
        })?;
        self.store_dir.parse_path(text).map_err(|source| {
            self.error(
                offset,
                ParseErrorKind::BadStorePath {
                    field,
                    path: excerpt(raw),
                    source,
                },
            )
        })
    }

    /// A verbatim string that must be an output name.
    fn output_name(&mut self) -> Result<(String, usize)> {
        let (raw, offset) = self.verbatim("an output name")?;
        let name = std::str::from_utf8(raw)
            .ok()
            .filter(|name| store_path::validate_name(name, name).is_ok())
            .ok_or_else(|| self.error(offset, ParseErrorKind::BadOutputName(excerpt(raw))))?;
        Ok((name.to_owned(), offset))
    }

    fn output(&mut self) -> Result<(String, DerivationOutput, usize)> {
        self.expect("(")?;
        let (name, offset) = self.output_name()?;
        self.expect(",")?;
        let (path, path_offset) = self.verbatim("an output path")?;
        self.expect(",")?;
        let (algo, algo_offset) = self.verbatim("an output hash algorithm")?;
        self.expect(",")?;
        let (hash, hash_offset) = self.verbatim("an output hash")?;
        self.expect(")")?;
        let bad = |offset: usize, reason: String| ParseError {
            offset,
            kind: ParseErrorKind::BadOutput {
                output: name.clone(),
                reason,
            },
        };

        let output = if algo.is_empty() {
            if !hash.is_empty() {
                return Err(bad(
                    hash_offset,
                    "has a hash but no hash algorithm".to_owned(),
                ));
            }
            if path.is_empty() {
                DerivationOutput::Deferred
            } else {
                DerivationOutput::InputAddressed(self.to_store_path(
                    "an output path",
                    path,
                    path_offset,
                )?)
            }
        } else {
            let (method, algo_name) = match algo.strip_prefix(b"r:") {
                Some(rest) => (FileIngestionMethod::Recursive, rest),
                None => (FileIngestionMethod::Flat, algo),
            };
            let algo: HashAlgo = std::str::from_utf8(algo_name)
                .ok()
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| {
                    bad(
                        algo_offset,
                        format!("unknown hash algorithm {:?}", excerpt(algo)),
                    )
                })?;
            if hash.is_empty() {
                if !path.is_empty() {
                    return Err(bad(path_offset, "floating output has a path".to_owned()));
                }
                DerivationOutput::Floating { method, algo }
            } else {
                let is_hex = hash.len() == algo.size() * 2
                    && hash.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
                let digest = is_hex
                    .then(|| hex::decode(hash).ok())
                    .flatten()
                    .ok_or_else(|| {
                        bad(
                            hash_offset,
                            format!(
                                "hash {:?} is not {} lower-case hex digits of {algo}",
                                excerpt(hash),
                                algo.size() * 2
                            ),
                        )
                    })?;
                let hash = Hash::new(algo, &digest).expect("length checked");
                if path.is_empty() {
                    return Err(bad(path_offset, "fixed output has no path".to_owned()));
                }
                let path = self.to_store_path("an output path", path, path_offset)?;
                DerivationOutput::Fixed {
                    path,
                    hash: FixedOutputHash { method, hash },
                }
            }
        };
        Ok((name, output, offset))
    }

    fn derivation(&mut self, name: &str) -> Result<Derivation> {
        self.expect("Derive(")?;
        let outputs_offset = self.pos;

        let mut outputs = BTreeMap::new();
        self.list(|p| {
            let (name, output, offset) = p.output()?;
            sorted_after(
                p,
                offset,
                "output",
                outputs.last_key_value().map(|(k, _)| k),
                &name,
            )?;
            outputs.insert(name, output);
            Ok(())
        })?;

        self.expect(",")?;
        let mut input_drvs = BTreeMap::new();
        let mut last_drv: Option<&[u8]> = None;
        self.list(|p| {
            p.expect("(")?;
            let (path, raw, offset) = p.store_path("an input derivation")?;
            sorted_after_bytes(p, offset, "input derivation", last_drv, raw)?;
            last_drv = Some(raw);
            if !path.is_derivation() {
                return Err(p.error(offset, ParseErrorKind::InputNotDerivation(excerpt(raw))));
            }
            p.expect(",")?;
            let mut names = BTreeSet::new();
            p.list(|p| {
                let (name, offset) = p.output_name()?;
                sorted_after(p, offset, "input derivation output", names.last(), &name)?;
                names.insert(name);
                Ok(())
            })?;
            p.expect(")")?;
            input_drvs.insert(path, names);
            Ok(())
        })?;

        self.expect(",")?;
        let mut input_srcs = BTreeSet::new();
        let mut last_src: Option<&[u8]> = None;
        self.list(|p| {
            let (path, raw, offset) = p.store_path("an input source")?;
            sorted_after_bytes(p, offset, "input source", last_src, raw)?;
            last_src = Some(raw);
            input_srcs.insert(path);
            Ok(())
        })?;

        self.expect(",")?;
        let system = self.verbatim("system")?.0.to_vec();
        self.expect(",")?;
        let builder = self.escaped()?;

        self.expect(",")?;
        let mut args = Vec::new();
        self.list(|p| {
            args.push(p.escaped()?);
            Ok(())
        })?;

        self.expect(",")?;
        let mut env: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        self.list(|p| {
            p.expect("(")?;
            let offset = p.pos;
            let key = p.escaped()?;
            if env.last_key_value().is_some_and(|(last, _)| *last >= key) {
                return Err(p.error(
                    offset,
                    ParseErrorKind::Unsorted {
                        what: "environment variable",
                        key: excerpt(&key),
                    },
                ));
            }
            p.expect(",")?;
            let value = p.escaped()?;
            p.expect(")")?;
            env.insert(key, value);
            Ok(())
        })?;
        self.expect(")")?;

        if self.pos != self.input.len() {
            let rest = excerpt(&self.input[self.pos..]);
            return Err(self.error(self.pos, ParseErrorKind::TrailingData(format!("{rest:?}"))));
        }

        let drv = Derivation {
            name: name.to_owned(),
            outputs,
            input_drvs,
            input_srcs,
            system,
            builder,
            args,
            env,
        };
        drv.kind()
            .map_err(|e| self.error(outputs_offset, ParseErrorKind::Kind(e)))?;
        Ok(drv)
    }
}

fn sorted_after(
    p: &Parser<'_>,
    offset: usize,
    what: &'static str,
    last: Option<&String>,
    key: &str,
) -> Result<()> {
    sorted_after_bytes(p, offset, what, last.map(|s| s.as_bytes()), key.as_bytes())
}

fn sorted_after_bytes(
    p: &Parser<'_>,
    offset: usize,
    what: &'static str,
    last: Option<&[u8]>,
    key: &[u8],
) -> Result<()> {
    if last.is_some_and(|last| last >= key) {
        return Err(p.error(
            offset,
            ParseErrorKind::Unsorted {
                what,
                key: excerpt(key),
            },
        ));
    }
    Ok(())
}

/// Parses a `.drv` file's contents; see [`Derivation::parse`].
pub(super) fn parse(store_dir: &StoreDir, name: &str, input: &[u8]) -> Result<Derivation> {
    let drv_name = format!("{name}{DRV_EXTENSION}");
    store_path::validate_name(&drv_name, &drv_name).map_err(|e| ParseError {
        offset: 0,
        kind: ParseErrorKind::BadName(e),
    })?;
    Parser {
        input,
        pos: 0,
        store_dir,
    }
    .derivation(name)
}

/// Appends `s` quoted, escaping as Nix's `printString` does.
fn print_escaped(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    let mut run = 0;
    for (i, &b) in s.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            _ => continue,
        };
        out.extend_from_slice(&s[run..i]);
        out.extend_from_slice(escape);
        run = i + 1;
    }
    out.extend_from_slice(&s[run..]);
    out.push(b'"');
}

/// Appends `s` quoted without escaping, as Nix's `printUnquotedString` does.
fn print_verbatim(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    out.extend_from_slice(s);
    out.push(b'"');
}

fn print_verbatim_list<'s>(out: &mut Vec<u8>, items: impl IntoIterator<Item = &'s [u8]>) {
    out.push(b'[');
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        print_verbatim(out, item);
    }
    out.push(b']');
}

/// Writes the ATerm form as Nix's `Derivation::unparse` does. `mask_outputs` blanks output paths
/// and the environment variables named after outputs; `actual_inputs` replaces the input
/// derivations (keyed by any string: `hashDerivationModulo` puts hashes there).
pub(super) fn print(
    out: &mut Vec<u8>,
    drv: &Derivation,
    store_dir: &StoreDir,
    mask_outputs: bool,
    actual_inputs: Option<&BTreeMap<String, BTreeSet<String>>>,
) {
    out.extend_from_slice(b"Derive([");
    for (i, (name, output)) in drv.outputs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'(');
        print_verbatim(out, name.as_bytes());
        out.push(b',');
        let path = match output.path() {
            Some(path) if !mask_outputs => store_dir.display(path),
            _ => String::new(),
        };
        print_verbatim(out, path.as_bytes());
        out.push(b',');
        print_verbatim(out, output.hash_algo_field().as_bytes());
        out.push(b',');
        let hash = match output {
            DerivationOutput::Fixed { hash, .. } => hash.hash.to_base16(),
            _ => String::new(),
        };
        print_verbatim(out, hash.as_bytes());
        out.push(b')');
    }

    out.extend_from_slice(b"],[");
    let mut print_input = |i: usize, key: &[u8], names: &BTreeSet<String>| {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'(');
        print_verbatim(out, key);
        out.push(b',');
        print_verbatim_list(out, names.iter().map(|n| n.as_bytes()));
        out.push(b')');
    };
    match actual_inputs {
        Some(inputs) => {
            for (i, (key, names)) in inputs.iter().enumerate() {
                print_input(i, key.as_bytes(), names);
            }
        }
        None => {
            for (i, (path, names)) in drv.input_drvs.iter().enumerate() {
                print_input(i, store_dir.display(path).as_bytes(), names);
            }
        }
    }

    out.extend_from_slice(b"],");
    let srcs: Vec<String> = drv
        .input_srcs
        .iter()
        .map(|p| store_dir.display(p))
        .collect();
    print_verbatim_list(out, srcs.iter().map(|s| s.as_bytes()));
    out.push(b',');
    print_verbatim(out, &drv.system);
    out.push(b',');
    print_escaped(out, &drv.builder);

    out.extend_from_slice(b",[");
    for (i, arg) in drv.args.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        print_escaped(out, arg);
    }

    out.extend_from_slice(b"],[");
    for (i, (key, value)) in drv.env.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'(');
        print_escaped(out, key);
        out.push(b',');
        let masked =
            mask_outputs && std::str::from_utf8(key).is_ok_and(|k| drv.outputs.contains_key(k));
        print_escaped(out, if masked { b"" } else { value });
        out.push(b')');
    }
    out.extend_from_slice(b"])");
}
