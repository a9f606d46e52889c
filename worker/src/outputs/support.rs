//! Hydra's `nix-support` conventions in a built output: `failed`, `hydra-build-products` and
//! `hydra-metrics`.
//!
//! Everything here reads files a builder wrote, so nothing is trusted: symlinks are never
//! followed (a product path must name a member of an output's own tree, as Hydra checks against
//! the output's NAR listing), files are read with a size cap, and lines that do not parse are
//! skipped with a warning rather than failing the step.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use kiln_nix::StorePath;
use kiln_proto::{BuildMetric, BuildProduct};
use sha2::{Digest, Sha256};

/// Largest `nix-support` file read; larger ones are ignored.
pub const MAX_SUPPORT_FILE: u64 = 4 * 1024 * 1024;

/// One built output: its logical store path and where its files are in the worker's store.
#[derive(Debug, Clone)]
pub struct BuiltOutput {
    /// The output name (`out`, `dev`, ...).
    pub name: String,
    /// The store path.
    pub path: StorePath,
    /// The output's location on disk (under the chroot store).
    pub real: PathBuf,
}

/// A product line as written: `type subtype path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductLine {
    /// Product type.
    pub kind: String,
    /// Product subtype.
    pub subtype: String,
    /// The path, unquoted.
    pub path: String,
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Splits a leading word of `[A-Za-z0-9_-]` followed by whitespace off `s`.
fn word(s: &str) -> Option<(&str, &str)> {
    let end = s.find(|c: char| !is_word_char(c)).unwrap_or(s.len());
    let rest = &s[end..];
    if end == 0 || !rest.starts_with(char::is_whitespace) {
        return None;
    }
    Some((&s[..end], rest.trim_start()))
}

/// Parses one line of `hydra-build-products`: a type and a subtype of `[A-Za-z0-9_-]`, a path
/// (in double quotes if it holds spaces; unquoted it may not hold `"`, `<` or `>`), and an
/// optional default path, which is ignored.
pub fn parse_product_line(line: &str) -> Option<ProductLine> {
    let (kind, rest) = word(line.trim())?;
    let (subtype, rest) = word(rest)?;
    let (path, rest) = if let Some(quoted) = rest.strip_prefix('"') {
        let end = quoted.find('"')?;
        (&quoted[..end], &quoted[end + 1..])
    } else {
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        (&rest[..end], &rest[end..])
    };
    if path.is_empty() || (!rest.is_empty() && !rest.starts_with(char::is_whitespace)) {
        return None;
    }
    let extra: Vec<&str> = rest.split_whitespace().collect();
    let default_ok = match extra.as_slice() {
        [] => true,
        [default] => !default.contains(['"', '<', '>']),
        _ => false,
    };
    if !default_ok || path.contains(['<', '>']) {
        return None;
    }
    Some(ProductLine {
        kind: kind.to_owned(),
        subtype: subtype.to_owned(),
        path: path.to_owned(),
    })
}

/// Parses one line of `hydra-metrics`: `name value [unit]`, with a name of
/// `[A-Za-z0-9._-]` and a finite number.
pub fn parse_metric_line(line: &str) -> Option<BuildMetric> {
    let tokens: Vec<&str> = line.split_whitespace().collect();
    let (name, value, unit) = match tokens.as_slice() {
        [name, value] => (name, value, None),
        [name, value, unit] => (name, value, Some(unit.to_string())),
        _ => return None,
    };
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return None;
    }
    let value: f64 = value.parse().ok().filter(|v: &f64| v.is_finite())?;
    Some(BuildMetric {
        name: name.to_string(),
        value,
        unit,
    })
}

/// The lexically normalised components of an absolute path (`.` and empty components dropped,
/// `..` removing the previous one), or `None` if it is relative or climbs above `/`.
fn components(path: &str) -> Option<Vec<&str>> {
    let rest = path.strip_prefix('/')?;
    let mut out = Vec::new();
    for part in rest.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            name => out.push(name),
        }
    }
    Some(out)
}

/// What `nix-support` of a step's outputs says.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SupportFacts {
    /// Whether an output holds `nix-support/failed`.
    pub failed: bool,
    /// Build products, with size and SHA-256 for regular files.
    pub products: Vec<BuildProduct>,
    /// Metrics.
    pub metrics: Vec<BuildMetric>,
}

/// Reads `nix-support` of every output. Blocking: file reads and hashing.
pub fn read_support(outputs: &[BuiltOutput]) -> SupportFacts {
    let mut facts = SupportFacts::default();
    let mut explicit_products = false;
    for output in outputs {
        let support = output.real.join("nix-support");
        if !fs::symlink_metadata(&support).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        if fs::symlink_metadata(support.join("failed")).is_ok() {
            facts.failed = true;
        }
        if let Some(text) = read_capped(&support.join("hydra-build-products")) {
            explicit_products = true;
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                match parse_product_line(line).and_then(|p| resolve_product(p, outputs)) {
                    Some(product) => facts.products.push(product),
                    None => {
                        tracing::warn!(output = %output.path, line, "skipping a build product line that does not name a file of an output")
                    }
                }
            }
        }
        if let Some(text) = read_capped(&support.join("hydra-metrics")) {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                match parse_metric_line(line) {
                    Some(metric) => facts.metrics.push(metric),
                    None => {
                        tracing::warn!(output = %output.path, line, "skipping a malformed metric line")
                    }
                }
            }
        }
    }
    if !explicit_products {
        // Hydra's rule: without declared products, every output that is a directory is a
        // product of type `nix-build` (subtype: the output name, empty for `out`).
        for output in outputs {
            if fs::symlink_metadata(&output.real).is_ok_and(|m| m.is_dir()) {
                facts.products.push(BuildProduct {
                    kind: "nix-build".to_owned(),
                    subtype: if output.name == "out" {
                        String::new()
                    } else {
                        output.name.clone()
                    },
                    path: output.path.to_absolute(),
                    name: output.path.name().to_owned(),
                    file_size: None,
                    sha256: None,
                });
            }
        }
    }
    facts
}

/// Reads a regular file (not through a symlink) of at most [`MAX_SUPPORT_FILE`] bytes as text.
fn read_capped(path: &Path) -> Option<String> {
    let mut file = open_no_follow(path).ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() {
        return None;
    }
    if meta.len() > MAX_SUPPORT_FILE {
        tracing::warn!(path = %path.display(), size = meta.len(), "ignoring an oversized nix-support file");
        return None;
    }
    let mut bytes = Vec::new();
    file.by_ref()
        .take(MAX_SUPPORT_FILE)
        .read_to_end(&mut bytes)
        .ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

fn open_no_follow(path: &Path) -> io::Result<File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(path)
}

/// Finds the output `line.path` lies in and describes the file there, or `None` if it names
/// nothing inside an output's own tree.
fn resolve_product(line: ProductLine, outputs: &[BuiltOutput]) -> Option<BuildProduct> {
    let parts = components(&line.path)?;
    let ["nix", "store", base, inner @ ..] = parts.as_slice() else {
        return None;
    };
    let output = outputs.iter().find(|o| o.path.to_string() == *base)?;
    let mut real = output.real.clone();
    for (i, part) in inner.iter().enumerate() {
        let meta = fs::symlink_metadata(&real).ok()?;
        if !meta.is_dir() {
            return None;
        }
        real.push(part);
        if i + 1 == inner.len() {
            fs::symlink_metadata(&real).ok()?;
        }
    }
    let path = format!("/{}", parts.join("/"));
    let name = if inner.is_empty() {
        String::new()
    } else {
        inner.last().map(|s| s.to_string()).unwrap_or_default()
    };
    let (file_size, sha256) = match fs::symlink_metadata(&real) {
        Ok(meta) if meta.is_file() => match hash_file(&real) {
            Ok((size, hash)) => (Some(size), Some(hash)),
            Err(err) => {
                tracing::warn!(path = %real.display(), %err, "cannot hash a build product");
                (None, None)
            }
        },
        _ => (None, None),
    };
    Some(BuildProduct {
        kind: line.kind,
        subtype: line.subtype,
        path,
        name,
        file_size,
        sha256,
    })
}

/// Size and lowercase hex SHA-256 of a regular file, read without following symlinks.
fn hash_file(path: &Path) -> io::Result<(u64, String)> {
    let mut file = open_no_follow(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(hasher.finalize())))
}

#[cfg(test)]
mod tests;
