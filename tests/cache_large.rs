//! A path larger than 200 MiB through `nix copy --to` and `kiln cache push`, and back into
//! fresh stores, with the server's memory staying far below the path's size: uploads and
//! downloads are streamed.

mod harness;

use std::fs;
use std::path::Path;

use harness::{Kiln, NixStore, write_netrc};

/// Size of the pseudo-random seed the large path repeats. Larger than the windows zstd and xz
/// use at Nix's default levels (8 MiB at most), so the data does not compress: the HTTP bodies
/// are as large as the path.
const SEED_LEN: usize = 16 << 20;
/// Copies of the seed in the large path: 13 × 16 MiB = 208 MiB.
const COPIES: usize = 13;

/// `len` bytes of xorshift64* output from a fixed seed: the same bytes on every run.
fn seeded_bytes(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A small leaf and a large path referring to it, built in the sandbox from `seed`.
fn large_expr(seed: &Path) -> String {
    let copies = (0..COPIES).map(|_| "x").collect::<Vec<_>>().join(" ");
    format!(
        "let\n  leaf = derivation {{ name = \"large-leaf\"; system = builtins.currentSystem; \
         builder = \"/bin/sh\"; args = [ \"-c\" \"echo leaf > $out\" ]; }};\n\
         in derivation {{ name = \"large\"; system = builtins.currentSystem; builder = \"/bin/sh\"; \
         args = [ \"-c\" \"/bin/busybox mkdir $out; for i in {copies}; do /bin/busybox cat ${{{seed}}} >> $out/data; done; echo ${{leaf}} > $out/ref\" ]; }}\n",
        seed = seed.display()
    )
}

#[test]
fn a_path_over_200_mib_round_trips_both_ways_while_the_server_stays_small() {
    let kiln = Kiln::start();
    let work = tempfile::tempdir().unwrap();
    let seed = work.path().join("seed.bin");
    fs::write(&seed, seeded_bytes(SEED_LEN)).unwrap();
    let src = NixStore::new(work.path(), "src");
    let top = src.build(&large_expr(&seed));
    fs::remove_file(&seed).unwrap();
    let closure = src.closure(&top);
    assert_eq!(closure.len(), 2, "the large path and its reference");
    let data = src.real_path(&top[0]).join("data");
    let size = fs::metadata(&data).unwrap().len();
    assert!(size >= 200 << 20, "the large path has only {size} bytes");

    let netrc = write_netrc(work.path(), "netrc", &kiln.token("main", "push"));
    let url = format!("{}?compression=zstd", kiln.substituter);
    let out = src.copy_to(&url, &top, Some(&netrc));
    assert!(
        out.status.success(),
        "nix copy --to failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let fresh = NixStore::new(work.path(), "fresh");
    let out = fresh.substitute(&kiln.substituter, &kiln.public_key, &top, None);
    assert!(
        out.status.success(),
        "substitution failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for path in &closure {
        assert_eq!(
            kiln_nix::nar::hash_path(&fresh.real_path(path)).unwrap(),
            kiln_nix::nar::hash_path(&src.real_path(path)).unwrap(),
            "{path} differs after the round trip"
        );
    }

    // The same through Kiln's upload API, which compresses on the server.
    let key = kiln.create_cache("pushed", false);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "cache", "push", "pushed", &top[0], "--url", &kiln.base, "--store",
        ])
        .arg(&src.root)
        .env("KILN_TOKEN", kiln.token("pushed", "push"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kiln cache push failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fresh = NixStore::new(work.path(), "fresh-pushed");
    let out = fresh.substitute(&kiln.cache_url("pushed"), &key, &top, None);
    assert!(
        out.status.success(),
        "substitution of the pushed closure failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        kiln_nix::nar::hash_path(&fresh.real_path(&top[0])).unwrap(),
        kiln_nix::nar::hash_path(&src.real_path(&top[0])).unwrap(),
    );

    // Streaming is what keeps this small: a server that held the body, the NAR or the file
    // in memory would have needed at least the path's size. (Measured: 54 MiB, of which about
    // 22 MiB is the idle server.)
    let peak = kiln.peak_memory();
    eprintln!(
        "kiln up peak resident memory: {} MiB for a {} MiB path",
        peak >> 20,
        size >> 20
    );
    assert!(
        peak < size / 2,
        "kiln up reached {} MiB of resident memory for a {} MiB path",
        peak >> 20,
        size >> 20
    );
}
