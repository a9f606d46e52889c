//! `kiln drv`: placeholder until implemented.

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum DrvCommand {}

pub fn run(cmd: DrvCommand) -> anyhow::Result<()> {
    match cmd {}
}
