//! The cache's key end-to-end behaviours on each storage backend, the local directory and an
//! S3 bucket on a real S3-compatible server (s3s-fs, started per test): `nix copy --to` then
//! substitution into a fresh store, the upload API (staging then rename), and hostile uploads
//! that must leave nothing visible, neither over HTTP nor among the stored objects.

mod harness;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use base64::Engine;
use harness::{Backend, Body, NixStore, Response, TestCache, chain_expr, write_netrc};
use kiln_nix::narinfo::NarInfo;
use kiln_nix::{Hash, StoreDir, StorePath};

/// Instantiates each scenario once per backend: `local::<name>` and `s3::<name>`.
macro_rules! on_each_backend {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(#[test] fn $name() { super::$name(super::Backend::Local) })*
        }
        mod s3 {
            $(#[test] fn $name() { super::$name(super::Backend::S3) })*
        }
    };
}

on_each_backend!(
    nix_copy_closure_substitutes_into_a_fresh_store_and_from_the_objects,
    upload_api_paths_substitute,
    hostile_uploads_leave_nothing_visible,
);

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn zstd_url(url: &str) -> String {
    format!("{url}?compression=zstd")
}

/// Every object file under `dir`, relative to it.
fn files(dir: &Path) -> BTreeSet<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) {
        for entry in fs::read_dir(dir).into_iter().flatten() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.insert(path.strip_prefix(root).unwrap().to_owned());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

fn nix_copy_closure_substitutes_into_a_fresh_store_and_from_the_objects(backend: Backend) {
    let cache = TestCache::start(backend, &[]);
    let work = tempfile::tempdir().unwrap();
    let src = NixStore::new(work.path(), "src");
    let top = src.build(&chain_expr(&format!("kiln-backend-{backend:?}"), 3));
    let closure = src.closure(&top);
    assert_eq!(closure.len(), 3);
    let netrc = write_netrc(work.path(), "netrc", &cache.token("main", "push"));
    ok(
        &src.copy_to(&zstd_url(&cache.substituter), &top, Some(&netrc)),
        "nix copy --to",
    );

    let fresh = NixStore::new(work.path(), "fresh");
    ok(
        &fresh.substitute(&cache.substituter, &cache.public_key, &top, None),
        "substitution",
    );
    for path in &closure {
        assert_eq!(
            fs::read(fresh.real_path(path)).unwrap(),
            fs::read(src.real_path(path)).unwrap(),
            "{path}"
        );
    }
    // The objects alone are a valid static binary cache.
    let static_url = format!("file://{}", cache.objects("main").display());
    let from_files = NixStore::new(work.path(), "from-files");
    ok(
        &from_files.substitute(&static_url, &cache.public_key, &top, None),
        "substitution from the stored objects",
    );
    for path in &closure {
        assert!(from_files.has(path), "{path}");
    }
}

fn upload_api_paths_substitute(backend: Backend) {
    let cache = TestCache::start(backend, &[]);
    let work = tempfile::tempdir().unwrap();
    let src = NixStore::new(work.path(), "src");
    let top = src.build(&chain_expr(&format!("kiln-backend-api-{backend:?}"), 2));
    let auth = format!("Bearer {}", cache.token("main", "push"));
    for path in src.closure(&top) {
        let mut nar = Vec::new();
        kiln_nix::nar::dump_path(&src.real_path(&path), &mut nar).unwrap();
        let out = std::process::Command::new("nix-store")
            .arg("--store")
            .arg(&src.root)
            .args(["-q", "--references", &path])
            .output()
            .unwrap();
        let refs = String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let r = cache.request(
            "POST",
            "/api/v1/caches/main/upload",
            &[
                ("Authorization", &auth),
                ("X-Kiln-Store-Path", &path),
                ("X-Kiln-References", &refs),
            ],
            Body::Chunked(&nar),
        );
        assert_eq!(r.status, 201, "{path}: {}", r.text());
    }
    // Staging objects were moved into place, none is left behind.
    let leftovers: Vec<PathBuf> = files(&cache.objects("main"))
        .into_iter()
        .filter(|f| f.starts_with("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let fresh = NixStore::new(work.path(), "fresh");
    ok(
        &fresh.substitute(&cache.substituter, &cache.public_key, &top, None),
        "substitution of uploaded paths",
    );
    assert!(fresh.has(&top[0]));
}

/// A NAR file prepared for upload.
struct NarFile {
    nar: Vec<u8>,
    compressed: Vec<u8>,
    url: String,
}

fn nar_of(content: &[u8]) -> NarFile {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    fs::write(&file, content).unwrap();
    let mut nar = Vec::new();
    kiln_nix::nar::dump_path(&file, &mut nar).unwrap();
    let compressed = zstd::encode_all(nar.as_slice(), 3).unwrap();
    NarFile {
        url: format!("nar/{}.nar.zst", Hash::sha256(&compressed).to_nix32()),
        nar,
        compressed,
    }
}

fn store_path(name: &str) -> StorePath {
    StoreDir::default().make_store_path("source", &Hash::sha256(name), name)
}

fn narinfo(path: &StorePath, nar: &NarFile, refs: &[&StorePath]) -> NarInfo {
    let mut info = NarInfo::new(
        path.clone(),
        nar.url.clone(),
        Hash::sha256(&nar.nar),
        nar.nar.len() as u64,
    );
    info.compression = "zstd".to_owned();
    info.file_hash = Some(Hash::sha256(&nar.compressed));
    info.file_size = Some(nar.compressed.len() as u64);
    info.references = refs.iter().map(|r| (*r).clone()).collect();
    info
}

fn hostile_uploads_leave_nothing_visible(backend: Backend) {
    let cache = TestCache::start(backend, &[("KILN_CACHE__MAX_NAR_SIZE", "65536")]);
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("nix:{}", cache.token("main", "push")))
    );
    let put = |key: &str, body: Body<'_>| -> Response {
        cache.request(
            "PUT",
            &format!("/cache/main/{key}"),
            &[("Authorization", &auth)],
            body,
        )
    };
    let get = |key: &str| cache.request("GET", &format!("/cache/main/{key}"), &[], Body::Empty);
    let refused = |r: &Response, status: u16, needle: &str| {
        assert_eq!(r.status, status, "{}", r.text());
        assert!(r.text().contains(needle), "{} lacks {needle:?}", r.text());
    };
    let objects = cache.objects("main");

    // One honest NAR is uploaded; everything below is refused around it.
    let nar = nar_of(b"hostile backend test");
    assert_eq!(put(&nar.url, Body::Bytes(&nar.compressed)).status, 201);
    let before = files(&objects);
    let path = store_path("hostile");

    let mut wrong_hash = narinfo(&path, &nar, &[]);
    wrong_hash.nar_hash = Hash::sha256("something else");
    refused(
        &put(
            &format!("{}.narinfo", path.hash_part()),
            Body::Bytes(wrong_hash.to_string().as_bytes()),
        ),
        422,
        "NarHash",
    );
    let absent = store_path("never-pushed");
    refused(
        &put(
            &format!("{}.narinfo", path.hash_part()),
            Body::Bytes(narinfo(&path, &nar, &[&absent]).to_string().as_bytes()),
        ),
        422,
        &absent.to_string(),
    );
    // A NAR file whose name promises another file hash, and one that is not a NAR.
    let other = nar_of(b"another file");
    refused(
        &put(&other.url, Body::Bytes(&nar.compressed)),
        400,
        "FileHash",
    );
    let garbage = zstd::encode_all(&b"not a NAR"[..], 3).unwrap();
    let garbage_key = format!("nar/{}.nar.zst", Hash::sha256(&garbage).to_nix32());
    refused(
        &put(&garbage_key, Body::Bytes(&garbage)),
        400,
        "invalid NAR",
    );
    // Over the size limit, streamed without a length.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..200_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 56) as u8
        })
        .collect();
    let big = nar_of(&noise);
    refused(&put(&big.url, Body::Chunked(&big.compressed)), 413, "65536");
    // Keys that try to leave the cache.
    for key in [
        "nar/..%2F..%2Fevil.nar",
        "log/..%2F..%2Fnix-cache-info",
        "..%2Fx",
    ] {
        let r = put(key, Body::Bytes(&nar.compressed));
        assert!((400..500).contains(&r.status), "PUT {key}: {}", r.status);
    }

    assert_eq!(get(&format!("{}.narinfo", path.hash_part())).status, 404);
    assert_eq!(get(&other.url).status, 404);
    assert_eq!(get(&garbage_key).status, 404);
    assert_eq!(get(&big.url).status, 404);
    assert_eq!(
        files(&objects),
        before,
        "refused uploads left objects behind"
    );
    if let Some(s3) = &cache.s3 {
        // Nothing was written outside the cache's folder either.
        let mut bucket: Vec<PathBuf> = files(&s3.bucket_dir()).into_iter().collect();
        bucket.retain(|f| !f.starts_with("main"));
        assert!(bucket.is_empty(), "{bucket:?}");
    }

    // The honest narinfo still publishes.
    let r = put(
        &format!("{}.narinfo", path.hash_part()),
        Body::Bytes(narinfo(&path, &nar, &[]).to_string().as_bytes()),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(get(&format!("{}.narinfo", path.hash_part())).status, 200);
}
