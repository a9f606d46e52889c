//! Hostile uploads through the raw binary-cache protocol and the upload API: each is refused with
//! a 4xx naming what is wrong, and nothing becomes visible, in the index or in the stored objects.

mod harness;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use base64::Engine;
use harness::{Body, Kiln, Response};
use kiln_nix::narinfo::NarInfo;
use kiln_nix::{Hash, StoreDir, StorePath};

/// A NAR file prepared for upload.
struct NarFile {
    nar: Vec<u8>,
    compressed: Vec<u8>,
    nar_hash: Hash,
    file_hash: Hash,
    /// `nar/<filehash>.nar.zst`.
    url: String,
}

fn nar_of(content: &[u8]) -> NarFile {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, content).unwrap();
    let mut nar = Vec::new();
    kiln_nix::nar::dump_path(&file, &mut nar).unwrap();
    let compressed = zstd::encode_all(nar.as_slice(), 3).unwrap();
    let file_hash = Hash::sha256(&compressed);
    NarFile {
        nar_hash: Hash::sha256(&nar),
        url: format!("nar/{}.nar.zst", file_hash.to_nix32()),
        nar,
        compressed,
        file_hash,
    }
}

/// `len` bytes that do not compress (xorshift64).
fn noise(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 56) as u8
        })
        .collect()
}

/// A made-up (valid) store path named `name`.
fn store_path(name: &str) -> StorePath {
    StoreDir::default().make_store_path("source", &Hash::sha256(name), name)
}

/// The narinfo an honest client would send for `path` stored as `nar`.
fn narinfo(path: &StorePath, nar: &NarFile, refs: &[&StorePath]) -> NarInfo {
    let mut info = NarInfo::new(
        path.clone(),
        nar.url.clone(),
        nar.nar_hash.clone(),
        nar.nar.len() as u64,
    );
    info.compression = "zstd".to_owned();
    info.file_hash = Some(nar.file_hash.clone());
    info.file_size = Some(nar.compressed.len() as u64);
    info.references = refs.iter().map(|r| (*r).clone()).collect();
    info
}

struct Pusher {
    kiln: Kiln,
    auth: String,
}

impl Pusher {
    fn start(env: &[(&str, &str)]) -> Pusher {
        let kiln = Kiln::start_with(env);
        let token = kiln.token("main", "push");
        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("nix:{token}"))
        );
        Pusher { kiln, auth }
    }

    fn put(&self, key: &str, body: Body<'_>) -> Response {
        self.kiln.request(
            "PUT",
            &format!("/cache/main/{key}"),
            &[("Authorization", &self.auth)],
            body,
        )
    }

    fn put_nar(&self, nar: &NarFile) {
        let r = self.put(&nar.url, Body::Bytes(&nar.compressed));
        assert_eq!(r.status, 201, "{}", r.text());
    }

    fn put_narinfo(&self, info: &NarInfo) -> Response {
        self.put_narinfo_text(&info.store_path.hash_part(), &info.to_string())
    }

    fn put_narinfo_text(&self, hash: &str, text: &str) -> Response {
        self.put(&format!("{hash}.narinfo"), Body::Bytes(text.as_bytes()))
    }

    fn get(&self, key: &str) -> Response {
        self.kiln
            .request("GET", &format!("/cache/main/{key}"), &[], Body::Empty)
    }

    /// Asserts that `path` is not served and has no narinfo object.
    fn assert_invisible(&self, path: &StorePath) {
        let hash = path.hash_part();
        assert_eq!(
            self.get(&format!("{hash}.narinfo")).status,
            404,
            "{path} is served"
        );
        assert!(
            !self
                .kiln
                .data_dir()
                .join(format!("cache/main/{hash}.narinfo"))
                .exists(),
            "{path} has a narinfo object"
        );
    }

    /// Every file under the data directory, relative to it.
    fn files(&self) -> BTreeSet<PathBuf> {
        fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(root, &path, out);
                } else {
                    out.insert(path.strip_prefix(root).unwrap().to_owned());
                }
            }
        }
        let mut out = BTreeSet::new();
        walk(&self.kiln.data_dir(), &self.kiln.data_dir(), &mut out);
        // The database's own files change with every request.
        out.retain(|p| !p.to_string_lossy().starts_with("kiln.sqlite"));
        out
    }
}

/// Asserts a refusal with `status` whose message contains `needle`.
fn refused(r: &Response, status: u16, needle: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    let json: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON error body");
    let message = json["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(needle),
        "message {message:?} does not mention {needle:?}"
    );
}

#[test]
fn honest_raw_upload_is_published_signed() {
    let p = Pusher::start(&[]);
    let nar = nar_of(b"honest");
    let path = store_path("honest");
    p.put_nar(&nar);
    let r = p.put_narinfo(&narinfo(&path, &nar, &[&path]));
    assert_eq!(r.status, 201, "{}", r.text());
    let served =
        NarInfo::parse_bytes(&p.get(&format!("{}.narinfo", path.hash_part())).body).unwrap();
    let key: kiln_nix::signing::PublicKey = p.kiln.public_key.parse().unwrap();
    served.verify(&[key]).unwrap();
    assert_eq!(p.get(&nar.url).body, nar.compressed);
    // Publishing the same narinfo again changes nothing and succeeds.
    assert_eq!(p.put_narinfo(&narinfo(&path, &nar, &[&path])).status, 200);
}

#[test]
fn nar_hash_or_size_mismatch_is_refused_and_invisible() {
    let p = Pusher::start(&[]);
    let nar = nar_of(b"real content");
    let other = nar_of(b"other content");
    p.put_nar(&nar);
    let path = store_path("mismatch");

    let mut info = narinfo(&path, &nar, &[]);
    info.nar_hash = other.nar_hash.clone();
    refused(&p.put_narinfo(&info), 422, "NarHash");
    let mut info = narinfo(&path, &nar, &[]);
    info.nar_size += 8;
    refused(&p.put_narinfo(&info), 422, "NarSize");
    let mut info = narinfo(&path, &nar, &[]);
    info.file_hash = Some(other.file_hash.clone());
    refused(&p.put_narinfo(&info), 422, "FileHash");
    let mut info = narinfo(&path, &nar, &[]);
    info.file_size = Some(1);
    refused(&p.put_narinfo(&info), 422, "FileSize");
    let mut info = narinfo(&path, &nar, &[]);
    info.compression = "xz".to_owned();
    refused(&p.put_narinfo(&info), 422, "Compression");
    let mut info = narinfo(&path, &nar, &[]);
    info.compression = "br".to_owned();
    refused(&p.put_narinfo(&info), 415, "br");
    p.assert_invisible(&path);
}

#[test]
fn missing_reference_is_refused_and_invisible() {
    let p = Pusher::start(&[]);
    let nar = nar_of(b"needs a dependency");
    p.put_nar(&nar);
    let path = store_path("referrer");
    let absent = store_path("never-pushed");
    let r = p.put_narinfo(&narinfo(&path, &nar, &[&absent, &path]));
    refused(&r, 422, &absent.to_string());
    p.assert_invisible(&path);

    // Once the reference is there, the same narinfo is accepted.
    let dep_nar = nar_of(b"the dependency");
    p.put_nar(&dep_nar);
    assert_eq!(p.put_narinfo(&narinfo(&absent, &dep_nar, &[])).status, 201);
    assert_eq!(
        p.put_narinfo(&narinfo(&path, &nar, &[&absent, &path]))
            .status,
        201
    );
}

#[test]
fn malformed_narinfos_and_invalid_store_paths_are_refused() {
    let p = Pusher::start(&[]);
    let nar = nar_of(b"for malformed narinfos");
    p.put_nar(&nar);
    let path = store_path("malformed");
    let hash = path.hash_part();
    let good = narinfo(&path, &nar, &[]).to_string();

    refused(
        &p.put_narinfo_text(&hash, "this is not a narinfo\n"),
        400,
        "invalid narinfo",
    );
    refused(
        &p.put_narinfo_text(&hash, &good.replace("NarHash", "NarHush")),
        400,
        "NarHash",
    );
    refused(&p.put_narinfo_text(&hash, good.trim_end()), 400, "newline");
    let bad_path = good.replace(
        &format!("/nix/store/{path}"),
        &format!("/nix/store/{hash}-bad/name"),
    );
    refused(
        &p.put_narinfo_text(&hash, &bad_path),
        400,
        "invalid narinfo",
    );
    let elsewhere = good.replace("/nix/store/", "/gnu/store/");
    refused(
        &p.put_narinfo_text(&hash, &elsewhere),
        400,
        "invalid narinfo",
    );
    let bad_ref = good.replace("References: ", "References: ../../etc ");
    refused(&p.put_narinfo_text(&hash, &bad_ref), 400, "invalid narinfo");

    // A narinfo stored under another path's hash.
    let other = store_path("somebody-else");
    refused(
        &p.put_narinfo_text(&other.hash_part(), &good),
        400,
        "hash part",
    );
    // A narinfo naming a NAR that was never uploaded.
    let unknown = nar_of(b"never uploaded");
    refused(
        &p.put_narinfo(&narinfo(&path, &unknown, &[])),
        422,
        "no such NAR",
    );
    let mut outside = narinfo(&path, &nar, &[]);
    outside.url = "../../kiln.sqlite".to_owned();
    let r = p.put_narinfo(&outside);
    assert!((400..500).contains(&r.status), "{}", r.text());
    p.assert_invisible(&path);
    p.assert_invisible(&other);
}

#[test]
fn invalid_nar_files_are_refused_and_not_stored() {
    let p = Pusher::start(&[]);
    let before = p.files();

    // Not a NAR at all.
    let garbage = zstd::encode_all(&b"definitely not a NAR archive"[..], 3).unwrap();
    let name = format!("nar/{}.nar.zst", Hash::sha256(&garbage).to_nix32());
    refused(&p.put(&name, Body::Bytes(&garbage)), 400, "invalid NAR");
    // A NAR followed by trailing bytes.
    let nar = nar_of(b"trailing");
    let mut trailing = nar.nar.clone();
    trailing.extend_from_slice(b"extra bytes");
    let trailing = zstd::encode_all(trailing.as_slice(), 3).unwrap();
    let name = format!("nar/{}.nar.zst", Hash::sha256(&trailing).to_nix32());
    refused(&p.put(&name, Body::Bytes(&trailing)), 400, "invalid NAR");
    // A zstd stream cut short after the whole NAR: only its frame checksum is missing, which
    // clients decompressing it would notice.
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    encoder.include_checksum(true).unwrap();
    std::io::Write::write_all(&mut encoder, &nar.nar).unwrap();
    let checksummed = encoder.finish().unwrap();
    assert_eq!(zstd::decode_all(checksummed.as_slice()).unwrap(), nar.nar);
    let cut = &checksummed[..checksummed.len() - 2];
    let name = format!("nar/{}.nar.zst", Hash::sha256(cut).to_nix32());
    refused(&p.put(&name, Body::Bytes(cut)), 400, "truncated");
    // A name promising another file hash.
    let other = nar_of(b"other");
    refused(
        &p.put(&other.url, Body::Bytes(&nar.compressed)),
        400,
        "FileHash",
    );
    // Names that are not <hash>.nar[.zst|.xz|.bz2], contents that do not match the name's
    // compression, and compressions the cache does not take.
    refused(
        &p.put("nar/x.nar.zst", Body::Bytes(&nar.compressed)),
        400,
        "nixbase32",
    );
    let xz = nar.url.replace(".nar.zst", ".nar.xz");
    refused(
        &p.put(&xz, Body::Bytes(&nar.compressed)),
        400,
        "invalid xz data",
    );
    let brotli = nar.url.replace(".nar.zst", ".nar.br");
    refused(
        &p.put(&brotli, Body::Bytes(&nar.compressed)),
        415,
        ".nar.br",
    );
    // An encoded body.
    let r = p.kiln.request(
        "PUT",
        &format!("/cache/main/{}", nar.url),
        &[("Authorization", &p.auth), ("Content-Encoding", "gzip")],
        Body::Bytes(&nar.compressed),
    );
    refused(&r, 415, "Content-Encoding");

    assert_eq!(p.files(), before, "refused uploads left files behind");
    assert_eq!(
        p.kiln
            .request(
                "HEAD",
                &format!("/cache/main/{}", other.url),
                &[],
                Body::Empty
            )
            .status,
        404
    );
}

#[test]
fn path_traversal_in_keys_is_refused() {
    let p = Pusher::start(&[]);
    let nar = nar_of(b"traversal");
    let before = p.files();
    for key in [
        "nar/..%2F..%2Fevil.nar",
        "nar/%2E%2E",
        "log/..%2F..%2Fkiln.sqlite",
        "log/..%2F..%2F..%2Fetc%2Fpasswd",
        "..%2Fnar%2Fx.nar",
        "log/.hidden",
    ] {
        let r = p.put(key, Body::Bytes(&nar.compressed));
        assert!(
            (400..500).contains(&r.status),
            "PUT {key}: {} {}",
            r.status,
            r.text()
        );
        let r = p.get(key);
        assert!(
            (400..500).contains(&r.status),
            "GET {key}: {} {}",
            r.status,
            r.text()
        );
    }
    for path in [
        "/cache/..%2F..%2Fkiln.sqlite",
        "/cache/main/../../kiln.sqlite",
        "/cache/%2E%2E/nix-cache-info",
    ] {
        let r = p.kiln.request("GET", path, &[], Body::Empty);
        assert!(
            (400..500).contains(&r.status),
            "GET {path}: {} {}",
            r.status,
            r.text()
        );
        assert!(
            !r.body.starts_with(b"SQLite"),
            "GET {path} served the database"
        );
    }
    assert_eq!(p.files(), before, "a traversal wrote a file");
}

#[test]
fn oversized_bodies_are_refused_and_leave_nothing() {
    let p = Pusher::start(&[
        ("KILN_CACHE__MAX_NAR_SIZE", "65536"),
        ("KILN_CACHE__MAX_LOG_SIZE", "1024"),
    ]);
    let before = p.files();
    let nar = nar_of(b"small");
    refused(
        &p.put(&nar.url, Body::ClaimedLength(10 << 20)),
        413,
        "65536",
    );
    let path = store_path("big-narinfo");
    refused(
        &p.put(
            &format!("{}.narinfo", path.hash_part()),
            Body::ClaimedLength(2 << 20),
        ),
        413,
        "narinfo",
    );

    // Streamed without a length: counted as it arrives.
    let big = noise(200_000);
    let big_nar = nar_of(&big);
    assert!(big_nar.compressed.len() > 65536);
    refused(
        &p.put(&big_nar.url, Body::Chunked(&big_nar.compressed)),
        413,
        "65536",
    );
    let log = vec![b'x'; 4096];
    let drv = format!("{}.drv", store_path("some"));
    refused(
        &p.put(&format!("log/{drv}"), Body::Chunked(&log)),
        413,
        "1024",
    );

    // A NAR that compresses below the limit but expands beyond it.
    let zeros = nar_of(&vec![0u8; 300_000]);
    assert!(zeros.compressed.len() < 65536);
    refused(
        &p.put(&zeros.url, Body::Bytes(&zeros.compressed)),
        413,
        "uncompressed",
    );

    let upload = p.kiln.request(
        "POST",
        "/api/v1/caches/main/upload",
        &[
            ("Authorization", &p.auth),
            ("X-Kiln-Store-Path", &format!("/nix/store/{path}")),
        ],
        Body::Chunked(&big_nar.nar),
    );
    refused(&upload, 413, "65536");
    assert_eq!(p.files(), before, "oversized uploads left files behind");
}

#[test]
fn tokens_decide_who_may_push() {
    let p = Pusher::start(&[]);
    let nar = nar_of(b"tokens");
    let r = p.kiln.request(
        "PUT",
        &format!("/cache/main/{}", nar.url),
        &[],
        Body::Bytes(&nar.compressed),
    );
    refused(&r, 401, "authentication required");
    assert!(r.header("www-authenticate").is_some());
    let bogus = [("Authorization", "Bearer kiln_not_a_token")];
    refused(
        &p.kiln.request(
            "PUT",
            &format!("/cache/main/{}", nar.url),
            &bogus,
            Body::Bytes(&nar.compressed),
        ),
        401,
        "not valid",
    );
    let read = format!("Bearer {}", p.kiln.token("main", "read"));
    let r = p.kiln.request(
        "PUT",
        &format!("/cache/main/{}", nar.url),
        &[("Authorization", &read)],
        Body::Bytes(&nar.compressed),
    );
    refused(&r, 403, "push");
    p.kiln.create_cache("elsewhere", false);
    let other = format!("Bearer {}", p.kiln.token("elsewhere", "admin"));
    let r = p.kiln.request(
        "PUT",
        &format!("/cache/main/{}", nar.url),
        &[("Authorization", &other)],
        Body::Bytes(&nar.compressed),
    );
    refused(&r, 403, "push");
    assert_eq!(
        p.kiln
            .request(
                "HEAD",
                &format!("/cache/main/{}", nar.url),
                &[],
                Body::Empty
            )
            .status,
        404
    );
    let admin = format!("Bearer {}", p.kiln.token("main", "admin"));
    let r = p.kiln.request(
        "PUT",
        &format!("/cache/main/{}", nar.url),
        &[("Authorization", &admin)],
        Body::Bytes(&nar.compressed),
    );
    assert_eq!(r.status, 201, "admin includes push: {}", r.text());
}

#[test]
fn nar_downloads_support_ranges() {
    let p = Pusher::start(&[]);
    let nar = nar_of(b"ranged content for partial downloads");
    p.put_nar(&nar);
    let key = format!("/cache/main/{}", nar.url);
    let head = p.kiln.request("HEAD", &key, &[], Body::Empty);
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(nar.compressed.len().to_string().as_str())
    );
    let r = p
        .kiln
        .request("GET", &key, &[("Range", "bytes=4-9")], Body::Empty);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, nar.compressed[4..10]);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 4-9/{}", nar.compressed.len()).as_str())
    );
    let r = p
        .kiln
        .request("GET", &key, &[("Range", "bytes=-3")], Body::Empty);
    assert_eq!(r.body, nar.compressed[nar.compressed.len() - 3..]);
    let r = p
        .kiln
        .request("GET", &key, &[("Range", "bytes=100000-")], Body::Empty);
    assert_eq!(r.status, 416);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{}", nar.compressed.len()).as_str())
    );
}

#[test]
fn upload_api_refuses_a_nar_that_contradicts_its_headers() {
    let p = Pusher::start(&[]);
    let before = p.files();
    let nar = nar_of(b"api upload");
    let other = nar_of(b"something else");
    let path = format!("/nix/store/{}", store_path("api-path"));
    let post = |headers: &[(&str, &str)], body: &[u8]| {
        let mut all = vec![("Authorization", p.auth.as_str())];
        all.extend_from_slice(headers);
        p.kiln.request(
            "POST",
            "/api/v1/caches/main/upload",
            &all,
            Body::Chunked(body),
        )
    };
    let wrong_hash = other.nar_hash.to_string();
    refused(
        &post(
            &[
                ("X-Kiln-Store-Path", &path),
                ("X-Kiln-Nar-Hash", &wrong_hash),
            ],
            &nar.nar,
        ),
        422,
        "X-Kiln-Nar-Hash",
    );
    refused(
        &post(
            &[("X-Kiln-Store-Path", &path), ("X-Kiln-Nar-Size", "7")],
            &nar.nar,
        ),
        422,
        "X-Kiln-Nar-Size",
    );
    refused(
        &post(&[("X-Kiln-Store-Path", &path)], b"not a nar"),
        400,
        "invalid NAR",
    );
    refused(
        &post(&[("X-Kiln-Store-Path", "/nix/store/short")], &nar.nar),
        400,
        "X-Kiln-Store-Path",
    );
    refused(&post(&[], &nar.nar), 400, "X-Kiln-Store-Path");
    let missing = format!("/nix/store/{}", store_path("api-missing"));
    refused(
        &post(
            &[
                ("X-Kiln-Store-Path", &path),
                ("X-Kiln-References", &missing),
            ],
            &nar.nar,
        ),
        422,
        "api-missing",
    );
    assert_eq!(p.files(), before, "refused uploads left files behind");
    p.assert_invisible(&path.parse().unwrap());
}
