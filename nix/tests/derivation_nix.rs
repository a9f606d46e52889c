//! Derivations against real Nix 2.8: every `.drv` of the example jobset (and of a few unusual
//! expressions) parses, prints back byte-identical, shows as `nix show-derivation` shows it, and
//! gives the `.drv` and output paths Nix gave it; hostile files are refused.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_nix::derivation::{Derivation, DrvHasher, ResolveError, show_derivation_json};
use kiln_nix::{StoreDir, StorePath};
use support::{nix_ok, repo_root};

fn store() -> StoreDir {
    StoreDir::default()
}

/// Instantiates `file` (with extra `nix-instantiate` arguments), rooting the results in `roots`
/// so a garbage collection cannot remove them, and returns the `.drv` paths.
fn instantiate(file: &Path, args: &[&str], roots: &Path) -> Vec<StorePath> {
    let root = roots.join("root");
    let mut all = vec![file.to_str().unwrap(), "--add-root", root.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = nix_ok("nix-instantiate", &[], &all);
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|line| {
            // A line is the root's path (or the .drv's), then `!output` for some derivations.
            let line = line.split('!').next().unwrap();
            let target = std::fs::read_link(line).map(|t| t.to_string_lossy().into_owned());
            StorePath::parse(&target.unwrap_or_else(|_| line.to_owned())).unwrap()
        })
        .collect()
}

/// Every `.drv` in the closure of `drvs`, sorted.
fn drv_closure(drvs: &[StorePath]) -> Vec<StorePath> {
    let paths: Vec<String> = drvs.iter().map(StorePath::to_absolute).collect();
    let mut args = vec!["-qR"];
    args.extend(paths.iter().map(String::as_str));
    let out = nix_ok("nix-store", &[], &args);
    let mut closure: Vec<StorePath> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| StorePath::parse(l).unwrap())
        .filter(StorePath::is_derivation)
        .collect();
    closure.sort();
    closure
}

/// `nix show-derivation` of `drvs`, as bytes.
fn nix_show(drvs: &[StorePath]) -> Vec<u8> {
    let paths: Vec<String> = drvs.iter().map(StorePath::to_absolute).collect();
    let args: Vec<&str> = paths.iter().map(String::as_str).collect();
    nix_ok("nix", &["show-derivation"], &args)
}

fn read(path: &StorePath) -> Vec<u8> {
    std::fs::read(path.to_absolute()).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

fn parse(path: &StorePath) -> Derivation {
    Derivation::parse_drv_file(&store(), path, &read(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn store_resolver(path: &StorePath) -> Result<Derivation, ResolveError> {
    let bytes = std::fs::read(path.to_absolute())?;
    Ok(Derivation::parse_drv_file(&store(), path, &bytes)?)
}

/// The output paths `nix-store --query --outputs` gives, by output name (matched through the
/// paths the `.drv` states).
fn nix_outputs(drv: &StorePath, parsed: &Derivation) -> BTreeMap<String, StorePath> {
    let out = nix_ok(
        "nix-store",
        &[],
        &["--query", "--outputs", &drv.to_absolute()],
    );
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|line| {
            let path = StorePath::parse(line).unwrap();
            let name = parsed
                .outputs
                .iter()
                .find(|(_, o)| o.path() == Some(&path))
                .map(|(name, _)| name.clone())
                .unwrap_or_else(|| panic!("{drv}: Nix's output {path} is not in the .drv"));
            (name, path)
        })
        .collect()
}

/// Checks everything this test suite promises for each derivation in `drvs`.
fn assert_matches_nix(drvs: &[StorePath]) {
    let mut hasher = DrvHasher::new(store(), store_resolver);
    let mut parsed = BTreeMap::new();
    for path in drvs {
        let bytes = read(path);
        let drv = parse(path);
        assert_eq!(
            drv.to_aterm(&store()),
            bytes,
            "{path} does not print back byte-identical"
        );
        assert_eq!(
            &drv.drv_path(&store()).unwrap(),
            path,
            "{path}: wrong .drv path"
        );

        let computed = hasher
            .output_paths(&drv)
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let from_nix = nix_outputs(path, &drv);
        let computed: BTreeMap<String, StorePath> = computed
            .into_iter()
            .map(|(name, p)| (name, p.expect("not floating")))
            .collect();
        assert_eq!(computed, from_nix, "{path}: output paths differ from Nix's");
        hasher.check(path, &drv).unwrap_or_else(|e| panic!("{e}"));
        parsed.insert(path.clone(), drv);
    }

    let nix_json = nix_show(drvs);
    let ours = show_derivation_json(&store(), &parsed);
    assert_eq!(
        String::from_utf8_lossy(&ours),
        String::from_utf8_lossy(&nix_json),
        "JSON text differs from nix show-derivation"
    );
    assert_eq!(ours, nix_json, "JSON bytes differ from nix show-derivation");
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&nix_json) {
        for (path, drv) in &parsed {
            let ours = drv.to_json_value(&store()).unwrap();
            assert_eq!(
                ours,
                value[path.to_absolute()],
                "{path}: JSON value differs"
            );
        }
    }
}

fn demo_closure(roots: &Path) -> Vec<StorePath> {
    let jobs = instantiate(&repo_root().join("examples/demo/release.nix"), &[], roots);
    assert!(
        jobs.len() >= 25,
        "the demo jobset has only {} jobs",
        jobs.len()
    );
    drv_closure(&jobs)
}

#[test]
fn every_drv_of_the_demo_jobset_matches_nix() {
    let roots = tempfile::tempdir().unwrap();
    let closure = demo_closure(roots.path());
    assert_matches_nix(&closure);
    // The corpus covers what it should: several outputs, fixed outputs of both methods,
    // structured attributes, input sources.
    let drvs: Vec<Derivation> = closure.iter().map(parse).collect();
    assert!(drvs.iter().any(|d| d.outputs.len() == 3));
    assert!(
        drvs.iter()
            .any(|d| d.is_fixed_output() && d.outputs["out"].hash_algo_field() == "r:sha256")
    );
    assert!(
        drvs.iter()
            .any(|d| d.is_fixed_output() && d.outputs["out"].hash_algo_field() == "sha256")
    );
    assert!(
        drvs.iter()
            .any(|d| d.structured_attrs().is_some_and(|a| a.is_ok()))
    );
    assert!(drvs.iter().any(|d| !d.input_srcs.is_empty()));
    assert!(
        drvs.iter()
            .any(|d| d.env_str("_hydraAggregate") == Some("1"))
    );
}

/// Writes `expr` to `dir/name` and instantiates every attribute of it.
fn instantiate_expr(dir: &Path, name: &str, expr: &str) -> Vec<StorePath> {
    let file = dir.join(name);
    std::fs::write(&file, expr).unwrap();
    instantiate(&file, &[], dir)
}

#[test]
fn unusual_bytes_escapes_and_systems_match_nix() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("binary"),
        b"bin\xff\xfe\x01\x08\x0c\x7f \"q\" \\ end\n",
    )
    .unwrap();
    let expr = r#"
      let mk = name: attrs: derivation ({ inherit name; system = "x86_64-linux"; builder = "/bin/sh"; } // attrs);
      in {
        escapes = mk "escapes" { args = [ "" "q\"uo\\te\n\r\t" "$out" ]; x = "tab\there"; };
        control = mk "control" { x = builtins.fromJSON "\"a\\u0001b\\u0008c\\u000cd\\u007fe/f\\u00e9g\\u2028\""; };
        binary = mk "binary" { x = builtins.readFile ./binary; };
        newline-system = mk "newline-system" { system = "a\nb"; };
        many-outputs = mk "many-outputs" { outputs = [ "z" "a" "out" "bin" ]; };
        text-source = mk "text-source" { f = builtins.toFile "note.txt" "see ${./binary}"; };
      }
    "#;
    let drvs = instantiate_expr(dir.path(), "unusual.nix", expr);
    assert_eq!(drvs.len(), 6);
    assert_matches_nix(&drv_closure(&drvs));
}

#[test]
fn inputs_with_equal_hashes_have_their_outputs_merged_as_nix_does() {
    // A1 and A2 differ only in which fixed-output derivation (same output) they use, so they
    // have the same hash modulo; C uses output `a` of A1 and `b` of A2. Nix 2.8 merges the two
    // into one input `{hash: [a, b]}`, so C's output path equals that of C2 using A1 only.
    let dir = tempfile::tempdir().unwrap();
    let expr = r#"
      let
        sys = "x86_64-linux";
        src = v: derivation { name = "src"; system = sys; builder = "/bin/sh"; args = [ v ];
          outputHashMode = "flat"; outputHashAlgo = "sha256"; outputHash = builtins.hashString "sha256" "x"; };
        a = v: derivation { name = "A"; system = sys; builder = "/bin/sh"; outputs = [ "a" "b" ]; s = src v; };
        a1 = a "1"; a2 = a "2";
      in {
        c = derivation { name = "C"; system = sys; builder = "/bin/sh"; x = a1.a; y = a2.b; };
        c2 = derivation { name = "C"; system = sys; builder = "/bin/sh"; x = a1.a; y = a1.b; };
      }
    "#;
    let drvs = instantiate_expr(dir.path(), "merge.nix", expr);
    let closure = drv_closure(&drvs);
    assert_eq!(closure.len(), 6);
    assert_matches_nix(&closure);
    let outs: Vec<_> = drvs
        .iter()
        .map(|p| parse(p).outputs["out"].path().cloned())
        .collect();
    assert_ne!(drvs[0], drvs[1]);
    assert_eq!(outs[0], outs[1]);
}

#[test]
fn backslash_in_system_is_refused_where_nix_misreads_its_own_file() {
    // Nix writes `system` unescaped, then reads `\n` back as a newline and complains about the
    // output path; the parser refuses the file instead of reading something else.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sys.nix");
    std::fs::write(
        &file,
        r#"derivation { name = "backslash"; system = "a\\nb"; builder = "/bin/sh"; }"#,
    )
    .unwrap();
    let out = support::nix("nix-instantiate", &[], &[file.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let path = stderr
        .split('\'')
        .find(|s| s.ends_with("-backslash.drv"))
        .unwrap_or_else(|| panic!("no .drv path in: {stderr}"));
    let path = StorePath::parse(path).unwrap();
    let err = Derivation::parse_drv_file(&store(), &path, &read(&path)).unwrap_err();
    assert!(err.to_string().contains("backslash in system"), "{err}");
}

fn hostile_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile/drv");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

#[test]
fn hostile_corpus_is_refused_with_an_offset() {
    let files = hostile_files();
    assert!(
        files.len() >= 15,
        "hostile corpus has {} files",
        files.len()
    );
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        let err = Derivation::parse(&store(), "hostile", &bytes)
            .err()
            .unwrap_or_else(|| panic!("{} was accepted", file.display()));
        assert!(err.offset <= bytes.len(), "{}: {err}", file.display());
        assert!(
            err.to_string().starts_with("invalid derivation at byte "),
            "{err}"
        );
    }
}
