//! NAR parser: never panics, gives the same verdict whole and in chunks, and an archive it accepts
//! unpacks into a fresh directory with the same hash.
#![no_main]

use kiln_nix::nar::{NarValidator, unpack, validate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = validate(data).map_err(|e| e.to_string());

    // The first byte picks a chunk size, so the parser's resumption points are fuzzed too.
    let chunk = data.first().map_or(1, |b| *b as usize % 13 + 1);
    let mut validator = NarValidator::new();
    let mut chunked = Ok(());
    for piece in data.chunks(chunk) {
        if let Err(e) = validator.update(piece) {
            chunked = Err(e.to_string());
            break;
        }
    }
    let chunked = chunked.and_then(|()| validator.finish().map_err(|e| e.to_string()));
    assert_eq!(whole, chunked, "whole and chunked verdicts differ");

    if let Ok((hash, size)) = whole {
        let dir = tempfile::tempdir().expect("temp dir");
        let target = dir.path().join("out");
        let (unpacked_hash, unpacked_size) = unpack(data, &target).expect("valid NAR unpacks");
        assert_eq!((unpacked_hash, unpacked_size), (hash, size));
    }
});
