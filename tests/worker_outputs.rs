//! What a worker reads from and does with a build's outputs: Hydra's `nix-support` files,
//! several outputs that refer to each other, and the output size limit.

mod harness;
mod worker_support;

use kiln_proto::StepStatus;
use worker_support::{Farm, drv};

#[test]
fn nix_support_failed_gives_failed_with_output_and_the_outputs_are_uploaded() {
    let farm = Farm::start();
    let expr = format!(
        "{{ tests = {}; }}",
        drv(
            "tests",
            "/bin/busybox mkdir -p $out/nix-support; echo 3 tests failed > $out/report; \
             /bin/busybox touch $out/nix-support/failed"
        )
    );
    let tests_drv = farm.instantiate(&expr, "tests");
    let exec = farm.executor("w");
    let (result, _) = farm.run(&exec, &farm.message(1, &tests_drv));
    assert_eq!(
        result.status,
        StepStatus::FailedWithOutput,
        "{:?}",
        result.message
    );
    let out = result.outputs["out"].path.clone();
    let fresh = farm.assert_substitutes("fresh", std::slice::from_ref(&out));
    let report = std::fs::read_to_string(fresh.real_path(&out).join("report")).unwrap();
    assert_eq!(report, "3 tests failed\n");
}

#[test]
fn build_products_and_metrics_are_reported() {
    let farm = Farm::start();
    let script = "/bin/busybox mkdir -p \"$out/nix-support\" \"$out/share/my docs\"; \
         echo hello world > \"$out/share/my docs/read me.txt\"; \
         /bin/busybox mkdir $out/html; echo '<p/>' > $out/html/index.html; \
         echo \"doc readme \\\"$out/share/my docs/read me.txt\\\"\" >> $out/nix-support/hydra-build-products; \
         echo \"doc manual $out/html index.html\" >> $out/nix-support/hydra-build-products; \
         echo \"file binary-dist /etc/passwd\" >> $out/nix-support/hydra-build-products; \
         echo 'tests.passed 41' >> $out/nix-support/hydra-metrics; \
         echo 'build.time 2.5 s' >> $out/nix-support/hydra-metrics; \
         echo 'not a metric line at all' >> $out/nix-support/hydra-metrics";
    let expr = format!("{{ pkg = {}; }}", drv("pkg", script));
    let pkg_drv = farm.instantiate(&expr, "pkg");
    let exec = farm.executor("w");
    let result = farm.run_ok(&exec, &farm.message(1, &pkg_drv));
    let out = &result.outputs["out"].path;

    assert_eq!(result.products.len(), 2, "{:?}", result.products);
    let readme = &result.products[0];
    assert_eq!(
        (readme.kind.as_str(), readme.subtype.as_str()),
        ("doc", "readme")
    );
    assert_eq!(readme.path, format!("{out}/share/my docs/read me.txt"));
    assert_eq!(readme.name, "read me.txt");
    assert_eq!(readme.file_size, Some(12));
    assert_eq!(
        readme.sha256.as_deref(),
        Some("a948904f2f0f479b8f8197694b30184b0d2ed1c1cd2a1ec0fb85d299a192a447")
    );
    let manual = &result.products[1];
    assert_eq!(manual.path, format!("{out}/html"));
    assert_eq!((manual.file_size, manual.sha256.as_deref()), (None, None));

    let metrics: Vec<_> = result
        .metrics
        .iter()
        .map(|m| (m.name.as_str(), m.value, m.unit.as_deref()))
        .collect();
    assert_eq!(
        metrics,
        [("tests.passed", 41.0, None), ("build.time", 2.5, Some("s"))]
    );
}

#[test]
fn outputs_referring_to_each_other_are_uploaded_in_reference_order() {
    let farm = Farm::start();
    // dev -> out -> lib; Nix sorts outputs by name (dev, lib, out), so uploading in that order
    // would be refused by the cache for missing references.
    let expr = "{ multi = derivation { name = \"multi\"; system = builtins.currentSystem; \
         builder = \"/bin/sh\"; outputs = [ \"out\" \"lib\" \"dev\" ]; args = [ \"-c\" \
         \"echo lib > $lib; /bin/busybox mkdir $out; echo $lib > $out/uses-lib; echo $out > $dev\" ]; }; }";
    let multi_drv = farm.instantiate(expr, "multi");
    let exec = farm.executor("w");
    let result = farm.run_ok(&exec, &farm.message(1, &multi_drv));
    let names: Vec<_> = result.outputs.keys().map(String::as_str).collect();
    assert_eq!(names, ["dev", "lib", "out"]);
    for info in result.outputs.values() {
        assert!(info.nar_hash.starts_with("sha256:") && info.nar_size > 0);
    }
    let dev = result.outputs["dev"].path.clone();
    let fresh = farm.assert_substitutes("fresh", std::slice::from_ref(&dev));
    assert!(fresh.has(&result.outputs["out"].path));
    assert!(fresh.has(&result.outputs["lib"].path));
    // The only directory output is a `nix-build` product; no products file was written.
    let products: Vec<_> = result
        .products
        .iter()
        .map(|p| (p.kind.as_str(), p.subtype.as_str(), p.path.as_str()))
        .collect();
    assert_eq!(
        products,
        [("nix-build", "", result.outputs["out"].path.as_str())]
    );
}

#[test]
fn outputs_beyond_the_size_limit_are_not_uploaded() {
    let farm = Farm::start();
    let expr = format!(
        "{{ big = {}; }}",
        drv(
            "big",
            "i=0; while [ $i -lt 2048 ]; do echo 0123456789abcdef0123456789abcde >> $out; i=$((i+1)); done"
        )
    );
    let big_drv = farm.instantiate(&expr, "big");
    let exec = farm.executor("w");
    let mut msg = farm.message(1, &big_drv);
    msg.max_output_bytes = 32 * 1024;
    let (result, _) = farm.run(&exec, &msg);
    assert_eq!(
        result.status,
        StepStatus::OutputLimitExceeded,
        "{:?}",
        result.message
    );
    assert!(result.message.unwrap().contains("32768"));
    assert!(result.outputs.is_empty());
    let out = msg.outputs["out"].clone();
    let hash = out
        .trim_start_matches("/nix/store/")
        .split('-')
        .next()
        .unwrap();
    let resp = farm.kiln.request(
        "HEAD",
        &format!("/cache/main/{hash}.narinfo"),
        &[],
        harness::Body::Empty,
    );
    assert_eq!(resp.status, 404, "the output must not reach the cache");
}
