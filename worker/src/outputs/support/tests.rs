use std::os::unix::fs::symlink;

use super::*;

const OUT: &str = "/nix/store/0kh5zbb6nrwcm9ipy9nbs7nbjyjm4ais-pkg";
const DOC: &str = "/nix/store/2bcv91i8fahqghn8dmyr791iaycbsjdd-pkg-doc";

fn line(kind: &str, subtype: &str, path: &str) -> Option<ProductLine> {
    Some(ProductLine {
        kind: kind.into(),
        subtype: subtype.into(),
        path: path.into(),
    })
}

#[test]
fn product_lines_take_quoted_paths_with_spaces() {
    assert_eq!(
        parse_product_line("file binary-dist /nix/store/x-a/bin/a"),
        line("file", "binary-dist", "/nix/store/x-a/bin/a")
    );
    assert_eq!(
        parse_product_line("  doc  manual\t\"/nix/store/x-a/share/my doc.html\"  "),
        line("doc", "manual", "/nix/store/x-a/share/my doc.html")
    );
    assert_eq!(
        parse_product_line("doc manual /nix/store/x-a/share index.html"),
        line("doc", "manual", "/nix/store/x-a/share")
    );
}

#[test]
fn malformed_product_lines_are_refused() {
    for bad in [
        "",
        "file",
        "file binary-dist",
        "fi!le binary-dist /p",
        "file binary-dist \"/unterminated",
        "file binary-dist \"/p\"x",
        "file binary-dist /p/<x>",
        "file binary-dist /p a b",
    ] {
        assert_eq!(parse_product_line(bad), None, "{bad:?}");
    }
}

#[test]
fn metric_lines_have_a_name_a_finite_value_and_an_optional_unit() {
    let m = parse_metric_line("build.time 12.5 s").unwrap();
    assert_eq!(
        (m.name.as_str(), m.value, m.unit.as_deref()),
        ("build.time", 12.5, Some("s"))
    );
    let m = parse_metric_line("  size\t-3  ").unwrap();
    assert_eq!((m.name.as_str(), m.value, m.unit), ("size", -3.0, None));
    for bad in ["x", "x y", "x 1 s extra", "x NaN", "x inf", "a/b 1", ""] {
        assert!(parse_metric_line(bad).is_none(), "{bad:?}");
    }
}

#[test]
fn paths_are_normalised_lexically_and_may_not_climb_above_the_root() {
    assert_eq!(components("/a/./b//c/../d"), Some(vec!["a", "b", "d"]));
    assert_eq!(components("/.."), None);
    assert_eq!(components("relative/path"), None);
}

struct Fixture {
    _dir: tempfile::TempDir,
    outputs: Vec<BuiltOutput>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("nix/store");
    let mut outputs = Vec::new();
    for (name, path) in [("out", OUT), ("doc", DOC)] {
        let path: StorePath = path.parse().unwrap();
        let real = store.join(path.to_string());
        fs::create_dir_all(real.join("nix-support")).unwrap();
        outputs.push(BuiltOutput {
            name: name.into(),
            path,
            real,
        });
    }
    Fixture { _dir: dir, outputs }
}

#[test]
fn products_of_regular_files_get_size_and_sha256() {
    let f = fixture();
    let out = &f.outputs[0].real;
    fs::create_dir_all(out.join("share/my docs")).unwrap();
    fs::write(out.join("share/my docs/a b.txt"), b"hello").unwrap();
    fs::write(f.outputs[1].real.join("index.html"), b"<html/>").unwrap();
    fs::write(
        out.join("nix-support/hydra-build-products"),
        format!(
            "file text \"{OUT}/share/my docs/a b.txt\"\n\ndoc manual {DOC}/index.html\ndoc dir {OUT}/share\n"
        ),
    )
    .unwrap();
    let facts = read_support(&f.outputs);
    assert!(!facts.failed);
    assert_eq!(facts.products.len(), 3, "{:?}", facts.products);
    let p = &facts.products[0];
    assert_eq!((p.kind.as_str(), p.subtype.as_str()), ("file", "text"));
    assert_eq!(p.path, format!("{OUT}/share/my docs/a b.txt"));
    assert_eq!(p.name, "a b.txt");
    assert_eq!(p.file_size, Some(5));
    assert_eq!(
        p.sha256.as_deref(),
        Some("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")
    );
    assert_eq!(facts.products[1].file_size, Some(7));
    assert_eq!(facts.products[2].name, "share");
    assert_eq!(facts.products[2].file_size, None);
    assert_eq!(facts.products[2].sha256, None);
}

#[test]
fn products_outside_the_outputs_or_behind_symlinks_are_skipped() {
    let f = fixture();
    let out = &f.outputs[0].real;
    let secret = f._dir.path().join("secret");
    fs::create_dir_all(&secret).unwrap();
    fs::write(secret.join("key"), b"s3cret").unwrap();
    symlink(&secret, out.join("link")).unwrap();
    symlink(secret.join("key"), out.join("file-link")).unwrap();
    fs::write(
        out.join("nix-support/hydra-build-products"),
        format!(
            "file a {OUT}/link/key\nfile b /etc/passwd\nfile c {OUT}/missing\nfile d {OUT}/../../../etc/passwd\nfile e /nix/store/3bcv91i8fahqghn8dmyr791iaycbsjdd-other/x\nfile f {OUT}/file-link\n"
        ),
    )
    .unwrap();
    let facts = read_support(&f.outputs);
    // Only the symlink itself is a member of the output; it is not followed.
    assert_eq!(facts.products.len(), 1, "{:?}", facts.products);
    assert_eq!(facts.products[0].subtype, "f");
    assert_eq!(facts.products[0].file_size, None);
    assert_eq!(facts.products[0].sha256, None);
}

#[test]
fn failed_in_any_output_marks_the_step_and_metrics_are_read() {
    let f = fixture();
    fs::write(f.outputs[1].real.join("nix-support/failed"), b"").unwrap();
    fs::write(
        f.outputs[0].real.join("nix-support/hydra-metrics"),
        "tests.passed 41\ntests.failed 1 count\nbogus line here too\n",
    )
    .unwrap();
    let facts = read_support(&f.outputs);
    assert!(facts.failed);
    let names: Vec<_> = facts.metrics.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["tests.passed", "tests.failed"]);
    assert_eq!(facts.metrics[1].unit.as_deref(), Some("count"));
}

#[test]
fn without_declared_products_every_directory_output_is_a_nix_build_product() {
    let f = fixture();
    let facts = read_support(&f.outputs);
    let got: Vec<_> = facts
        .products
        .iter()
        .map(|p| {
            (
                p.kind.as_str(),
                p.subtype.as_str(),
                p.path.as_str(),
                p.name.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("nix-build", "", OUT, "pkg"),
            ("nix-build", "doc", DOC, "pkg-doc"),
        ]
    );
}

#[test]
fn a_symlinked_nix_support_is_ignored() {
    let f = fixture();
    let elsewhere = f._dir.path().join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    fs::write(elsewhere.join("failed"), b"").unwrap();
    fs::remove_dir(f.outputs[0].real.join("nix-support")).unwrap();
    symlink(&elsewhere, f.outputs[0].real.join("nix-support")).unwrap();
    assert!(!read_support(&f.outputs).failed);
}
