//! The `nix-cache-info` file at the root of a binary cache.
//!
//! Lines are `Key: value`: `StoreDir` (the store the cache's paths belong to), `WantMassQuery`
//! (`1` if clients may query many paths at once) and `Priority` (lower is preferred). Nix 2.8
//! writes only `StoreDir: /nix/store` when it creates a cache, ignores unknown keys and trims
//! values; Kiln does the same but refuses lines that are not `Key: value`, repeated keys and values
//! Nix would misread (`WantMassQuery: yes` is false to Nix, an error here).

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::store_path::StoreDir;

/// Largest `nix-cache-info` Kiln parses, in bytes; real ones are under 100.
pub const MAX_CACHE_INFO_LEN: usize = 64 * 1024;

/// The contents of `nix-cache-info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheInfo {
    /// `StoreDir`: clients whose store is elsewhere refuse the cache.
    pub store_dir: StoreDir,
    /// `WantMassQuery`: whether clients may ask for many narinfos up front; absent means the
    /// store's `want-mass-query` setting (false unless configured, in Nix 2.8).
    pub want_mass_query: Option<bool>,
    /// `Priority`: lower numbers are tried first (cache.nixos.org uses 40); absent means the
    /// store's `priority` setting (0 unless configured, in Nix 2.8).
    pub priority: Option<i32>,
}

/// Why a `nix-cache-info` was refused. Line numbers count from 1.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CacheInfoError {
    /// The input is larger than [`MAX_CACHE_INFO_LEN`].
    #[error("nix-cache-info is {len} bytes, more than the {MAX_CACHE_INFO_LEN} allowed")]
    TooLarge {
        /// Size of the input in bytes.
        len: usize,
    },
    /// A line is not `Key: value`.
    #[error("nix-cache-info line {line} is not of the form `Key: value`")]
    NotKeyValue {
        /// The line.
        line: usize,
    },
    /// A key appears twice.
    #[error("nix-cache-info line {line}: duplicate {key}")]
    Duplicate {
        /// The line of the repetition.
        line: usize,
        /// The repeated key.
        key: &'static str,
    },
    /// A value is invalid.
    #[error("nix-cache-info line {line}: invalid {key} {value:?}: {reason}")]
    Field {
        /// The line.
        line: usize,
        /// The field.
        key: &'static str,
        /// The value (truncated).
        value: String,
        /// What it should be.
        reason: &'static str,
    },
    /// There is no `StoreDir` line.
    #[error("nix-cache-info has no StoreDir line")]
    MissingStoreDir,
}

impl CacheInfo {
    /// A cache for `/nix/store` that welcomes mass queries, with the given priority.
    pub fn new(priority: i32) -> CacheInfo {
        CacheInfo {
            store_dir: StoreDir::default(),
            want_mass_query: Some(true),
            priority: Some(priority),
        }
    }

    /// Parses the file's text.
    pub fn parse(text: &str) -> Result<CacheInfo, CacheInfoError> {
        if text.len() > MAX_CACHE_INFO_LEN {
            return Err(CacheInfoError::TooLarge { len: text.len() });
        }
        let mut store_dir = None;
        let mut want_mass_query = None;
        let mut priority = None;
        for (i, content) in text.lines().enumerate() {
            let line = i + 1;
            if content.trim().is_empty() {
                continue;
            }
            let (key, value) = content
                .split_once(':')
                .ok_or(CacheInfoError::NotKeyValue { line })?;
            let value = value.trim();
            let field = |key: &'static str, reason: &'static str| CacheInfoError::Field {
                line,
                key,
                value: value.chars().take(80).collect(),
                reason,
            };
            match key {
                "StoreDir" => {
                    if !value.starts_with('/') || value.chars().any(|c| c.is_control()) {
                        return Err(field("StoreDir", "expected an absolute path"));
                    }
                    set(&mut store_dir, StoreDir::new(value), line, "StoreDir")?;
                }
                "WantMassQuery" => {
                    let want = match value {
                        "1" => true,
                        "0" => false,
                        _ => return Err(field("WantMassQuery", "expected 0 or 1")),
                    };
                    set(&mut want_mass_query, want, line, "WantMassQuery")?;
                }
                "Priority" => {
                    let p = value
                        .parse()
                        .map_err(|_| field("Priority", "expected an integer"))?;
                    set(&mut priority, p, line, "Priority")?;
                }
                _ => {}
            }
        }
        Ok(CacheInfo {
            store_dir: store_dir.ok_or(CacheInfoError::MissingStoreDir)?,
            want_mass_query,
            priority,
        })
    }
}

fn set<T>(
    slot: &mut Option<T>,
    value: T,
    line: usize,
    key: &'static str,
) -> Result<(), CacheInfoError> {
    if slot.is_some() {
        return Err(CacheInfoError::Duplicate { line, key });
    }
    *slot = Some(value);
    Ok(())
}

impl FromStr for CacheInfo {
    type Err = CacheInfoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CacheInfo::parse(s)
    }
}

/// `StoreDir`, then `WantMassQuery` and `Priority` when set, one `Key: value` line each.
impl fmt::Display for CacheInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "StoreDir: {}", self.store_dir)?;
        if let Some(want) = self.want_mass_query {
            writeln!(f, "WantMassQuery: {}", u8::from(want))?;
        }
        if let Some(priority) = self.priority {
            writeln!(f, "Priority: {priority}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_the_fields_in_nix_order() {
        assert_eq!(
            CacheInfo::new(40).to_string(),
            "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n"
        );
    }

    #[test]
    fn reads_what_nix_writes_and_prints_it_back() {
        let nix = "StoreDir: /nix/store\n";
        let info = CacheInfo::parse(nix).unwrap();
        assert_eq!(info.want_mass_query, None);
        assert_eq!(info.priority, None);
        assert_eq!(info.to_string(), nix);
    }

    #[test]
    fn reads_cache_nixos_org_style_and_ignores_unknown_keys() {
        let info =
            CacheInfo::parse("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\nFuture: x\n")
                .unwrap();
        assert_eq!(info, CacheInfo::new(40));
    }

    #[test]
    fn refuses_malformed_files_naming_line_and_field() {
        let err = |s: &str| CacheInfo::parse(s).unwrap_err();
        assert_eq!(err("WantMassQuery: 1\n"), CacheInfoError::MissingStoreDir);
        assert_eq!(
            err("StoreDir: /nix/store\ngarbage\n"),
            CacheInfoError::NotKeyValue { line: 2 }
        );
        assert!(matches!(
            err("StoreDir: /nix/store\nWantMassQuery: yes\n"),
            CacheInfoError::Field {
                line: 2,
                key: "WantMassQuery",
                ..
            }
        ));
        assert!(matches!(
            err("StoreDir: /nix/store\nPriority: 4x\n"),
            CacheInfoError::Field {
                line: 2,
                key: "Priority",
                ..
            }
        ));
        assert!(matches!(
            err("StoreDir: nix/store\n"),
            CacheInfoError::Field {
                key: "StoreDir",
                ..
            }
        ));
        assert_eq!(
            err("StoreDir: /nix/store\nStoreDir: /nix/store\n"),
            CacheInfoError::Duplicate {
                line: 2,
                key: "StoreDir"
            }
        );
        assert!(matches!(
            err(&"StoreDir: /nix/store\n".repeat(5000)),
            CacheInfoError::TooLarge { .. }
        ));
    }
}
