//! `kiln nar`: placeholder until implemented.

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum NarCommand {}

pub fn run(cmd: NarCommand) -> anyhow::Result<()> {
    match cmd {}
}
