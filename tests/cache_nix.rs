//! The binary cache against the real `nix` client: `nix copy --to`, substitution into fresh
//! stores with only Kiln's key trusted, tokens through netrc, `nix store copy-log`, and Kiln's
//! own upload API feeding a cache that `nix` then reads.

mod harness;

use std::fs;
use std::process::Output;

use harness::{Body, Kiln, NixStore, chain_expr, write_netrc};

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn failed(out: &Output, what: &str) -> String {
    assert!(!out.status.success(), "{what} unexpectedly succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn zstd_url(url: &str) -> String {
    format!("{url}?compression=zstd")
}

/// The hash part of a full store path.
fn hash_part(path: &str) -> &str {
    &path.trim_start_matches("/nix/store/")[..32]
}

#[test]
fn pushed_closure_substitutes_into_a_fresh_store_trusting_only_kilns_key() {
    let kiln = Kiln::start();
    let work = tempfile::tempdir().unwrap();
    let src = NixStore::new(work.path(), "src");
    let top = src.build(&chain_expr("kiln-push", 3));
    let closure = src.closure(&top);
    assert_eq!(closure.len(), 3, "a closure with references");
    let netrc = write_netrc(work.path(), "netrc", &kiln.token("main", "push"));

    ok(
        &src.copy_to(&zstd_url(&kiln.substituter), &top, Some(&netrc)),
        "nix copy --to",
    );

    let fresh = NixStore::new(work.path(), "fresh");
    ok(
        &fresh.substitute(&kiln.substituter, &kiln.public_key, &top, None),
        "substitution",
    );
    for path in &closure {
        assert!(fresh.has(path), "{path} was not substituted");
        assert_eq!(
            fs::read(fresh.real_path(path)).unwrap(),
            fs::read(src.real_path(path)).unwrap()
        );
    }

    // Another key: Nix must refuse every input-addressed path of the closure.
    let other_key = kiln.create_cache("other", false);
    let wary = NixStore::new(work.path(), "wary");
    let err = failed(
        &wary.substitute(&kiln.substituter, &other_key, &top, None),
        "untrusted substitution",
    );
    assert!(err.contains("not signed by any of the keys"), "{err}");
    assert!(!wary.has(&top[0]));

    // The blob store alone is a valid static binary cache.
    let static_url = format!("file://{}/cache/main", kiln.data_dir().display());
    let from_files = NixStore::new(work.path(), "from-files");
    ok(
        &from_files.substitute(&static_url, &kiln.public_key, &top, None),
        "substitution from the stored objects",
    );
    assert!(from_files.has(&top[0]));
}

#[test]
fn push_without_a_push_token_is_refused_and_publishes_nothing() {
    let kiln = Kiln::start();
    let work = tempfile::tempdir().unwrap();
    let src = NixStore::new(work.path(), "src");
    let top = src.build(&chain_expr("kiln-no-token", 2));
    let url = zstd_url(&kiln.substituter);

    let err = failed(&src.copy_to(&url, &top, None), "nix copy without a token");
    assert!(err.contains("401"), "{err}");
    let read_only = write_netrc(work.path(), "netrc-read", &kiln.token("main", "read"));
    let err = failed(
        &src.copy_to(&url, &top, Some(&read_only)),
        "nix copy with a read token",
    );
    assert!(err.contains("403"), "{err}");
    let bogus = write_netrc(work.path(), "netrc-bogus", "kiln_0000");
    failed(
        &src.copy_to(&url, &top, Some(&bogus)),
        "nix copy with an unknown token",
    );

    for path in src.closure(&top) {
        let r = kiln.request(
            "GET",
            &format!("/cache/main/{}.narinfo", hash_part(&path)),
            &[],
            Body::Empty,
        );
        assert_eq!(r.status, 404, "{path} became visible");
    }
    let nar_dir = kiln.data_dir().join("cache/main/nar");
    assert!(
        !nar_dir.exists() || fs::read_dir(&nar_dir).unwrap().next().is_none(),
        "NAR files were stored"
    );
}

#[test]
fn private_cache_is_readable_only_with_a_read_token_through_netrc() {
    let kiln = Kiln::start();
    let private_key = kiln.create_cache("private", true);
    let url = kiln.cache_url("private");
    let work = tempfile::tempdir().unwrap();
    let src = NixStore::new(work.path(), "src");
    let top = src.build(&chain_expr("kiln-private", 2));
    let push = write_netrc(work.path(), "netrc-push", &kiln.token("private", "push"));
    ok(
        &src.copy_to(&zstd_url(&url), &top, Some(&push)),
        "push to the private cache",
    );

    let r = kiln.request("GET", "/cache/private/nix-cache-info", &[], Body::Empty);
    assert_eq!(r.status, 401);
    assert!(
        r.header("www-authenticate")
            .is_some_and(|v| v.starts_with("Basic"))
    );

    let anonymous = NixStore::new(work.path(), "anonymous");
    failed(
        &anonymous.substitute(&url, &private_key, &top, None),
        "anonymous substitution",
    );
    assert!(!anonymous.has(&top[0]));

    // A token for another cache grants nothing here.
    let wrong = write_netrc(work.path(), "netrc-wrong", &kiln.token("main", "admin"));
    let wrong_store = NixStore::new(work.path(), "wrong");
    failed(
        &wrong_store.substitute(&url, &private_key, &top, Some(&wrong)),
        "substitution with another cache's token",
    );
    assert!(!wrong_store.has(&top[0]));

    let read = write_netrc(work.path(), "netrc-read", &kiln.token("private", "read"));
    let reader = NixStore::new(work.path(), "reader");
    ok(
        &reader.substitute(&url, &private_key, &top, Some(&read)),
        "substitution with a read token",
    );
    assert!(reader.has(&top[0]));
}

#[test]
fn concurrent_pushes_of_one_closure_all_succeed() {
    let kiln = Kiln::start();
    let work = tempfile::tempdir().unwrap();
    let src = NixStore::new(work.path(), "src");
    let top = src.build(&chain_expr("kiln-concurrent", 4));
    let netrc = write_netrc(work.path(), "netrc", &kiln.token("main", "push"));
    let url = zstd_url(&kiln.substituter);

    // Three clients (each with its own narinfo disk cache) push the same closure at once.
    let clients: Vec<NixStore> = (0..3)
        .map(|i| src.another_client(&format!("pusher{i}")))
        .collect();
    let outputs: Vec<Output> = std::thread::scope(|s| {
        let pushes: Vec<_> = clients
            .iter()
            .map(|client| s.spawn(|| client.copy_to(&url, &top, Some(&netrc))))
            .collect();
        pushes.into_iter().map(|p| p.join().unwrap()).collect()
    });
    for out in &outputs {
        if !out.status.success() {
            eprintln!("SERVER LOG:\n{}", kiln.log());
        }
        ok(out, "concurrent nix copy");
    }
    let fresh = NixStore::new(work.path(), "fresh");
    ok(
        &fresh.substitute(&kiln.substituter, &kiln.public_key, &top, None),
        "substitution",
    );
    for path in src.closure(&top) {
        assert!(fresh.has(&path));
    }
}

#[test]
fn copied_build_log_is_served_under_log() {
    let kiln = Kiln::start();
    let work = tempfile::tempdir().unwrap();
    let src = NixStore::new(work.path(), "src");
    let top = src.build(&chain_expr("kiln-log", 2));
    let netrc = write_netrc(work.path(), "netrc", &kiln.token("main", "push"));
    ok(
        &src.copy_log(&kiln.substituter, &top[0], Some(&netrc)),
        "nix store copy-log",
    );

    let drvs = String::from_utf8(
        std::process::Command::new("nix-store")
            .arg("--store")
            .arg(&src.root)
            .args(["-qd", &top[0]])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let drv = drvs.trim().trim_start_matches("/nix/store/").to_owned();
    let r = kiln.request("GET", &format!("/cache/main/log/{drv}"), &[], Body::Empty);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("building kiln-log-1"), "{}", r.text());
    assert!(kiln.data_dir().join("cache/main/log").join(&drv).is_file());

    let r = kiln.request(
        "GET",
        "/cache/main/log/00000000000000000000000000000000-none.drv",
        &[],
        Body::Empty,
    );
    assert_eq!(r.status, 404);
}

#[test]
fn restart_keeps_the_default_cache_its_key_and_its_paths() {
    let kiln = Kiln::start();
    let key = kiln.public_key.clone();
    let work = tempfile::tempdir().unwrap();
    let src = NixStore::new(work.path(), "src");
    let top = src.build(&chain_expr("kiln-restart", 2));
    let netrc = write_netrc(work.path(), "netrc", &kiln.token("main", "push"));
    ok(
        &src.copy_to(&zstd_url(&kiln.substituter), &top, Some(&netrc)),
        "nix copy --to",
    );

    let kiln = kiln.restart();
    assert_eq!(
        kiln.public_key, key,
        "the default cache's key changed across a restart"
    );
    let fresh = NixStore::new(work.path(), "fresh");
    ok(
        &fresh.substitute(&kiln.substituter, &kiln.public_key, &top, None),
        "substitution after restart",
    );
    assert!(fresh.has(&top[0]));
}

#[test]
fn admin_commands_work_while_the_server_runs() {
    let kiln = Kiln::start();
    let key = kiln.create_cache("team", false);
    let r = kiln.request("GET", "/cache/team/nix-cache-info", &[], Body::Empty);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.text(),
        "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n"
    );

    let out = kiln.admin(&["cache", "list"]);
    assert!(out.status.success());
    let list = String::from_utf8(out.stdout).unwrap();
    assert!(
        list.contains(&format!("team\tpublic\tpriority 30\t{key}")),
        "{list}"
    );
    assert!(
        list.contains(&format!("main\tpublic\tpriority 30\t{}", kiln.public_key)),
        "{list}"
    );

    let out = kiln.admin(&["cache", "create", "team"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = kiln.admin(&["cache", "create", "../etc"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid cache name"));
    let out = kiln.admin(&["token", "create", "--cache", "nope", "--perm", "read"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    let out = kiln.admin(&["token", "create", "--cache", "team", "--perm", "write"]);
    assert!(!out.status.success());
}

#[test]
fn cache_api_gives_public_key_url_and_nix_conf() {
    let kiln = Kiln::start();
    let r = kiln.request("GET", "/api/v1/caches/main", &[], Body::Empty);
    assert_eq!(r.status, 200, "{}", r.text());
    let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(json["public_key"], kiln.public_key.as_str());
    assert_eq!(json["url"], kiln.substituter.as_str());
    let conf = json["nix_conf"].as_str().unwrap();
    assert!(
        conf.contains(&format!("extra-substituters = {}", kiln.substituter)),
        "{conf}"
    );
    assert!(
        conf.contains(&format!("extra-trusted-public-keys = {}", kiln.public_key)),
        "{conf}"
    );

    kiln.create_cache("hidden", true);
    let r = kiln.request("GET", "/api/v1/caches/hidden", &[], Body::Empty);
    assert_eq!(r.status, 401);
    let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(json["error"]["code"], "unauthenticated");
    let token = kiln.token("hidden", "read");
    let auth = format!("Bearer {token}");
    let r = kiln.request(
        "GET",
        "/api/v1/caches/hidden",
        &[("Authorization", &auth)],
        Body::Empty,
    );
    assert_eq!(r.status, 200);
    let r = kiln.request("GET", "/api/v1/caches", &[], Body::Empty);
    let names: Vec<String> = serde_json::from_slice::<Vec<serde_json::Value>>(&r.body)
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        vec!["main"],
        "private caches are listed only for their readers"
    );
    let r = kiln.request("GET", "/api/v1/caches/absent", &[], Body::Empty);
    assert_eq!(r.status, 404);
}

#[test]
fn upload_api_publishes_paths_nix_substitutes() {
    let kiln = Kiln::start();
    let work = tempfile::tempdir().unwrap();
    let src = NixStore::new(work.path(), "src");
    let top = src.build(&chain_expr("kiln-upload-api", 3));
    let auth = format!("Bearer {}", kiln.token("main", "push"));

    // `nix-store -qR` lists references before referrers.
    let closure = src.closure(&top);
    let upload = |path: &str| {
        let mut nar = Vec::new();
        kiln_nix::nar::dump_path(&src.real_path(path), &mut nar).unwrap();
        let query = |flag: &str| -> String {
            let out = std::process::Command::new("nix-store")
                .arg("--store")
                .arg(&src.root)
                .args(["-q", flag, path])
                .output()
                .unwrap();
            String::from_utf8(out.stdout)
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        let (refs, deriver) = (query("--references"), query("--deriver"));
        let headers = [
            ("Authorization", auth.as_str()),
            ("X-Kiln-Store-Path", path),
            ("X-Kiln-References", &refs),
            ("X-Kiln-Deriver", &deriver),
        ];
        kiln.request(
            "POST",
            "/api/v1/caches/main/upload",
            &headers,
            Body::Chunked(&nar),
        )
    };
    for path in &closure {
        let r = upload(path);
        assert_eq!(r.status, 201, "{path}: {}", r.text());
        let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(json["store_path"], path.as_str());
        assert!(json["url"].as_str().unwrap().ends_with(".nar.zst"));
    }
    let again = upload(&top[0]);
    assert_eq!(again.status, 200);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&again.body).unwrap()["already_present"],
        true
    );

    let fresh = NixStore::new(work.path(), "fresh");
    ok(
        &fresh.substitute(&kiln.substituter, &kiln.public_key, &top, None),
        "substitution of uploaded paths",
    );
    for path in &closure {
        assert_eq!(
            fs::read(fresh.real_path(path)).unwrap(),
            fs::read(src.real_path(path)).unwrap()
        );
    }
}

#[test]
fn nar_over_the_size_limit_is_refused_and_nothing_is_published() {
    let kiln = Kiln::start_with(&[("KILN_CACHE__MAX_NAR_SIZE", "4096")]);
    let work = tempfile::tempdir().unwrap();
    let src = NixStore::new(work.path(), "src");
    let big = src.build(
        r#"derivation { name = "kiln-big"; system = builtins.currentSystem; builder = "/bin/sh";
             args = [ "-c" "/bin/busybox head -c 65536 /dev/urandom > $out" ]; }"#,
    );
    let netrc = write_netrc(work.path(), "netrc", &kiln.token("main", "push"));
    let err = failed(
        &src.copy_to(&zstd_url(&kiln.substituter), &big, Some(&netrc)),
        "oversized nix copy",
    );
    assert!(err.contains("413"), "{err}");
    let r = kiln.request(
        "GET",
        &format!("/cache/main/{}.narinfo", hash_part(&big[0])),
        &[],
        Body::Empty,
    );
    assert_eq!(r.status, 404);
}

/// Waits (up to a minute, polling) until `dir` or a folder below it holds a file whose name
/// contains `needle`.
fn wait_for_file(dir: &std::path::Path, needle: &str) {
    fn found(dir: &std::path::Path, needle: &str) -> bool {
        fs::read_dir(dir).into_iter().flatten().flatten().any(|e| {
            let path = e.path();
            path.file_name().unwrap().to_string_lossy().contains(needle)
                || (path.is_dir() && found(&path, needle))
        })
    }
    for _ in 0..6000 {
        if found(dir, needle) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!(
        "no file matching {needle:?} appeared under {}",
        dir.display()
    );
}

#[test]
fn killing_the_server_mid_upload_leaves_only_whole_paths() {
    use std::io::Write;

    let kiln = Kiln::start();
    let work = tempfile::tempdir().unwrap();
    let src = NixStore::new(work.path(), "src");
    let earlier = src.build(&chain_expr("kiln-crash-earlier", 2));
    let netrc = write_netrc(work.path(), "netrc", &kiln.token("main", "push"));
    ok(
        &src.copy_to(&zstd_url(&kiln.substituter), &earlier, Some(&netrc)),
        "nix copy --to",
    );

    // A 32 MiB NAR, sent half way through the upload API, then the server is killed.
    let big = work.path().join("big");
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let noise: Vec<u8> = (0..32 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 56) as u8
        })
        .collect();
    fs::write(&big, &noise).unwrap();
    let mut nar = Vec::new();
    kiln_nix::nar::dump_path(&big, &mut nar).unwrap();
    let path = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-kiln-crash-big";
    let token = kiln.token("main", "push");
    let mut stream = std::net::TcpStream::connect(kiln.addr).unwrap();
    write!(
        stream,
        "POST /api/v1/caches/main/upload HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
         X-Kiln-Store-Path: {path}\r\nContent-Length: {}\r\n\r\n",
        kiln.addr,
        nar.len()
    )
    .unwrap();
    stream.write_all(&nar[..nar.len() / 2]).unwrap();
    // The upload is under way once its staging object is being written.
    wait_for_file(&kiln.data_dir().join("cache/main/tmp"), ".tmp");

    let kiln = kiln.crash_and_restart();
    drop(stream);
    let r = kiln.request(
        "GET",
        &format!("/cache/main/{}.narinfo", &path[11..43]),
        &[],
        Body::Empty,
    );
    assert_eq!(r.status, 404, "a half-uploaded path is served");
    // Every NAR file left in storage is one the index vouches for.
    for entry in fs::read_dir(kiln.data_dir().join("cache/main/nar")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let head = kiln.request("HEAD", &format!("/cache/main/nar/{name}"), &[], Body::Empty);
        assert_eq!(head.status, 200, "nar/{name} is stored but not recorded");
    }
    let fresh = NixStore::new(work.path(), "fresh");
    ok(
        &fresh.substitute(&kiln.substituter, &kiln.public_key, &earlier, None),
        "substitution after a crash",
    );
    assert!(fresh.has(&earlier[0]));

    // The same path uploads whole after the restart.
    let auth = format!("Bearer {}", kiln.token("main", "push"));
    let r = kiln.request(
        "POST",
        "/api/v1/caches/main/upload",
        &[("Authorization", &auth), ("X-Kiln-Store-Path", path)],
        Body::Bytes(&nar),
    );
    assert_eq!(r.status, 201, "{}", r.text());
}
