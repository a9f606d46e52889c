//! narinfos, signing keys and `nix-cache-info` checked against the real Nix 2.8 on this machine.
//!
//! Every store touched is a chroot store under a temporary directory; paths are built in the
//! sandbox so they are input-addressed. (Paths from `nix-store --add` are content-addressed, and
//! Nix trusts those without any signature, which would hide signature bugs.)

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use kiln_nix::cache_info::CacheInfo;
use kiln_nix::narinfo::{MAX_NARINFO_LEN, NarInfo, NarInfoError, VerifyError};
use kiln_nix::signing::{PublicKey, SecretKey, Signature};
use kiln_nix::{Hash, StorePath};
use support::{nix, nix_ok};

/// Three paths: `leaf`, `mid` (refers to `leaf` and to itself) and `top` (refers to both).
const CLOSURE_NIX: &str = r#"
let
  mk = name: script: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
  };
  leaf = mk "kiln-leaf" "echo leaf > $out";
  mid = mk "kiln-mid" "/bin/busybox mkdir $out; echo ${leaf} $out > $out/refs";
in mk "kiln-top" "echo ${mid} ${leaf} > $out"
"#;

/// What `nix path-info --json` says about one path.
struct PathInfo {
    path: StorePath,
    nar_hash: Hash,
    nar_size: u64,
    references: BTreeSet<StorePath>,
    deriver: Option<StorePath>,
}

/// A temporary directory with a chroot store holding the built closure of [`CLOSURE_NIX`].
struct Closure {
    dir: tempfile::TempDir,
    store: String,
    top: String,
    paths: Vec<PathInfo>,
}

impl Closure {
    fn build() -> Closure {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("src").to_str().unwrap().to_owned();
        let expr = dir.path().join("closure.nix");
        fs::write(&expr, CLOSURE_NIX).unwrap();
        let out = nix_ok(
            "nix-build",
            &[],
            &["--store", &store, expr.to_str().unwrap(), "--no-out-link"],
        );
        let top = String::from_utf8(out).unwrap().trim().to_owned();
        let json = nix_ok(
            "nix",
            &["path-info"],
            &["--store", &store, "--json", "-r", &top],
        );
        let json: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let paths = json
            .as_array()
            .unwrap()
            .iter()
            .map(|p| PathInfo {
                path: StorePath::parse(p["path"].as_str().unwrap()).unwrap(),
                nar_hash: Hash::parse_typed(p["narHash"].as_str().unwrap()).unwrap(),
                nar_size: p["narSize"].as_u64().unwrap(),
                references: p["references"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| StorePath::parse(r.as_str().unwrap()).unwrap())
                    .collect(),
                deriver: p["deriver"].as_str().map(|d| StorePath::parse(d).unwrap()),
            })
            .collect::<Vec<_>>();
        assert_eq!(paths.len(), 3, "leaf, mid and top");
        Closure {
            dir,
            store,
            top,
            paths,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn nar(&self, path: &StorePath) -> Vec<u8> {
        nix_ok(
            "nix",
            &["store", "dump-path"],
            &["--store", &self.store, &path.to_absolute()],
        )
    }

    /// Writes a `file://` binary cache the way Kiln serves one: uncompressed NARs under
    /// `nar/<file hash>.nar`, narinfos built and signed by kiln-nix, `nix-cache-info` by kiln-nix.
    fn write_kiln_cache(&self, cache: &Path, key: &SecretKey) -> Vec<NarInfo> {
        fs::create_dir_all(cache.join("nar")).unwrap();
        fs::write(cache.join("nix-cache-info"), CacheInfo::new(40).to_string()).unwrap();
        let mut infos = Vec::new();
        for p in &self.paths {
            let nar = self.nar(&p.path);
            let nar_hash = Hash::sha256(&nar);
            assert_eq!(nar_hash, p.nar_hash, "NAR of {} as Nix hashes it", p.path);
            assert_eq!(nar.len() as u64, p.nar_size);
            let url = format!("nar/{}.nar", nar_hash.to_nix32());
            let mut info = NarInfo::new(p.path.clone(), url, nar_hash.clone(), p.nar_size);
            info.file_hash = Some(nar_hash);
            info.file_size = Some(p.nar_size);
            info.references = p.references.clone();
            info.deriver = p.deriver.clone();
            info.sign(key).unwrap();
            info.validate().unwrap();
            fs::write(cache.join(&info.url), &nar).unwrap();
            fs::write(narinfo_file(cache, &p.path), info.to_string()).unwrap();
            infos.push(info);
        }
        infos
    }
}

fn narinfo_file(cache: &Path, path: &StorePath) -> PathBuf {
    cache.join(format!("{}.narinfo", path.hash_part()))
}

fn file_url(cache: &Path) -> String {
    format!("file://{}", cache.display())
}

/// `nix-store --realise` of `path` into the chroot store `fresh`, substituting only from `cache`
/// and trusting only `trusted`.
fn realise_from(cache: &Path, fresh: &Path, trusted: &str, path: &str) -> Output {
    nix(
        "nix-store",
        &[],
        &[
            "--store",
            fresh.to_str().unwrap(),
            "--realise",
            path,
            "--max-jobs",
            "0",
            "--option",
            "substituters",
            &file_url(cache),
            "--option",
            "trusted-public-keys",
            trusted,
        ],
    )
}

/// `nix copy --from file://cache --to fresh path`, trusting only `trusted`.
fn copy_from(cache: &Path, fresh: &Path, trusted: &str, path: &str) -> Output {
    nix(
        "nix",
        &["copy"],
        &[
            "--from",
            &file_url(cache),
            "--to",
            fresh.to_str().unwrap(),
            path,
            "--option",
            "trusted-public-keys",
            trusted,
        ],
    )
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Signatures a chroot store has recorded for `path`.
fn recorded_sigs(store: &Path, path: &str) -> Vec<String> {
    let json = nix_ok(
        "nix",
        &["path-info"],
        &["--store", store.to_str().unwrap(), "--json", path],
    );
    let json: serde_json::Value = serde_json::from_slice(&json).unwrap();
    json[0]["signatures"]
        .as_array()
        .map(|sigs| {
            sigs.iter()
                .map(|s| s.as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn nix_substitutes_a_closure_from_a_kiln_signed_cache() {
    let closure = Closure::build();
    let cache = closure.path("cache");
    let key = SecretKey::generate("kiln-test-1").unwrap();
    let infos = closure.write_kiln_cache(&cache, &key);

    let fresh = closure.path("fresh");
    let out = realise_from(&cache, &fresh, &key.public().to_string(), &closure.top);
    assert!(
        out.status.success(),
        "nix-store --realise failed: {}",
        stderr(&out)
    );

    for info in &infos {
        let path = info.store_path.to_absolute();
        let sigs = recorded_sigs(&fresh, &path);
        let kiln_sig = info.sigs.first().unwrap().to_string();
        assert_eq!(sigs, [kiln_sig], "{path} arrived with Kiln's signature");
    }
    let top_base = closure.top.strip_prefix("/nix/store/").unwrap();
    assert_eq!(
        fs::read(fresh.join("nix/store").join(top_base)).unwrap(),
        fs::read(closure.path("src/nix/store").join(top_base)).unwrap()
    );
}

#[test]
fn nix_refuses_a_kiln_cache_signed_by_a_key_it_does_not_trust() {
    let closure = Closure::build();
    let cache = closure.path("cache");
    let key = SecretKey::generate("kiln-test-1").unwrap();
    closure.write_kiln_cache(&cache, &key);
    let stranger = SecretKey::generate("stranger-1")
        .unwrap()
        .public()
        .to_string();

    let fresh = closure.path("fresh-realise");
    let out = realise_from(&cache, &fresh, &stranger, &closure.top);
    assert!(
        !out.status.success(),
        "realised with an untrusted signature"
    );
    assert!(
        stderr(&out).contains("is not signed by any of the keys"),
        "{}",
        stderr(&out)
    );

    let fresh = closure.path("fresh-copy");
    let out = copy_from(&cache, &fresh, &stranger, &closure.top);
    assert!(!out.status.success(), "copied with an untrusted signature");
    assert!(
        stderr(&out).contains("lacks a valid signature"),
        "{}",
        stderr(&out)
    );
    let out = copy_from(&cache, &fresh, &key.public().to_string(), &closure.top);
    assert!(
        out.status.success(),
        "nix copy with the right key failed: {}",
        stderr(&out)
    );
}

#[test]
fn nix_and_kiln_both_refuse_a_signature_by_another_key_with_the_trusted_name() {
    let closure = Closure::build();
    let cache = closure.path("cache");
    let trusted = SecretKey::generate("kiln-test-1").unwrap();
    let impostor = SecretKey::generate("kiln-test-1").unwrap();
    let infos = closure.write_kiln_cache(&cache, &impostor);
    for info in &infos {
        assert!(matches!(
            info.verify(&[trusted.public()]),
            Err(VerifyError::BadSignature { .. })
        ));
    }
    let out = copy_from(
        &cache,
        &closure.path("fresh"),
        &trusted.public().to_string(),
        &closure.top,
    );
    assert!(
        !out.status.success(),
        "Nix accepted the impostor's signature"
    );
    assert!(
        stderr(&out).contains("lacks a valid signature"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn nix_ignores_unknown_narinfo_keys_as_kiln_does() {
    let closure = Closure::build();
    let cache = closure.path("cache");
    let key = SecretKey::generate("kiln-test-1").unwrap();
    for info in closure.write_kiln_cache(&cache, &key) {
        let file = narinfo_file(&cache, &info.store_path);
        let text = fs::read_to_string(&file).unwrap() + "X-Kiln-Unknown: some future field\n";
        assert_eq!(NarInfo::parse(&text).unwrap(), info);
        fs::write(&file, text).unwrap();
    }
    let out = realise_from(
        &cache,
        &closure.path("fresh"),
        &key.public().to_string(),
        &closure.top,
    );
    assert!(
        out.status.success(),
        "Nix refused unknown keys: {}",
        stderr(&out)
    );
}

#[test]
fn kiln_narinfos_are_byte_identical_to_the_ones_nix_writes() {
    let closure = Closure::build();
    let secret_file = closure.path("nix.sec");
    let public_file = closure.path("nix.pub");
    nix_ok(
        "nix-store",
        &["--generate-binary-cache-key", "nix-test-1"],
        &[secret_file.to_str().unwrap(), public_file.to_str().unwrap()],
    );
    let nix_cache = closure.path("nix-cache");
    let to = format!(
        "{}?compression=none&secret-key={}",
        file_url(&nix_cache),
        secret_file.display()
    );
    nix_ok(
        "nix",
        &["copy"],
        &["--store", &closure.store, "--to", &to, &closure.top],
    );

    let key: SecretKey = fs::read_to_string(&secret_file).unwrap().parse().unwrap();
    let kiln_cache = closure.path("kiln-cache");
    for info in closure.write_kiln_cache(&kiln_cache, &key) {
        let nix_written = fs::read_to_string(narinfo_file(&nix_cache, &info.store_path)).unwrap();
        assert_eq!(info.to_string(), nix_written);
        assert!(
            nix_cache.join(&info.url).is_file(),
            "same NAR file name as Nix"
        );
    }
    let nix_cache_info = fs::read_to_string(nix_cache.join("nix-cache-info")).unwrap();
    assert_eq!(
        CacheInfo::parse(&nix_cache_info).unwrap().to_string(),
        nix_cache_info
    );
}

/// Checks every narinfo in a Nix-written cache: byte-identical reprint, valid signature under
/// `key`, and that tampering or the wrong key breaks verification. Returns how many it checked.
fn check_nix_signed_cache(cache: &Path, key: &PublicKey) -> usize {
    let stranger = SecretKey::generate("stranger-1").unwrap().public();
    let mut checked = 0;
    for entry in fs::read_dir(cache).unwrap() {
        let file = entry.unwrap().path();
        if file.extension().is_none_or(|e| e != "narinfo") {
            continue;
        }
        let bytes = fs::read(&file).unwrap();
        let info = NarInfo::parse_bytes(&bytes).unwrap();
        assert_eq!(
            info.to_string().as_bytes(),
            bytes.as_slice(),
            "{}",
            file.display()
        );
        info.verify(std::slice::from_ref(key)).unwrap();
        assert_eq!(
            info.valid_signatures(std::slice::from_ref(key))
                .unwrap()
                .len(),
            1
        );
        assert!(matches!(
            info.verify(std::slice::from_ref(&stranger)),
            Err(VerifyError::Untrusted { .. })
        ));

        let text = String::from_utf8(bytes).unwrap();
        let size_line = format!("NarSize: {}\n", info.nar_size);
        let tampered = [
            text.replace(&size_line, &format!("NarSize: {}\n", info.nar_size + 1)),
            text.replace(
                "References: ",
                "References: 4kdg03x64484xxbscaq6mf2x93vbazaa-evil ",
            ),
            text.replace(info.store_path.name(), "kiln-evil"),
        ];
        for t in tampered {
            assert_ne!(t, text);
            let t = NarInfo::parse(&t).unwrap();
            assert!(
                matches!(
                    t.verify(std::slice::from_ref(key)),
                    Err(VerifyError::BadSignature { .. })
                ),
                "tampered narinfo verified:\n{t}"
            );
        }
        checked += 1;
    }
    checked
}

#[test]
fn kiln_verifies_narinfos_nix_signed_while_copying_and_detects_tampering() {
    let closure = Closure::build();
    let secret_file = closure.path("nix.sec");
    let public_file = closure.path("nix.pub");
    nix_ok(
        "nix-store",
        &["--generate-binary-cache-key", "nix-test-1"],
        &[secret_file.to_str().unwrap(), public_file.to_str().unwrap()],
    );
    let cache = closure.path("nix-cache");
    // Nix's default compression (xz), so the narinfos are exactly what `nix copy` usually writes.
    let to = format!("{}?secret-key={}", file_url(&cache), secret_file.display());
    nix_ok(
        "nix",
        &["copy"],
        &["--store", &closure.store, "--to", &to, &closure.top],
    );

    let key: PublicKey = fs::read_to_string(&public_file).unwrap().parse().unwrap();
    assert_eq!(check_nix_signed_cache(&cache, &key), 3);
    let top = StorePath::parse(&closure.top).unwrap();
    let info = NarInfo::parse(&fs::read_to_string(narinfo_file(&cache, &top)).unwrap()).unwrap();
    assert_eq!(info.compression, "xz");
    assert!(info.url.ends_with(".nar.xz"));
}

#[test]
fn kiln_verifies_signatures_made_by_nix_store_sign() {
    let closure = Closure::build();
    let secret_file = closure.path("nix.sec");
    let public_file = closure.path("nix.pub");
    nix_ok(
        "nix-store",
        &["--generate-binary-cache-key", "nix-test-2"],
        &[secret_file.to_str().unwrap(), public_file.to_str().unwrap()],
    );
    nix_ok(
        "nix",
        &["store", "sign"],
        &[
            "--store",
            &closure.store,
            "--key-file",
            secret_file.to_str().unwrap(),
            "-r",
            &closure.top,
        ],
    );
    let cache = closure.path("nix-cache");
    let to = format!("{}?compression=none", file_url(&cache));
    nix_ok(
        "nix",
        &["copy"],
        &["--store", &closure.store, "--to", &to, &closure.top],
    );

    let key: PublicKey = fs::read_to_string(&public_file).unwrap().parse().unwrap();
    assert_eq!(check_nix_signed_cache(&cache, &key), 3);
    // The signature Nix recorded in the store is the one Kiln computes with Nix's secret key.
    let secret: SecretKey = fs::read_to_string(&secret_file).unwrap().parse().unwrap();
    for p in &closure.paths {
        let mut info = NarInfo::new(
            p.path.clone(),
            "nar/x.nar".into(),
            p.nar_hash.clone(),
            p.nar_size,
        );
        info.references = p.references.clone();
        info.sign(&secret).unwrap();
        let ours: Vec<String> = info.sigs.iter().map(Signature::to_string).collect();
        let store = PathBuf::from(&closure.store);
        assert_eq!(recorded_sigs(&store, &p.path.to_absolute()), ours);
    }
}

#[test]
fn nix_generated_keys_parse_and_match_nix_key_conversion() {
    let dir = tempfile::tempdir().unwrap();
    let (sec, public) = (dir.path().join("k.sec"), dir.path().join("k.pub"));
    nix_ok(
        "nix-store",
        &["--generate-binary-cache-key", "nix-test-3"],
        &[sec.to_str().unwrap(), public.to_str().unwrap()],
    );
    let secret: SecretKey = fs::read_to_string(&sec).unwrap().parse().unwrap();
    assert_eq!(secret.to_secret_string(), fs::read_to_string(&sec).unwrap());
    assert_eq!(
        secret.public().to_string(),
        fs::read_to_string(&public).unwrap()
    );
}

/// One entry of `hostile/narinfo/EXPECTED`.
struct Case {
    file: String,
    expected: String,
}

fn hostile_cases() -> (PathBuf, Vec<Case>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile/narinfo");
    let manifest = fs::read_to_string(dir.join("EXPECTED")).unwrap();
    let cases: Vec<Case> = manifest
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (file, expected) = l.split_once('\t').expect("file<TAB>expectation");
            Case {
                file: file.to_owned(),
                expected: expected.to_owned(),
            }
        })
        .collect();
    let listed: BTreeSet<&str> = cases.iter().map(|c| c.file.as_str()).collect();
    let present: BTreeSet<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "EXPECTED")
        .collect();
    assert_eq!(
        listed,
        present.iter().map(String::as_str).collect(),
        "EXPECTED lists every file"
    );
    (dir, cases)
}

#[test]
fn hostile_corpus_is_refused_with_errors_naming_line_and_field() {
    let (dir, cases) = hostile_cases();
    assert!(cases.len() >= 40);
    for case in cases {
        let bytes = fs::read(dir.join(&case.file)).unwrap();
        let text = || String::from_utf8(bytes.clone()).unwrap();
        let result: Result<(), String> = match case.file.rsplit_once('.').unwrap().1 {
            "narinfo" => match NarInfo::parse_bytes(&bytes) {
                Ok(info) => {
                    let printed = info.to_string();
                    assert_eq!(NarInfo::parse(&printed).unwrap(), info, "{}", case.file);
                    match case.expected.as_str() {
                        "ok" => assert_eq!(printed.as_bytes(), bytes.as_slice(), "{}", case.file),
                        "normalised" => assert_ne!(printed.as_bytes(), bytes.as_slice()),
                        _ => {}
                    }
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            },
            "key" if case.file.starts_with("secret-") => text()
                .parse::<SecretKey>()
                .map(drop)
                .map_err(|e| e.to_string()),
            "key" => text()
                .parse::<PublicKey>()
                .map(drop)
                .map_err(|e| e.to_string()),
            "sig" => text()
                .parse::<Signature>()
                .map(drop)
                .map_err(|e| e.to_string()),
            other => panic!("unknown corpus file type {other}"),
        };
        match (result, case.expected.as_str()) {
            (Ok(()), "ok" | "normalised") => {}
            (Ok(()), expected) => panic!("{} was accepted; expected error {expected:?}", case.file),
            (Err(e), "ok" | "normalised") => panic!("{} was refused: {e}", case.file),
            (Err(e), expected) => {
                assert!(
                    e.contains(expected),
                    "{}: error {e:?} lacks {expected:?}",
                    case.file
                )
            }
        }
    }
}

#[test]
fn truncated_or_corrupted_narinfos_are_refused_or_round_trip_never_panic() {
    let (dir, _) = hostile_cases();
    let good = fs::read(dir.join("ok-nix-written.narinfo")).unwrap();
    let check = |bytes: &[u8]| {
        if let Ok(info) = NarInfo::parse_bytes(bytes) {
            assert_eq!(NarInfo::parse(&info.to_string()).unwrap(), info);
        }
    };
    for len in 0..good.len() {
        check(&good[..len]);
    }
    for i in 0..good.len() {
        for replacement in [b'\n', b':', b' ', b'\0', 0xff, b'0', b'/'] {
            let mut bytes = good.clone();
            bytes[i] = replacement;
            check(&bytes);
        }
    }
}

#[test]
fn oversized_narinfo_is_refused_before_parsing() {
    let (dir, _) = hostile_cases();
    let mut text = fs::read_to_string(dir.join("ok-nix-written.narinfo")).unwrap();
    while text.len() <= MAX_NARINFO_LEN {
        text.push_str(
            "X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n",
        );
    }
    assert_eq!(
        NarInfo::parse(&text),
        Err(NarInfoError::TooLarge { len: text.len() })
    );
    assert!(matches!(
        NarInfo::parse_bytes(text.as_bytes()),
        Err(NarInfoError::TooLarge { .. })
    ));
}
