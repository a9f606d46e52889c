//! Derivations as JSON, in the shape and formatting of `nix show-derivation` (Nix 2.8).
//!
//! Nix 2.8 writes this JSON with its own writer, not a JSON library: two-space indentation, `": "`
//! after keys, `[]`/`{}` for empty containers, `\"`, `\\`, `\n`, `\r`, `\t` and `\u00xx` for the
//! other bytes below 0x20, and every other byte unchanged (so a non-UTF-8 byte in the derivation is
//! copied into the output). [`show_derivation_json`] reproduces that byte for byte.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use thiserror::Error;

use super::{Derivation, DerivationOutput};
use crate::store_path::{StoreDir, StorePath};

/// A derivation field that is not valid UTF-8, so it has no faithful `serde_json` value.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("derivation field {field} is not valid UTF-8")]
pub struct NotUtf8Error {
    /// The field: `system`, `builder`, `args[i]`, `env key ...` or `env.<key>`.
    pub field: String,
}

/// Appends `s` as a JSON string the way Nix 2.8's `toJSON` does.
fn write_string(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let mut run = 0;
    for (i, &b) in s.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..0x20 => b"",
            _ => continue,
        };
        out.extend_from_slice(&s[run..i]);
        if short.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(short);
        }
        run = i + 1;
    }
    out.extend_from_slice(&s[run..]);
    out.push(b'"');
}

/// Nix's indenting JSON writer: containers, keys and elements with its exact whitespace.
struct Writer<'o> {
    out: &'o mut Vec<u8>,
    /// For each open container, whether nothing has been written in it yet.
    first: Vec<bool>,
}

impl Writer<'_> {
    fn newline(&mut self) {
        self.out.push(b'\n');
        self.out.resize(self.out.len() + self.first.len() * 2, b' ');
    }

    fn open(&mut self, bracket: u8) {
        self.out.push(bracket);
        self.first.push(true);
    }

    fn close(&mut self, bracket: u8) {
        let empty = self.first.pop().expect("close matches open");
        if !empty {
            self.newline();
        }
        self.out.push(bracket);
    }

    fn item(&mut self) {
        let first = self.first.last_mut().expect("item inside a container");
        if !std::mem::replace(first, false) {
            self.out.push(b',');
        }
        self.newline();
    }

    fn key(&mut self, key: &[u8]) {
        self.item();
        write_string(self.out, key);
        self.out.extend_from_slice(b": ");
    }

    fn attr(&mut self, key: &[u8], value: &[u8]) {
        self.key(key);
        write_string(self.out, value);
    }

    fn elem(&mut self, value: &[u8]) {
        self.item();
        write_string(self.out, value);
    }
}

fn write_derivation(w: &mut Writer<'_>, store_dir: &StoreDir, drv: &Derivation) {
    w.key(b"outputs");
    w.open(b'{');
    for (name, output) in &drv.outputs {
        w.key(name.as_bytes());
        w.open(b'{');
        if let Some(path) = output.path() {
            w.attr(b"path", store_dir.display(path).as_bytes());
        }
        if let DerivationOutput::Fixed { hash, .. } = output {
            w.attr(b"hashAlgo", hash.method_algo().as_bytes());
            w.attr(b"hash", hash.hash.to_base16().as_bytes());
        } else if let DerivationOutput::Floating { .. } = output {
            w.attr(b"hashAlgo", output.hash_algo_field().as_bytes());
        }
        w.close(b'}');
    }
    w.close(b'}');

    w.key(b"inputSrcs");
    w.open(b'[');
    for src in &drv.input_srcs {
        w.elem(store_dir.display(src).as_bytes());
    }
    w.close(b']');

    w.key(b"inputDrvs");
    w.open(b'{');
    for (path, names) in &drv.input_drvs {
        w.key(store_dir.display(path).as_bytes());
        w.open(b'[');
        for name in names {
            w.elem(name.as_bytes());
        }
        w.close(b']');
    }
    w.close(b'}');

    w.attr(b"system", &drv.system);
    w.attr(b"builder", &drv.builder);

    w.key(b"args");
    w.open(b'[');
    for arg in &drv.args {
        w.elem(arg);
    }
    w.close(b']');

    w.key(b"env");
    w.open(b'{');
    for (key, value) in &drv.env {
        w.attr(key, value);
    }
    w.close(b'}');
}

/// The output of `nix show-derivation` for these derivations, keyed by `.drv` path (sorted and
/// unique, as Nix prints them), byte for byte, with the final newline.
pub fn show_derivation_json(
    store_dir: &StoreDir,
    drvs: &BTreeMap<StorePath, Derivation>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(drvs.len() * 2048);
    let mut w = Writer {
        out: &mut out,
        first: Vec::new(),
    };
    w.open(b'{');
    for (path, drv) in drvs {
        w.key(store_dir.display(path).as_bytes());
        w.open(b'{');
        write_derivation(&mut w, store_dir, drv);
        w.close(b'}');
    }
    w.close(b'}');
    out.push(b'\n');
    out
}

fn text(field: impl FnOnce() -> String, bytes: &[u8]) -> Result<Value, NotUtf8Error> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(Value::String(s.to_owned())),
        Err(_) => Err(NotUtf8Error { field: field() }),
    }
}

impl Derivation {
    /// The value `nix show-derivation` shows for this derivation (the object under its `.drv`
    /// path), with keys in Nix's order. Fails if a field is not UTF-8, which JSON strings cannot
    /// hold (Nix then writes invalid JSON; see [`show_derivation_json`]).
    pub fn to_json_value(&self, store_dir: &StoreDir) -> Result<Value, NotUtf8Error> {
        let mut outputs = Map::new();
        for (name, output) in &self.outputs {
            let mut obj = Map::new();
            if let Some(path) = output.path() {
                obj.insert("path".into(), Value::String(store_dir.display(path)));
            }
            if let DerivationOutput::Fixed { hash, .. } = output {
                obj.insert("hashAlgo".into(), Value::String(hash.method_algo()));
                obj.insert("hash".into(), Value::String(hash.hash.to_base16()));
            } else if let DerivationOutput::Floating { .. } = output {
                obj.insert("hashAlgo".into(), Value::String(output.hash_algo_field()));
            }
            outputs.insert(name.clone(), Value::Object(obj));
        }
        let input_srcs = self
            .input_srcs
            .iter()
            .map(|p| Value::String(store_dir.display(p)))
            .collect();
        let input_drvs = self
            .input_drvs
            .iter()
            .map(|(path, names)| {
                let names = names.iter().map(|n| Value::String(n.clone())).collect();
                (store_dir.display(path), Value::Array(names))
            })
            .collect();
        let args = self
            .args
            .iter()
            .enumerate()
            .map(|(i, arg)| text(|| format!("args[{i}]"), arg))
            .collect::<Result<_, _>>()?;
        let mut env = Map::new();
        for (key, value) in &self.env {
            let Ok(key) = std::str::from_utf8(key) else {
                return Err(NotUtf8Error {
                    field: format!("env key {:?}", String::from_utf8_lossy(key)),
                });
            };
            env.insert(key.to_owned(), text(|| format!("env.{key}"), value)?);
        }

        let mut obj = Map::new();
        obj.insert("outputs".into(), Value::Object(outputs));
        obj.insert("inputSrcs".into(), Value::Array(input_srcs));
        obj.insert("inputDrvs".into(), Value::Object(input_drvs));
        obj.insert("system".into(), text(|| "system".into(), &self.system)?);
        obj.insert("builder".into(), text(|| "builder".into(), &self.builder)?);
        obj.insert("args".into(), Value::Array(args));
        obj.insert("env".into(), Value::Object(env));
        Ok(Value::Object(obj))
    }
}
