//! narinfo parser: never panics, and whatever it accepts prints back to text that parses to the same
//! value and prints identically.
#![no_main]

use kiln_nix::narinfo::NarInfo;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = NarInfo::parse_bytes(data) {
        let printed = info.to_string();
        let reparsed = NarInfo::parse(&printed).expect("printed narinfo parses");
        assert_eq!(reparsed, info, "print then parse changed the value");
        assert_eq!(reparsed.to_string(), printed);
        let _ = info.fingerprint();
    }
});
