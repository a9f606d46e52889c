//! `nix copy --to` with every compression Nix 2.8 writes by default or on request: the plain
//! command (xz), `none`, `bzip2` and multi-threaded xz. Each pushed closure must substitute into
//! a fresh store, and the cache must serve the NAR as it was sent.

mod harness;

use std::fs;

use harness::{Body, Kiln, NixStore, chain_expr, write_netrc};

fn hash_part(path: &str) -> &str {
    &path.trim_start_matches("/nix/store/")[..32]
}

/// The narinfo field `key` as `cache` serves it for `path`.
fn narinfo_field(kiln: &Kiln, cache: &str, path: &str, key: &str) -> String {
    let r = kiln.request(
        "GET",
        &format!("/cache/{cache}/{}.narinfo", hash_part(path)),
        &[],
        Body::Empty,
    );
    assert_eq!(r.status, 200, "narinfo of {path} in {cache}: {}", r.text());
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no {key} in {}", r.text()))
        .to_owned()
}

#[test]
fn plain_nix_copy_and_every_nix_compression_substitute_into_fresh_stores() {
    let kiln = Kiln::start();
    let work = tempfile::tempdir().unwrap();
    let src = NixStore::new(work.path(), "src");
    let top = src.build(&chain_expr("compressions", 3));
    let closure = src.closure(&top);
    assert_eq!(closure.len(), 3);

    // (cache, URL suffix, narinfo Compression, NAR file extension)
    let cases = [
        ("plain", "", "xz", ".nar.xz"),
        ("none", "?compression=none", "none", ".nar"),
        ("bzip", "?compression=bzip2", "bzip2", ".nar.bz2"),
        ("xzmt", "?parallel-compression=true", "xz", ".nar.xz"),
    ];
    for (cache, suffix, compression, extension) in cases {
        let key = kiln.create_cache(cache, false);
        let netrc = write_netrc(work.path(), cache, &kiln.token(cache, "push"));
        // Each push is a client of its own: Nix keeps what it uploaded in its disk cache.
        let pusher = src.another_client(cache);
        let url = format!("{}{suffix}", kiln.cache_url(cache));
        let out = pusher.copy_to(&url, &top, Some(&netrc));
        assert!(
            out.status.success(),
            "nix copy --to {url} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for path in &closure {
            assert_eq!(
                narinfo_field(&kiln, cache, path, "Compression"),
                compression
            );
            let nar_url = narinfo_field(&kiln, cache, path, "URL");
            assert!(nar_url.ends_with(extension), "{cache}: {nar_url}");
            let stored = kiln.data_dir().join("cache").join(cache).join(&nar_url);
            assert!(stored.is_file(), "{cache}: {} not stored", stored.display());
        }

        let fresh = NixStore::new(work.path(), &format!("fresh-{cache}"));
        let out = fresh.substitute(&kiln.cache_url(cache), &key, &top, None);
        assert!(
            out.status.success(),
            "substitution from {cache} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for path in &closure {
            assert_eq!(
                fs::read(fresh.real_path(path)).unwrap(),
                fs::read(src.real_path(path)).unwrap(),
                "{cache}: {path}"
            );
        }
    }
}
