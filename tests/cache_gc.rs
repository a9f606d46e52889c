//! Garbage collection end to end, on the local and the S3 backend: `kiln cache gc`, `pin`,
//! `unpin` and `pins` against a running server and real `nix`; closures and pinned paths stay
//! whole and substitutable, expired paths and their NARs go, upload leftovers wait for the grace
//! period, a collection racing `nix copy` never leaves a served path that cannot be
//! substituted, and `kiln up` collects on its own when configured.

mod harness;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use harness::{Backend, Body, NixStore, TestCache, chain_expr, write_netrc};

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
    gc_keeps_pinned_closures_whole_and_deletes_the_rest,
    orphans_are_reaped_after_the_grace_period_and_not_before,
    gc_racing_uploads_leaves_every_served_path_substitutable,
    kiln_up_collects_periodically_when_configured,
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

fn hash_part(path: &str) -> &str {
    &path.trim_start_matches("/nix/store/")[..32]
}

/// `kiln <args>` against the cache's data; its stdout, which must be a success.
fn admin(cache: &TestCache, args: &[&str]) -> String {
    let out = cache.admin(args);
    ok(&out, &format!("kiln {}", args.join(" ")));
    String::from_utf8(out.stdout).unwrap()
}

/// The narinfo of `path` as served, if it is.
fn served_narinfo(cache: &TestCache, path: &str) -> Option<String> {
    let r = cache.request(
        "GET",
        &format!("/cache/main/{}.narinfo", hash_part(path)),
        &[],
        Body::Empty,
    );
    match r.status {
        200 => Some(r.text()),
        404 => None,
        other => panic!("GET narinfo of {path}: {other} {}", r.text()),
    }
}

/// The `URL` of a narinfo.
fn nar_url(narinfo: &str) -> String {
    narinfo
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .expect("URL line")
        .to_owned()
}

fn status(cache: &TestCache, method: &str, key: &str) -> u16 {
    cache
        .request(method, &format!("/cache/main/{key}"), &[], Body::Empty)
        .status
}

/// x0 <- x1 <- x2, and y -> x1: two closures sharing x1 and x0. Builds [x2, y].
fn shared_closures(tag: &str) -> String {
    let drv = |name: &str, script: &str| {
        format!(
            "derivation {{ name = \"{tag}-{name}\"; system = builtins.currentSystem; \
             builder = \"/bin/sh\"; args = [ \"-c\" \"{script}\" ]; }}"
        )
    };
    format!(
        "let\n  x0 = {};\n  x1 = {};\n  x2 = {};\n  y = {};\nin [ x2 y ]\n",
        drv("x0", &format!("echo {tag} > $out")),
        drv("x1", "echo ${x0} > $out"),
        drv("x2", "echo ${x1} > $out"),
        drv("y", "echo ${x1} y > $out"),
    )
}

fn gc_keeps_pinned_closures_whole_and_deletes_the_rest(backend: Backend) {
    let cache = TestCache::start(backend, &[]);
    let work = tempfile::tempdir().unwrap();
    let src = NixStore::new(work.path(), "src");
    let built = src.build(&shared_closures(&format!("kiln-gc-pin-{backend:?}")));
    let (x2, y) = (built[0].clone(), built[1].clone());
    let closure_y = src.closure(std::slice::from_ref(&y));
    assert_eq!(closure_y.len(), 3, "y, x1, x0");
    let netrc = write_netrc(work.path(), "netrc", &cache.token("main", "push"));
    ok(
        &src.copy_to(&zstd_url(&cache.substituter), &built, Some(&netrc)),
        "nix copy --to",
    );
    let x2_nar = nar_url(&served_narinfo(&cache, &x2).expect("x2 served"));

    // The default configuration deletes no path.
    let out = admin(&cache, &["cache", "gc", "main"]);
    assert!(out.contains("paths: 4 kept of 4"), "{out}");
    assert!(out.contains("deleted 0"), "{out}");

    let out = admin(&cache, &["cache", "pin", "main", &y]);
    assert_eq!(out.trim(), format!("pinned {y}"));
    let out = admin(&cache, &["cache", "pins", "main"]);
    assert!(out.starts_with(&format!("{y}\t")), "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");

    let everything_expires = ["--max-age", "0s", "--grace", "0s"];
    let mut args = vec!["cache", "gc", "main", "--dry-run"];
    args.extend(everything_expires);
    let out = admin(&cache, &args);
    assert!(out.contains("dry run"), "{out}");
    assert!(out.contains("would delete 1\n"), "{out}");
    assert!(served_narinfo(&cache, &x2).is_some(), "a dry run deleted");

    let mut args = vec!["cache", "gc", "main"];
    args.extend(everything_expires);
    let out = admin(&cache, &args);
    assert!(
        out.contains("paths: 3 kept of 4 (0 unexpired, 1 pinned"),
        "{out}"
    );
    assert!(out.contains("deleted 1\n"), "{out}");

    // x2 is gone: narinfo, NAR, and their objects.
    assert!(served_narinfo(&cache, &x2).is_none());
    assert_eq!(status(&cache, "HEAD", &x2_nar), 404);
    let objects = cache.objects("main");
    assert!(!objects.join(format!("{}.narinfo", hash_part(&x2))).exists());
    assert!(!objects.join(&x2_nar).exists());
    // y's closure is whole: over HTTP and as a static cache.
    for path in &closure_y {
        let narinfo = served_narinfo(&cache, path).unwrap_or_else(|| panic!("{path} deleted"));
        assert_eq!(status(&cache, "HEAD", &nar_url(&narinfo)), 200, "{path}");
    }
    let fresh = NixStore::new(work.path(), "fresh");
    ok(
        &fresh.substitute(
            &cache.substituter,
            &cache.public_key,
            std::slice::from_ref(&y),
            None,
        ),
        "substitution of the pinned closure",
    );
    for path in &closure_y {
        assert!(fresh.has(path), "{path} was not substituted");
    }
    let from_files = NixStore::new(work.path(), "from-files");
    ok(
        &from_files.substitute(
            &format!("file://{}", objects.display()),
            &cache.public_key,
            std::slice::from_ref(&y),
            None,
        ),
        "substitution from the objects after collection",
    );

    // Unpinned, everything expires.
    let out = admin(&cache, &["cache", "unpin", "main", &y]);
    assert_eq!(out.trim(), format!("unpinned {y}"));
    assert_eq!(admin(&cache, &["cache", "pins", "main"]), "");
    let out = admin(&cache, &args);
    assert!(out.contains("paths: 0 kept of 3"), "{out}");
    for path in &closure_y {
        assert!(served_narinfo(&cache, path).is_none(), "{path} kept");
    }
    let mut left: Vec<String> = fs::read_dir(&objects)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".narinfo"))
        .collect();
    left.extend(
        fs::read_dir(objects.join("nar"))
            .into_iter()
            .flatten()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned()),
    );
    assert!(left.is_empty(), "objects left: {left:?}");

    // Pinning what the cache does not serve is refused.
    let out = cache.admin(&["cache", "pin", "main", &y]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&y),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes `content` to `path` (creating its folder) and dates it an hour back.
fn plant(path: &Path, content: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
}

fn orphans_are_reaped_after_the_grace_period_and_not_before(backend: Backend) {
    let cache = TestCache::start(backend, &[]);
    let work = tempfile::tempdir().unwrap();
    let src = NixStore::new(work.path(), "src");
    let kept = src.build(&chain_expr(&format!("kiln-gc-orphans-{backend:?}"), 2));
    let netrc = write_netrc(work.path(), "netrc", &cache.token("main", "push"));
    ok(
        &src.copy_to(&zstd_url(&cache.substituter), &kept, Some(&netrc)),
        "nix copy --to",
    );

    // Left behind by crashes: a NAR object no row records, a staging object, and (local
    // backend) a temporary file of an interrupted write.
    let objects = cache.objects("main");
    let orphan = objects.join(format!("nar/{}.nar.zst", "1".repeat(52)));
    plant(&orphan, b"orphan NAR");
    let staged = objects.join("tmp/00112233445566778899aabbccddeeff");
    plant(&staged, b"staged");
    let temp = objects.join("nar/.abc.nar.zst.0011223344556677.tmp");
    if backend == Backend::Local {
        plant(&temp, b"temp");
    }
    // An upload whose narinfo never came.
    let mut nar = Vec::new();
    let file = work.path().join("abandoned");
    fs::write(&file, b"abandoned upload").unwrap();
    kiln_nix::nar::dump_path(&file, &mut nar).unwrap();
    let compressed = zstd::encode_all(nar.as_slice(), 3).unwrap();
    let abandoned = format!(
        "nar/{}.nar.zst",
        kiln_nix::Hash::sha256(&compressed).to_nix32()
    );
    let r = cache.request(
        "PUT",
        &format!("/cache/main/{abandoned}"),
        &[(
            "Authorization",
            &format!("Bearer {}", cache.token("main", "push")),
        )],
        Body::Bytes(&compressed),
    );
    assert_eq!(r.status, 201, "{}", r.text());

    let out = admin(&cache, &["cache", "gc", "main", "--grace", "2h"]);
    assert!(
        out.contains("NAR files: deleted 0 (0 bytes), of which orphans 0 (0 bytes); 1 unused"),
        "{out}"
    );
    assert!(orphan.exists() && staged.exists());
    assert_eq!(backend == Backend::Local, temp.exists());
    assert_eq!(status(&cache, "HEAD", &abandoned), 200);

    let out = admin(&cache, &["cache", "gc", "main", "--grace", "30m"]);
    assert!(
        out.contains("NAR files: deleted 1 (10 bytes), of which orphans 1 (10 bytes); 1 unused"),
        "{out}"
    );
    assert!(
        out.contains("staging objects: deleted 1 (6 bytes)"),
        "{out}"
    );
    assert!(!orphan.exists() && !staged.exists());
    if backend == Backend::Local {
        assert!(
            out.contains("temporary files: deleted 1 (4 bytes)"),
            "{out}"
        );
        assert!(!temp.exists());
    }
    assert_eq!(status(&cache, "HEAD", &abandoned), 200, "reaped too early");

    let out = admin(&cache, &["cache", "gc", "main", "--grace", "0s"]);
    assert!(
        out.contains(&format!(
            "NAR files: deleted 1 ({} bytes), of which orphans 0 (0 bytes); 0 unused",
            compressed.len()
        )),
        "{out}"
    );
    assert_eq!(status(&cache, "HEAD", &abandoned), 404);
    assert!(!objects.join(&abandoned).exists());

    // Served paths were never touched.
    let fresh = NixStore::new(work.path(), "fresh");
    ok(
        &fresh.substitute(&cache.substituter, &cache.public_key, &kept, None),
        "substitution after collections",
    );
}

/// Tops t0..t3, each referring to its own leaf and to a shared base b1 -> b0.
fn racing_closures(tag: &str, tops: usize) -> String {
    let drv = |name: &str, script: &str| {
        format!(
            "derivation {{ name = \"{tag}-{name}\"; system = builtins.currentSystem; \
             builder = \"/bin/sh\"; args = [ \"-c\" \"{script}\" ]; }}"
        )
    };
    let mut expr = String::from("let\n");
    expr.push_str(&format!(
        "  b0 = {};\n  b1 = {};\n",
        drv("b0", &format!("echo {tag} > $out")),
        drv("b1", "echo ${b0} > $out")
    ));
    for i in 0..tops {
        expr.push_str(&format!(
            "  l{i} = {};\n  t{i} = {};\n",
            drv(&format!("l{i}"), &format!("echo leaf {i} > $out")),
            drv(&format!("t{i}"), &format!("echo ${{l{i}}} ${{b1}} > $out")),
        ));
    }
    let tops: Vec<String> = (0..tops).map(|i| format!("t{i}")).collect();
    expr.push_str(&format!("in [ {} ]\n", tops.join(" ")));
    expr
}

fn gc_racing_uploads_leaves_every_served_path_substitutable(backend: Backend) {
    const ROUNDS: usize = 5;
    let cache = TestCache::start(backend, &[]);
    let work = tempfile::tempdir().unwrap();
    let src = NixStore::new(work.path(), "src");
    let url = zstd_url(&cache.substituter);
    let netrc = write_netrc(work.path(), "netrc", &cache.token("main", "push"));

    let pinned = src.build(&chain_expr(&format!("kiln-gc-race-pinned-{backend:?}"), 2));
    ok(&src.copy_to(&url, &pinned, Some(&netrc)), "nix copy --to");
    admin(&cache, &["cache", "pin", "main", &pinned[0]]);
    let tops = src.build(&racing_closures(&format!("kiln-gc-race-{backend:?}"), 4));
    let mut candidates = src.closure(&tops);
    candidates.extend(src.closure(&pinned));

    let copying = AtomicBool::new(true);
    let (copied, refused) = (AtomicU64::new(0), AtomicU64::new(0));
    let (collections, collected) = (AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|s| {
        s.spawn(|| {
            for round in 0..ROUNDS {
                for (i, top) in tops.iter().enumerate() {
                    // A new client each time: Nix remembers what the cache had, and the
                    // collector may have deleted it since.
                    let client = src.another_client(&format!("copy-{round}-{i}"));
                    // Nix 2.8 retries an upload after a server error without sending its body
                    // again, and then waits for minutes; one attempt is enough here, server
                    // errors are checked in the log below.
                    let out = client.copy_to_with_options(
                        &url,
                        std::slice::from_ref(top),
                        Some(&netrc),
                        &[("download-attempts", "1")],
                    );
                    let counter = if out.status.success() {
                        &copied
                    } else {
                        &refused
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
            copying.store(false, Ordering::Relaxed);
        });
        s.spawn(|| {
            while copying.load(Ordering::Relaxed) {
                let out = admin(
                    &cache,
                    &["cache", "gc", "main", "--max-age", "0s", "--grace", "0s"],
                );
                collections.fetch_add(1, Ordering::Relaxed);
                let deleted: u64 = out
                    .lines()
                    .find(|l| l.starts_with("paths: "))
                    .and_then(|l| l.rsplit_once("deleted "))
                    .and_then(|(_, n)| n.trim().parse().ok())
                    .unwrap_or_else(|| panic!("no path count in {out}"));
                collected.fetch_add(deleted, Ordering::Relaxed);
            }
        });
    });
    eprintln!(
        "{} copies succeeded, {} failed; {} collections deleted {} paths",
        copied.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        collections.load(Ordering::Relaxed),
        collected.load(Ordering::Relaxed)
    );
    assert!(
        collected.load(Ordering::Relaxed) > 0,
        "the collections never deleted an uploaded path: the race was not exercised"
    );
    // Refusals are 4xx (a reference or NAR collected meanwhile); nothing failed in the server.
    let log = cache.log();
    let faults: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("request failed"))
        .collect();
    assert!(
        faults.is_empty(),
        "server errors during the race:\n{}",
        faults.join("\n")
    );

    // Whatever is served now must be whole: its NAR, its references, a valid substitution.
    let served: BTreeMap<String, String> = candidates
        .iter()
        .filter_map(|p| served_narinfo(&cache, p).map(|n| (p.clone(), n)))
        .collect();
    for path in src.closure(&pinned) {
        assert!(served.contains_key(&path), "pinned {path} was collected");
    }
    for (path, narinfo) in &served {
        assert_eq!(
            status(&cache, "HEAD", &nar_url(narinfo)),
            200,
            "{path} is served without its NAR"
        );
        for reference in narinfo
            .lines()
            .find_map(|l| l.strip_prefix("References: "))
            .unwrap_or("")
            .split_whitespace()
        {
            assert!(
                served.contains_key(&format!("/nix/store/{reference}")),
                "{path} is served but its reference {reference} is not"
            );
        }
    }
    let paths: Vec<String> = served.keys().cloned().collect();
    let fresh = NixStore::new(work.path(), "fresh");
    ok(
        &fresh.substitute(&cache.substituter, &cache.public_key, &paths, None),
        "substitution of everything served",
    );
    for path in &paths {
        assert_eq!(
            fs::read(fresh.real_path(path)).unwrap(),
            fs::read(src.real_path(path)).unwrap(),
            "{path}"
        );
    }
}

fn kiln_up_collects_periodically_when_configured(backend: Backend) {
    let cache = TestCache::start(
        backend,
        &[
            ("KILN_CACHE__GC__INTERVAL", "1s"),
            ("KILN_CACHE__GC__MAX_AGE", "0s"),
            ("KILN_CACHE__GC__GRACE", "0s"),
        ],
    );
    let work = tempfile::tempdir().unwrap();
    let src = NixStore::new(work.path(), "src");
    let top = src.build(&chain_expr(&format!("kiln-gc-periodic-{backend:?}"), 2));
    let netrc = write_netrc(work.path(), "netrc", &cache.token("main", "push"));
    // A collection may delete the first path before the second arrives; the push then fails
    // and is tried again with a client that does not remember the first.
    let pushed = (0..10).any(|attempt| {
        let client = src.another_client(&format!("push-{attempt}"));
        client
            .copy_to(&zstd_url(&cache.substituter), &top, Some(&netrc))
            .status
            .success()
    });
    assert!(pushed, "nix copy never succeeded:\n{}", cache.log());
    // Collections run every second: the paths disappear without anyone asking.
    let objects = cache.objects("main");
    let gone = |path: &str| {
        served_narinfo(&cache, path).is_none()
            && !objects
                .join(format!("{}.narinfo", hash_part(path)))
                .exists()
    };
    let closure = src.closure(&top);
    // The server logs each collection once it has finished deleting.
    let reported = || cache.log().contains("garbage collected");
    for _ in 0..600 {
        if closure.iter().all(|p| gone(p)) && reported() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for path in &closure {
        assert!(gone(path), "{path} was not collected:\n{}", cache.log());
    }
    assert!(reported(), "{}", cache.log());
}
