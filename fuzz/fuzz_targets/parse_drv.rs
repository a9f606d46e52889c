//! `.drv` parser: never panics, and whatever it accepts prints back to ATerm that parses to the
//! same derivation and prints identically; show-derivation JSON never panics either.
#![no_main]

use kiln_nix::StoreDir;
use kiln_nix::derivation::Derivation;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let store_dir = StoreDir::default();
    if let Ok(drv) = Derivation::parse(&store_dir, "fuzz", data) {
        let printed = drv.to_aterm(&store_dir);
        let reparsed = Derivation::parse(&store_dir, "fuzz", &printed).expect("printed drv parses");
        assert_eq!(reparsed, drv, "print then parse changed the derivation");
        assert_eq!(reparsed.to_aterm(&store_dir), printed);
        let _ = drv.to_json_value(&store_dir);
    }
});
