//! Command-line definition: one subcommand per mode or operator tool.

mod drv;
mod key;
mod nar;

use clap::{Parser, Subcommand};

/// Kiln: a continuous build farm for Nix.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work with NAR archives.
    #[command(subcommand)]
    Nar(nar::NarCommand),
    /// Work with derivation (.drv) files.
    #[command(subcommand)]
    Drv(drv::DrvCommand),
    /// Manage binary-cache signing keys.
    #[command(subcommand)]
    Key(key::KeyCommand),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Nar(cmd) => nar::run(cmd),
        Command::Drv(cmd) => drv::run(cmd),
        Command::Key(cmd) => key::run(cmd),
    }
}
