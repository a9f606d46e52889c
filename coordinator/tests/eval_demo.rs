//! The demo jobset of `examples/demo`, evaluated with real Nix into a chroot store.

mod eval_support;

use std::collections::BTreeMap;

use eval_support::*;

#[test]
fn demo_smoke() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = repo_root().join("examples/demo");
    let req = legacy(&demo, "release.nix", BTreeMap::new(), tmp.path());
    let start = std::time::Instant::now();
    let result = run(&req).unwrap();
    eprintln!("{:?}", start.elapsed());
    for j in &result.jobs {
        eprintln!(
            "{} {} {:?} {:?}",
            j.name, j.drv_path, j.constituents, j.meta
        );
    }
    eprintln!("{:?}", result.errors);
    eprintln!("{:?}", result.stats);
}
