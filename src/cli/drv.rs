//! `kiln drv`: read `.drv` files — show them as `nix show-derivation` does, check their paths.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use kiln_nix::derivation::{Derivation, DrvHasher, ResolveError, show_derivation_json};
use kiln_nix::{StoreDir, StorePath};

/// Largest `.drv` file read, in bytes: far above any real derivation, low enough that a hostile
/// file cannot exhaust memory.
const MAX_DRV_FILE_BYTES: u64 = 64 << 20;

/// The `kiln drv` subcommands.
#[derive(Debug, Subcommand)]
pub enum DrvCommand {
    /// Print derivations as JSON, exactly as `nix show-derivation` does.
    ///
    /// Each file is read from disk. Its `.drv` path is its file name when that is a store path
    /// base name (`<hash>-<name>.drv`), else the path computed from its contents.
    Show {
        /// The `.drv` files (store paths, or copies of them).
        #[arg(required = true, value_name = "FILE.drv")]
        files: Vec<PathBuf>,
        /// The store directory the derivations refer to.
        #[arg(long, default_value = "/nix/store")]
        store_dir: String,
    },
    /// Check that each derivation's `.drv` path and output paths are the ones Nix computes.
    ///
    /// Input derivations are read from the directory holding the file being checked (the store,
    /// for store paths). Prints one `ok <path>` line per file.
    Check {
        /// The `.drv` files, named by their store path base names.
        #[arg(required = true, value_name = "FILE.drv")]
        files: Vec<PathBuf>,
        /// The store directory the derivations refer to.
        #[arg(long, default_value = "/nix/store")]
        store_dir: String,
    },
}

/// Runs one `kiln drv` subcommand.
pub fn run(cmd: DrvCommand) -> anyhow::Result<()> {
    match cmd {
        DrvCommand::Show { files, store_dir } => show(&files, &StoreDir::new(store_dir)),
        DrvCommand::Check { files, store_dir } => check(&files, &StoreDir::new(store_dir)),
    }
}

fn show(files: &[PathBuf], store_dir: &StoreDir) -> anyhow::Result<()> {
    let mut drvs = BTreeMap::new();
    for file in files {
        let (path, drv) = read_drv(file, store_dir).with_context(|| file.display().to_string())?;
        drvs.insert(path, drv);
    }
    let json = show_derivation_json(store_dir, &drvs);
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&json)
        .and_then(|()| stdout.flush())
        .context("cannot write to standard output")
}

fn check(files: &[PathBuf], store_dir: &StoreDir) -> anyhow::Result<()> {
    for file in files {
        let dir = file.parent().unwrap_or(Path::new(".")).to_owned();
        let resolve_store_dir = store_dir.clone();
        let resolver = move |path: &StorePath| -> Result<Derivation, ResolveError> {
            let bytes = read_limited(&dir.join(path.to_string()))?;
            Ok(Derivation::parse_drv_file(
                &resolve_store_dir,
                path,
                &bytes,
            )?)
        };
        let mut hasher = DrvHasher::new(store_dir.clone(), resolver);
        let checked = (|| -> anyhow::Result<StorePath> {
            let path = drv_path_from_file_name(file)?;
            let drv = Derivation::parse_drv_file(store_dir, &path, &read_limited(file)?)?;
            hasher.check(&path, &drv)?;
            Ok(path)
        })()
        .with_context(|| file.display().to_string())?;
        println!("ok {}", store_dir.display(&checked));
    }
    Ok(())
}

/// Reads a file of at most [`MAX_DRV_FILE_BYTES`].
fn read_limited(file: &Path) -> anyhow::Result<Vec<u8>> {
    let read = || -> std::io::Result<Vec<u8>> {
        let f = File::open(file)?;
        // The size is only a capacity hint; the limit is enforced on what is actually read.
        let hint = f.metadata().map_or(0, |m| m.len().min(MAX_DRV_FILE_BYTES));
        let mut bytes = Vec::with_capacity(hint as usize + 1);
        f.take(MAX_DRV_FILE_BYTES + 1).read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    let bytes = read().context("cannot read the file")?;
    if bytes.len() as u64 > MAX_DRV_FILE_BYTES {
        bail!("file is larger than {MAX_DRV_FILE_BYTES} bytes, too large for a derivation");
    }
    Ok(bytes)
}

fn file_name(file: &Path) -> anyhow::Result<&str> {
    file.file_name()
        .and_then(|n| n.to_str())
        .with_context(|| "file name is not valid UTF-8 (a .drv path's name must be)".to_owned())
}

fn drv_path_from_file_name(file: &Path) -> anyhow::Result<StorePath> {
    let name = file_name(file)?;
    let path = StorePath::from_base_name(name)
        .with_context(|| format!("file name {name:?} is not a store path base name"))?;
    if !path.is_derivation() {
        bail!("file name {name:?} does not end in .drv");
    }
    Ok(path)
}

/// Reads and parses a `.drv` file, and finds the store path it is shown under.
fn read_drv(file: &Path, store_dir: &StoreDir) -> anyhow::Result<(StorePath, Derivation)> {
    let bytes = read_limited(file)?;
    if let Ok(path) = drv_path_from_file_name(file) {
        let drv = Derivation::parse_drv_file(store_dir, &path, &bytes)?;
        return Ok((path, drv));
    }
    let name = file_name(file)?;
    let Some(drv_name) = name.strip_suffix(".drv") else {
        bail!("file name {name:?} does not end in .drv");
    };
    let drv = Derivation::parse(store_dir, drv_name, &bytes)?;
    let path = drv
        .drv_path(store_dir)
        .context("cannot compute the .drv path")?;
    Ok((path, drv))
}
