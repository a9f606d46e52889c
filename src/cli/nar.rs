//! `kiln nar`: pack, unpack and hash NAR archives, byte-exact with Nix.

use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use kiln_nix::nar;

#[derive(Debug, Subcommand)]
pub enum NarCommand {
    /// Write the NAR of PATH to standard output (like `nix-store --dump`).
    Pack {
        /// File, directory or symlink to archive; a symlink is archived as a symlink.
        path: PathBuf,
    },
    /// Unpack a NAR read from standard input to DIR (like `nix-store --restore`).
    ///
    /// DIR must not exist yet; its parent must. The archive is checked as it is read: an invalid
    /// archive stops the unpack with an error, leaving what was unpacked so far in DIR.
    Unpack {
        /// Path to create; the archive's root becomes this path.
        dir: PathBuf,
    },
    /// Print the SHA-256 of the NAR of PATH as `sha256:<nix32>` (the NarHash Nix records).
    Hash {
        /// File, directory or symlink to hash.
        path: PathBuf,
    },
}

pub fn run(cmd: NarCommand) -> anyhow::Result<()> {
    match cmd {
        NarCommand::Pack { path } => {
            let stdout = io::stdout().lock();
            nar::dump_path(&path, stdout)?;
        }
        NarCommand::Unpack { dir } => {
            nar::unpack(io::stdin().lock(), &dir)?;
        }
        NarCommand::Hash { path } => {
            let (hash, _size) = nar::hash_path(&path)?;
            writeln!(io::stdout(), "{hash}").context("cannot write to standard output")?;
        }
    }
    Ok(())
}
