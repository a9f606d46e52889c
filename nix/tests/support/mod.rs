//! Shared helpers for tests that compare kiln-nix with the real Nix on this machine.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// Options every Nix call in the tests gets: no network substituters, the sandbox on, and busybox
/// as the only thing builders see besides their inputs.
pub const NIX_OPTIONS: &[&str] = &[
    "--option",
    "substituters",
    "",
    "--option",
    "sandbox",
    "true",
    "--option",
    "sandbox-paths",
    "/bin/sh=/bin/busybox /bin/busybox",
    "--extra-experimental-features",
    "nix-command",
];

/// Runs a Nix program (`nix`, `nix-store`, `nix-instantiate`, ...) with [`NIX_OPTIONS`] placed
/// after `args_before_options` (subcommands such as `hash path` must come first for `nix`).
pub fn nix(program: &str, args_before_options: &[&str], args: &[&str]) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args_before_options);
    cmd.args(NIX_OPTIONS);
    cmd.args(args);
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// Like [`nix`] but panics with Nix's stderr unless it succeeds; returns stdout.
pub fn nix_ok(program: &str, args_before_options: &[&str], args: &[&str]) -> Vec<u8> {
    let out = nix(program, args_before_options, args);
    assert!(
        out.status.success(),
        "{program} {args_before_options:?} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Runs a plain command and returns stdout, panicking with stderr on failure.
pub fn run_ok(program: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The repository root (for `examples/`).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("nix/ has a parent")
}
