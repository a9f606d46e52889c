//! `kiln_cache::client` against a running `kiln up`: what workers push through it must be what
//! `nix` then substitutes, and every refusal must reach the caller with the server's reason.

mod harness;

use std::collections::BTreeSet;
use std::path::PathBuf;

use harness::{Kiln, NixStore, chain_expr};
use kiln_cache::client::{Body, CacheClient, ClientError, UploadRequest};
use kiln_nix::{Hash, StorePath};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn store_path(path: &str) -> StorePath {
    StorePath::parse(path).unwrap()
}

/// One path of a source store, with what an upload needs to say about it.
struct Local {
    path: StorePath,
    request: UploadRequest,
    location: PathBuf,
}

/// The closure of `top` in `src`, references before referrers, with NAR hashes and sizes
/// computed from the files.
fn closure_in_upload_order(src: &NixStore, top: &[String]) -> Vec<Local> {
    let mut pending: Vec<Local> = src
        .closure(top)
        .iter()
        .map(|p| {
            let location = src.real_path(p);
            let (nar_hash, nar_size) = kiln_nix::nar::hash_path(&location).unwrap();
            let mut request = UploadRequest::new(store_path(p));
            request.references = src.references(p).iter().map(|r| store_path(r)).collect();
            request.nar_hash = Some(nar_hash);
            request.nar_size = Some(nar_size);
            Local {
                path: store_path(p),
                request,
                location,
            }
        })
        .collect();
    let mut ordered = Vec::new();
    let mut done = BTreeSet::new();
    while !pending.is_empty() {
        let ready = pending
            .iter()
            .position(|l| {
                l.request
                    .references
                    .iter()
                    .all(|r| r == &l.path || done.contains(r))
            })
            .expect("a closure has no reference cycles");
        let local = pending.remove(ready);
        done.insert(local.path.clone());
        ordered.push(local);
    }
    ordered
}

#[test]
fn uploaded_closure_substitutes_and_a_second_upload_stores_nothing() {
    let kiln = Kiln::start();
    let work = tempfile::tempdir().unwrap();
    let src = NixStore::new(work.path(), "src");
    let top = src.build(&chain_expr("client-push", 3));
    let closure = closure_in_upload_order(&src, &top);
    assert_eq!(closure.len(), 3);
    let token = kiln.token("main", "push");
    let client = CacheClient::new(&kiln.base, "main", Some(token)).unwrap();
    let paths: Vec<StorePath> = closure.iter().map(|l| l.path.clone()).collect();

    runtime().block_on(async {
        let info = client.cache_info().await.unwrap();
        assert_eq!(info.public_key, kiln.public_key);
        assert_eq!(info.url, kiln.substituter);
        assert_eq!(client.substituter_url(), kiln.substituter);
        assert_eq!(client.missing(&paths).await.unwrap(), paths);

        for local in &closure {
            let outcome = client
                .upload_path(&local.request, &local.location)
                .await
                .unwrap();
            assert!(!outcome.already_present);
            assert_eq!(Some(&outcome.nar_hash), local.request.nar_hash.as_ref());
            assert_eq!(Some(outcome.nar_size), local.request.nar_size);
            assert_eq!(outcome.store_path, local.path);
        }
        assert!(client.missing(&paths).await.unwrap().is_empty());

        let top_path = store_path(&top[0]);
        let narinfo = client.narinfo(&top_path).await.unwrap().expect("served");
        assert_eq!(narinfo.store_path, top_path);
        assert_eq!(narinfo.compression, "zstd");
        assert_eq!(
            narinfo.references.len(),
            1,
            "the chain's top refers to one path"
        );
        let unknown = store_path("/nix/store/00000000000000000000000000000000-absent");
        assert!(client.narinfo(&unknown).await.unwrap().is_none());
        assert_eq!(
            client
                .missing(&[unknown.clone(), top_path.clone()])
                .await
                .unwrap(),
            vec![unknown]
        );

        // Already served: the outcome says so and nothing new is stored.
        let again = client
            .upload_path(&closure[0].request, &closure[0].location)
            .await
            .unwrap();
        assert!(again.already_present);
    });

    let fresh = NixStore::new(work.path(), "fresh");
    let out = fresh.substitute(&kiln.substituter, &kiln.public_key, &top, None);
    assert!(
        out.status.success(),
        "substitution failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for local in &closure {
        let full = local.path.to_absolute();
        assert!(fresh.has(&full), "{full} was not substituted");
    }
}

#[test]
fn refusals_keep_the_servers_code_and_message_and_publish_nothing() {
    let kiln = Kiln::start();
    let work = tempfile::tempdir().unwrap();
    let src = NixStore::new(work.path(), "src");
    let top = src.build(&chain_expr("client-refusals", 2));
    let closure = closure_in_upload_order(&src, &top);
    let (leaf, upper) = (&closure[0], &closure[1]);
    let push = kiln.token("main", "push");
    let read = kiln.token("main", "read");

    runtime().block_on(async {
        let bogus = CacheClient::new(&kiln.base, "main", Some("kiln_00".into())).unwrap();
        let err = bogus
            .upload_path(&leaf.request, &leaf.location)
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(401), "{err}");
        assert_eq!(err.code(), Some("invalid_token"), "{err}");
        assert!(err.is_auth());

        let reader = CacheClient::new(&kiln.base, "main", Some(read)).unwrap();
        let err = reader
            .upload_path(&leaf.request, &leaf.location)
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(403), "{err}");
        assert!(err.to_string().contains("push"), "{err}");

        let client = CacheClient::new(&kiln.base, "main", Some(push)).unwrap();
        // References first: the upper path alone is refused, naming the missing one.
        let err = client
            .upload_path(&upper.request, &upper.location)
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(422), "{err}");
        assert!(
            err.to_string().contains(&leaf.path.to_string()),
            "the message must name the missing reference: {err}"
        );

        // A wrong expected hash is caught end to end.
        let mut lying = UploadRequest::new(leaf.path.clone());
        lying.nar_hash = Some(Hash::sha256(b"something else"));
        let err = client
            .upload_path(&lying, &leaf.location)
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(422), "{err}");
        assert!(err.to_string().contains("X-Kiln-Nar-Hash"), "{err}");

        // A body that is not a NAR.
        let err = client
            .upload_nar(
                &UploadRequest::new(leaf.path.clone()),
                Body::from(b"not a nar".to_vec()),
            )
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(400), "{err}");
        assert!(err.to_string().contains("invalid NAR"), "{err}");

        // Nothing of that became visible.
        let paths = [leaf.path.clone(), upper.path.clone()];
        assert_eq!(client.missing(&paths).await.unwrap(), paths.to_vec());

        let err = CacheClient::new(&kiln.base, "nonesuch", None)
            .unwrap()
            .cache_info()
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(404), "{err}");
        assert!(matches!(err, ClientError::Server { .. }));
    });
}

#[test]
fn nars_stream_from_readers_and_logs_are_served() {
    let kiln = Kiln::start();
    let work = tempfile::tempdir().unwrap();
    let src = NixStore::new(work.path(), "src");
    let top = src.build(&chain_expr("client-reader", 1));
    let closure = closure_in_upload_order(&src, &top);
    let leaf = &closure[0];
    let mut nar = Vec::new();
    kiln_nix::nar::dump_path(&leaf.location, &mut nar).unwrap();
    let client = CacheClient::new(&kiln.base, "main", Some(kiln.token("main", "push"))).unwrap();
    let drv = store_path("/nix/store/00000000000000000000000000000000-client-reader-0.drv");

    runtime().block_on(async {
        let outcome = client
            .upload_nar(
                &leaf.request,
                Body::from_reader(std::io::Cursor::new(nar.clone())),
            )
            .await
            .unwrap();
        assert_eq!(outcome.nar_size, nar.len() as u64);
        assert!(client.narinfo(&leaf.path).await.unwrap().is_some());

        client
            .upload_log(&drv, Body::from(b"building client-reader\n".to_vec()))
            .await
            .unwrap();
        let err = client
            .upload_log(&leaf.path, Body::from(Vec::new()))
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::NotADerivation(_)), "{err}");
    });
    let log = kiln.request(
        "GET",
        &format!("/cache/main/log/{drv}"),
        &[],
        harness::Body::Empty,
    );
    assert_eq!(log.status, 200);
    assert_eq!(log.text(), "building client-reader\n");
}

#[test]
fn answers_given_before_the_body_is_read_reach_the_client_of_a_large_nar() {
    // Far more than socket buffers hold: without draining, the client would see a reset.
    let kiln = Kiln::start();
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("large");
    let content: Vec<u8> = (0..24u64 << 20).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(&tree, &content).unwrap();
    let path = store_path("/nix/store/1b2c3d4f5g6h7i8j9k0l1m2n3p4q5r6s-large");
    let request = UploadRequest::new(path.clone());
    let push = CacheClient::new(&kiln.base, "main", Some(kiln.token("main", "push"))).unwrap();
    let read = CacheClient::new(&kiln.base, "main", Some(kiln.token("main", "read"))).unwrap();

    runtime().block_on(async {
        let mut needs = request.clone();
        needs.references = vec![store_path(
            "/nix/store/00000000000000000000000000000000-absent",
        )];
        // Whether a reset beats the answer is a race: a server that did not drain the body
        // fails some of these rounds, not all.
        for _ in 0..5 {
            let err = read.upload_path(&request, &tree).await.unwrap_err();
            assert_eq!(err.status(), Some(403), "{err}");
            let err = push.upload_path(&needs, &tree).await.unwrap_err();
            assert_eq!(err.status(), Some(422), "{err}");
        }

        assert!(
            !push
                .upload_path(&request, &tree)
                .await
                .unwrap()
                .already_present
        );
        let again = push.upload_path(&request, &tree).await.unwrap();
        assert!(again.already_present);
        assert_eq!(again.store_path, path);
    });
}
