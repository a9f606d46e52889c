//! `kiln key`: binary-cache signing keys in Nix's format.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use kiln_nix::signing::{PublicKey, SecretKey};

/// The `kiln key` tools.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Generate a signing key pair, as `nix-store --generate-binary-cache-key` does.
    ///
    /// Prints the public key, ready for `trusted-public-keys`.
    Generate {
        /// Key name carried by every signature, conventionally `<cache host>-<n>`.
        name: String,
        /// Where to write the secret key (created with mode 0600).
        #[arg(long)]
        secret_file: PathBuf,
        /// Where to write the public key.
        #[arg(long)]
        public_file: PathBuf,
        /// Replace existing key files instead of refusing.
        #[arg(long)]
        force: bool,
    },
    /// Print the public key belonging to a secret key file.
    Public {
        /// The secret key file.
        #[arg(long)]
        secret_file: PathBuf,
    },
}

/// Runs one `kiln key` tool.
pub fn run(cmd: KeyCommand) -> anyhow::Result<()> {
    match cmd {
        KeyCommand::Generate {
            name,
            secret_file,
            public_file,
            force,
        } => generate(&name, &secret_file, &public_file, force),
        KeyCommand::Public { secret_file } => {
            let key = read_secret_key(&secret_file)?;
            println!("{}", key.public());
            Ok(())
        }
    }
}

fn generate(name: &str, secret_file: &Path, public_file: &Path, force: bool) -> anyhow::Result<()> {
    if secret_file == public_file {
        bail!(
            "--secret-file and --public-file are both {}",
            secret_file.display()
        );
    }
    let key = SecretKey::generate(name).context("cannot generate a key")?;
    if !force {
        for path in [secret_file, public_file] {
            if path.symlink_metadata().is_ok() {
                bail!(
                    "refusing to overwrite {} (pass --force to replace it)",
                    path.display()
                );
            }
        }
    }
    // Written without a trailing newline, byte for byte as Nix writes key files.
    write_new(secret_file, key.to_secret_string().as_bytes(), 0o600, force)
        .with_context(|| format!("cannot write secret key file {}", secret_file.display()))?;
    if let Err(err) = write_new(
        public_file,
        key.public().to_string().as_bytes(),
        0o644,
        force,
    ) {
        // Leave no secret behind whose public half nobody has.
        let _ = fs::remove_file(secret_file);
        return Err(err)
            .with_context(|| format!("cannot write public key file {}", public_file.display()));
    }
    println!("{}", key.public());
    Ok(())
}

/// Creates `path` with `mode`; with `replace`, an existing file is removed first so that the new
/// one never inherits looser permissions.
fn write_new(path: &Path, contents: &[u8], mode: u32, replace: bool) -> io::Result<()> {
    if replace {
        match fs::remove_file(path) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
            _ => {}
        }
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

fn read_secret_key(path: &Path) -> anyhow::Result<SecretKey> {
    // Key files are about 100 bytes; the limit keeps a wrong path such as a device from hanging us.
    const LIMIT: u64 = 4096;
    let mut text = String::new();
    fs::File::open(path)
        .and_then(|file| file.take(LIMIT + 1).read_to_string(&mut text))
        .with_context(|| format!("cannot read secret key file {}", path.display()))?;
    if text.len() as u64 > LIMIT {
        bail!(
            "{} is larger than {LIMIT} bytes: not a secret key file",
            path.display()
        );
    }
    if text.parse::<PublicKey>().is_ok() {
        bail!("{} holds a public key, not a secret key", path.display());
    }
    text.parse()
        .with_context(|| format!("invalid secret key file {}", path.display()))
}
