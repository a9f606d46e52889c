//! Unit tests for derivations: values below were written by Nix 2.8 on this machine.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};

use super::*;

/// A flat SHA-256 fixed-output derivation, `fod.drv`.
const FOD_PATH: &str = "swzd7v0zi95hlz7ycqw8himprmjnhim3-fod.drv";
const FOD: &str = r#"Derive([("out","/nix/store/9q0mqp4y1k819ysjzsfjah1ld74x19w2-fod","sha256","2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")],[],[],"x86_64-linux","/bin/sh",["-c","echo -n hello > $out"],[("builder","/bin/sh"),("name","fod"),("out","/nix/store/9q0mqp4y1k819ysjzsfjah1ld74x19w2-fod"),("outputHash","2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"),("outputHashAlgo","sha256"),("outputHashMode","flat"),("system","x86_64-linux")])"#;

/// Three outputs, an input derivation (`fod.drv`) and an input source.
const MULTI_PATH: &str = "j2if6rd7nmnxkmc36rq3wj5qpynvh54p-multi.drv";
const MULTI: &str = r#"Derive([("dev","/nix/store/dz2mi0aqd52l29kkwmlzvvywdjjiayj9-multi-dev","",""),("lib","/nix/store/h404sx5bly67j62dgjs4ahmi41768wim-multi-lib","",""),("out","/nix/store/p38g9pv8a6877pzwgyf1fjmc7pxgy5ws-multi","","")],[("/nix/store/swzd7v0zi95hlz7ycqw8himprmjnhim3-fod.drv",["out"])],["/nix/store/4b9whppmw7lyi3z8gzasjcyy7zzhdj05-a.nix"],"x86_64-linux","/bin/sh",["-c","echo hi > $out"],[("builder","/bin/sh"),("dep","/nix/store/9q0mqp4y1k819ysjzsfjah1ld74x19w2-fod"),("dev","/nix/store/dz2mi0aqd52l29kkwmlzvvywdjjiayj9-multi-dev"),("lib","/nix/store/h404sx5bly67j62dgjs4ahmi41768wim-multi-lib"),("name","multi"),("out","/nix/store/p38g9pv8a6877pzwgyf1fjmc7pxgy5ws-multi"),("outputs","out dev lib"),("src","/nix/store/4b9whppmw7lyi3z8gzasjcyy7zzhdj05-a.nix"),("system","x86_64-linux")])"#;

/// A recursive SHA-256 fixed-output derivation, `fodr.drv`.
const FODR_PATH: &str = "zafs6sm0gh19pmibys6vmwpnz5agkrc0-fodr.drv";
const FODR: &str = r#"Derive([("out","/nix/store/vfrhc97sk0aa774c0bcr75ln5pc3yjd1-fodr","r:sha256","2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")],[],[],"x86_64-linux","/bin/sh",["-c","echo -n hello > $out"],[("builder","/bin/sh"),("name","fodr"),("out","/nix/store/vfrhc97sk0aa774c0bcr75ln5pc3yjd1-fodr"),("outputHash","sha256-LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ="),("outputHashAlgo","sha256"),("outputHashMode","recursive"),("system","x86_64-linux")])"#;

/// `__structuredAttrs = true`, depending on `fodr.drv`.
const STRUCTURED_PATH: &str = "fymnm4nlkqxyv354q0a7bgvqvnyfanz2-s.drv";
const STRUCTURED: &str = r#"Derive([("out","/nix/store/hq40bja9w3c5piipgbn3gqd2n1fxqzxx-s","","")],[("/nix/store/zafs6sm0gh19pmibys6vmwpnz5agkrc0-fodr.drv",["out"])],[],"x86_64-linux","/bin/sh",["-c","echo hi > $out"],[("__json","{\"builder\":\"/bin/sh\",\"dep\":\"/nix/store/vfrhc97sk0aa774c0bcr75ln5pc3yjd1-fodr\",\"foo\":[1,2,{\"x\":\"y\"}],\"name\":\"s\",\"system\":\"x86_64-linux\"}"),("out","/nix/store/hq40bja9w3c5piipgbn3gqd2n1fxqzxx-s")])"#;

const ALL: [(&str, &str); 4] = [
    (FOD_PATH, FOD),
    (MULTI_PATH, MULTI),
    (FODR_PATH, FODR),
    (STRUCTURED_PATH, STRUCTURED),
];

fn store() -> StoreDir {
    StoreDir::default()
}

fn path(base: &str) -> StorePath {
    StorePath::from_base_name(base).unwrap()
}

fn parse(base: &str, text: &str) -> Derivation {
    Derivation::parse_drv_file(&store(), &path(base), text.as_bytes()).unwrap()
}

fn parse_err(text: impl AsRef<[u8]>) -> ParseError {
    Derivation::parse(&store(), "x", text.as_ref()).unwrap_err()
}

/// A resolver over the fixtures that counts how often it is asked.
fn fixture_resolver(
    calls: &Cell<usize>,
) -> impl FnMut(&StorePath) -> Result<Derivation, ResolveError> + '_ {
    move |p: &StorePath| {
        calls.set(calls.get() + 1);
        let (base, text) = ALL
            .iter()
            .find(|(base, _)| *base == p.to_string())
            .ok_or_else(|| format!("no fixture for {p}"))?;
        Ok(parse(base, text))
    }
}

fn minimal(outputs: &str, env: &str) -> String {
    format!(r#"Derive([{outputs}],[],[],"x86_64-linux","/bin/sh",[],[{env}])"#)
}

const OUT: &str = r#"("out","/nix/store/p38g9pv8a6877pzwgyf1fjmc7pxgy5ws-multi","","")"#;

#[test]
fn nix_written_derivations_print_back_byte_identical() {
    for (base, text) in ALL {
        let drv = parse(base, text);
        assert_eq!(
            String::from_utf8(drv.to_aterm(&store())).unwrap(),
            text,
            "{base}"
        );
    }
}

#[test]
fn parsed_fields_hold_what_nix_wrote() {
    let drv = parse(MULTI_PATH, MULTI);
    assert_eq!(drv.name, "multi");
    assert_eq!(
        drv.outputs.keys().collect::<Vec<_>>(),
        ["dev", "lib", "out"]
    );
    assert_eq!(
        drv.outputs["dev"],
        DerivationOutput::InputAddressed(path("dz2mi0aqd52l29kkwmlzvvywdjjiayj9-multi-dev"))
    );
    assert_eq!(
        drv.input_drvs[&path(FOD_PATH)],
        BTreeSet::from(["out".to_owned()])
    );
    assert_eq!(
        drv.input_srcs,
        BTreeSet::from([path("4b9whppmw7lyi3z8gzasjcyy7zzhdj05-a.nix")])
    );
    assert_eq!(drv.system_str(), Some("x86_64-linux"));
    assert_eq!(drv.args, [b"-c".to_vec(), b"echo hi > $out".to_vec()]);
    assert_eq!(drv.env_str("outputs"), Some("out dev lib"));
    assert_eq!(drv.kind(), Ok(DerivationKind::InputAddressed));

    let fodr = parse(FODR_PATH, FODR);
    let DerivationOutput::Fixed { hash, .. } = &fodr.outputs["out"] else {
        panic!("not fixed")
    };
    assert_eq!(hash.method, FileIngestionMethod::Recursive);
    assert_eq!(hash.method_algo(), "r:sha256");
    assert!(fodr.is_fixed_output());
}

#[test]
fn every_byte_survives_escaping_and_only_five_are_escaped() {
    let all: Vec<u8> = (0..=255).collect();
    let mut drv = parse(FOD_PATH, FOD);
    drv.builder = all.clone();
    drv.args = vec![all.clone(), Vec::new(), b"\\\"\n\r\t".to_vec()];
    drv.env.insert(all.clone(), all.clone());
    let text = drv.to_aterm(&store());
    let escaped = br#""\\\"\n\r\t""#;
    assert!(text.windows(escaped.len()).any(|w| w == escaped));
    // Outside the five escapes, bytes are written raw: a raw 0x00 and 0xff appear.
    assert!(text.contains(&0) && text.contains(&0xff));
    let back = Derivation::parse(&store(), "fod", &text).unwrap();
    assert_eq!(back, drv);
}

#[test]
fn drv_paths_and_output_paths_match_nix() {
    let calls = Cell::new(0);
    let mut hasher = DrvHasher::new(store(), fixture_resolver(&calls));
    for (base, text) in ALL {
        let drv = parse(base, text);
        assert_eq!(drv.drv_path(&store()).unwrap(), path(base));
        let computed = hasher.output_paths(&drv).unwrap();
        let stated: BTreeMap<String, Option<StorePath>> = drv
            .outputs
            .iter()
            .map(|(n, o)| (n.clone(), o.path().cloned()))
            .collect();
        assert_eq!(computed, stated, "{base}");
        hasher.check(&path(base), &drv).unwrap();
    }
    // fod.drv and fodr.drv are resolved once each, however often they are needed.
    hasher.hash_of_path(&path(MULTI_PATH)).unwrap();
    assert_eq!(calls.get(), 3);
}

#[test]
fn fixed_output_hash_modulo_ignores_how_the_output_is_made() {
    let calls = Cell::new(0);
    let mut fod = parse(FOD_PATH, FOD);
    let before = hash_derivation_modulo(&store(), &fod, fixture_resolver(&calls), false).unwrap();
    fod.args.push(b"--different-url".to_vec());
    fod.env
        .insert(b"urls".to_vec(), b"https://elsewhere.example".to_vec());
    let after = hash_derivation_modulo(&store(), &fod, fixture_resolver(&calls), false).unwrap();
    assert_eq!(before, after);
    let expected = Hash::sha256(
        "fixed:out:sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824:\
         /nix/store/9q0mqp4y1k819ysjzsfjah1ld74x19w2-fod",
    );
    assert_eq!(before.outputs["out"], expected);
}

#[test]
fn check_reports_a_tampered_output_path_and_environment() {
    let calls = Cell::new(0);
    let mut hasher = DrvHasher::new(store(), fixture_resolver(&calls));
    let text = MULTI.replace(r#"("name","multi")"#, r#"("name","multj")"#);
    let drv = Derivation::parse(&store(), "multi", text.as_bytes()).unwrap();
    let drv_path = drv.drv_path(&store()).unwrap();
    let err = hasher.check(&drv_path, &drv).unwrap_err();
    assert!(
        matches!(err, HashModuloError::WrongOutputPath { ref output, .. } if output == "dev"),
        "{err}"
    );

    let mut drv = parse(MULTI_PATH, MULTI);
    drv.env
        .insert(b"lib".to_vec(), b"/nix/store/elsewhere".to_vec());
    let drv_path = drv.drv_path(&store()).unwrap();
    let err = hasher.check(&drv_path, &drv).unwrap_err();
    assert!(
        matches!(err, HashModuloError::WrongEnv { ref output, .. } if output == "lib"),
        "{err}"
    );

    let err = hasher
        .check(&path(FOD_PATH), &parse(MULTI_PATH, MULTI))
        .unwrap_err();
    assert!(matches!(err, HashModuloError::WrongDrvPath { .. }), "{err}");
}

#[test]
fn cyclic_inputs_are_an_error_not_a_hang() {
    let a = path("00000000000000000000000000000000-a.drv");
    let b = path("11111111111111111111111111111111-b.drv");
    let make = |input: &StorePath| {
        let mut drv = parse(MULTI_PATH, MULTI);
        drv.input_drvs = BTreeMap::from([(input.clone(), BTreeSet::from(["out".to_owned()]))]);
        drv
    };
    let (a2, b2) = (a.clone(), b.clone());
    let resolver = move |p: &StorePath| -> Result<Derivation, ResolveError> {
        Ok(if *p == a2 { make(&b2) } else { make(&a2) })
    };
    let err = DrvHasher::new(store(), resolver)
        .hash_of_path(&a)
        .unwrap_err();
    assert!(matches!(err, HashModuloError::Cycle(_)), "{err}");
}

#[test]
fn missing_input_output_and_resolver_failure_are_reported() {
    let calls = Cell::new(0);
    let text = MULTI.replace(r#"fod.drv",["out"]"#, r#"fod.drv",["dev"]"#);
    let drv = Derivation::parse(&store(), "multi", text.as_bytes()).unwrap();
    let err = hash_derivation_modulo(&store(), &drv, fixture_resolver(&calls), true).unwrap_err();
    assert!(
        matches!(err, HashModuloError::MissingOutput { ref output, .. } if output == "dev"),
        "{err}"
    );

    let failing =
        |_: &StorePath| -> Result<Derivation, ResolveError> { Err("disk on fire".into()) };
    let err =
        hash_derivation_modulo(&store(), &parse(MULTI_PATH, MULTI), failing, true).unwrap_err();
    assert!(
        err.to_string().contains("disk on fire") && err.to_string().contains(FOD_PATH),
        "{err}"
    );
}

#[test]
fn deep_input_chains_hash_without_recursion() {
    // A chain this long would overflow a test thread's stack if each level took a stack frame.
    let depth = 20_000usize;
    // Decimal digits are nixbase32 digits, so `{i:032}` is a valid hash part.
    let path_of = |i: usize| path(&format!("{i:032}-d{i}.drv"));
    let resolver = move |p: &StorePath| -> Result<Derivation, ResolveError> {
        let i: usize = p
            .name()
            .trim_start_matches('d')
            .trim_end_matches(".drv")
            .parse()?;
        let mut drv = parse(MULTI_PATH, MULTI);
        drv.input_drvs = if i + 1 < depth {
            BTreeMap::from([(path_of(i + 1), BTreeSet::from(["out".to_owned()]))])
        } else {
            BTreeMap::new()
        };
        Ok(drv)
    };
    let hash = DrvHasher::new(store(), resolver)
        .hash_of_path(&path_of(0))
        .unwrap()
        .clone();
    assert_eq!(hash.outputs.len(), 3);
}

#[test]
fn structured_attrs_are_read_from_json_env() {
    let drv = parse(STRUCTURED_PATH, STRUCTURED);
    let attrs = drv.structured_attrs().unwrap().unwrap();
    assert_eq!(attrs["foo"], serde_json::json!([1, 2, {"x": "y"}]));
    assert!(parse(FOD_PATH, FOD).structured_attrs().is_none());
}

#[test]
fn floating_and_deferred_outputs_round_trip() {
    for outputs in [
        r#"("out","","r:sha256","")"#,
        r#"("dev","","",""),("out","","","")"#,
    ] {
        let text = minimal(outputs, "");
        let drv = Derivation::parse(&store(), "ca", text.as_bytes()).unwrap();
        assert_eq!(drv.to_aterm(&store()), text.as_bytes());
        assert!(drv.outputs.values().all(|o| o.path().is_none()));
    }
}

#[test]
fn json_matches_nix_formatting() {
    let mut drvs = BTreeMap::new();
    drvs.insert(path(FOD_PATH), parse(FOD_PATH, FOD));
    let json = String::from_utf8(show_derivation_json(&store(), &drvs)).unwrap();
    let expected = r#"{
  "/nix/store/swzd7v0zi95hlz7ycqw8himprmjnhim3-fod.drv": {
    "outputs": {
      "out": {
        "path": "/nix/store/9q0mqp4y1k819ysjzsfjah1ld74x19w2-fod",
        "hashAlgo": "sha256",
        "hash": "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
      }
    },
    "inputSrcs": [],
    "inputDrvs": {},
    "system": "x86_64-linux",
    "builder": "/bin/sh",
    "args": [
      "-c",
      "echo -n hello > $out"
    ],
    "env": {
      "builder": "/bin/sh",
      "name": "fod",
      "out": "/nix/store/9q0mqp4y1k819ysjzsfjah1ld74x19w2-fod",
      "outputHash": "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
      "outputHashAlgo": "sha256",
      "outputHashMode": "flat",
      "system": "x86_64-linux"
    }
  }
}
"#;
    assert_eq!(json, expected);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        value[store().display(&path(FOD_PATH))],
        drvs[&path(FOD_PATH)].to_json_value(&store()).unwrap()
    );
    assert_eq!(show_derivation_json(&store(), &BTreeMap::new()), b"{}\n");
}

#[test]
fn json_escapes_control_bytes_like_nix_and_passes_other_bytes_through() {
    let mut drv = parse(FOD_PATH, FOD);
    drv.env = BTreeMap::from([(
        b"x".to_vec(),
        b"a\x01b\x08c\x0cd\x7fe/f\"\\\n\r\t\xff".to_vec(),
    )]);
    let json = show_derivation_json(&store(), &BTreeMap::from([(path(FOD_PATH), drv.clone())]));
    let line = br#""x": "a\u0001b\u0008c\u000cd"#;
    assert!(json.windows(line.len()).any(|w| w == line));
    let tail = b"e/f\\\"\\\\\\n\\r\\t\xff\"";
    assert!(json.windows(tail.len()).any(|w| w == tail));
    let err = drv.to_json_value(&store()).unwrap_err();
    assert_eq!(err.field, "env.x");
}

fn assert_refused(text: impl AsRef<[u8]>, offset: usize, message: &str) {
    let err = parse_err(text);
    assert_eq!(err.offset, offset, "{err}");
    assert!(
        err.to_string().contains(message),
        "{err:?} lacks {message:?}"
    );
}

/// Expects a refusal at the first occurrence of `needle` in `text` (the first `"` after the
/// outputs list opens, for needles starting with a quote).
fn refused_at(text: impl AsRef<str>, needle: &str, message: &str) {
    let text = text.as_ref();
    let search_from = if needle.starts_with('"') {
        "Derive([(".len()
    } else {
        0
    };
    let offset = search_from + text[search_from..].find(needle).expect("needle in text");
    assert_refused(text, offset, message);
}

#[test]
fn every_truncation_of_a_valid_drv_is_refused() {
    for (_, text) in ALL {
        for len in 0..text.len() {
            let err = parse_err(&text.as_bytes()[..len]);
            assert!(err.offset <= len, "{len}: {err}");
        }
    }
}

#[test]
fn malformed_derivations_are_refused_with_what_and_where() {
    assert_refused("", 0, "expected `Derive(`, found end of input");
    assert_refused("garbage", 0, "expected `Derive(`");
    assert_refused(
        minimal(OUT, "") + " ",
        minimal(OUT, "").len(),
        "after the end",
    );
    // Offsets into the environment list: `env` starts two bytes before the end of `minimal`.
    let env = minimal(OUT, "").len() - 2;
    assert_refused(
        minimal(OUT, r#"("a","\q")"#),
        env + 6,
        r"escape sequence \q",
    );
    assert_refused(
        minimal(OUT, r#"("a","\é")"#),
        env + 6,
        r"escape sequence \é",
    );
    assert_refused(minimal(OUT, r#"("a","x)]"#), env + 5, "not terminated");
    assert_refused(
        minimal(OUT, r#"("b",""),("a","")"#),
        env + 10,
        "out of order",
    );
    assert_refused(minimal(OUT, r#"("a",""),("a","")"#), env + 10, "repeated");
    assert_refused(minimal(OUT, r#"("a","";"#), env + 7, "expected `)`");
    assert_refused(
        minimal(OUT, r#"("a","")("b","")"#),
        env + 8,
        "expected `,` or `]`",
    );
    assert_refused(minimal("", ""), 7, "no outputs");
    let fixed = r#"("out","/nix/store/9q0mqp4y1k819ysjzsfjah1ld74x19w2-fod","sha256","2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")"#;
    assert_refused(
        minimal(&format!(r#"("dev","","",""),{fixed}"#), ""),
        7,
        "mixes output kinds",
    );
    assert_refused(
        minimal(&fixed.replace("\"out\"", "\"bin\""), ""),
        7,
        "named \"out\"",
    );
    refused_at(
        minimal(&fixed.replace("sha256", "sha257"), ""),
        r#""sha257""#,
        "unknown hash algorithm",
    );
    refused_at(
        minimal(&fixed.replace("2cf24d", "2CF24D"), ""),
        r#""2CF24D"#,
        "lower-case hex",
    );
    refused_at(
        minimal(&fixed.replace("9824\"", "98\""), ""),
        r#""2cf24d"#,
        "lower-case hex",
    );
    refused_at(
        minimal(
            &fixed.replace("/nix/store/9q0mqp4y1k819ysjzsfjah1ld74x19w2-fod", ""),
            "",
        ),
        r#""","#,
        "no path",
    );
    refused_at(
        minimal(r#"("out","/nix/store/x","","")"#, ""),
        r#""/nix"#,
        "invalid store path",
    );
    refused_at(
        minimal(
            r#"("out","/tmp/9q0mqp4y1k819ysjzsfjah1ld74x19w2-fod","","")"#,
            "",
        ),
        r#""/tmp"#,
        "not in the store",
    );
    refused_at(
        minimal(
            r#"("out","/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-fod","","")"#,
            "",
        ),
        r#""/nix"#,
        "invalid hash part",
    );
    refused_at(
        minimal(r#"("o/t","","","")"#, ""),
        r#""o/t"#,
        "invalid output name",
    );
    refused_at(
        minimal(r#"("","","","")"#, ""),
        r#""""#,
        "invalid output name",
    );
    refused_at(
        minimal(r#"("out","","","abc")"#, ""),
        r#""abc"#,
        "hash but no hash algorithm",
    );
    refused_at(
        minimal(
            r#"("out","/nix/store/9q0mqp4y1k819ysjzsfjah1ld74x19w2-fod","r:sha256","")"#,
            "",
        ),
        r#""/nix"#,
        "floating output has a path",
    );
    refused_at(
        minimal(OUT, "").replace("x86_64-linux", r"x86\n"),
        r"\n",
        "backslash in system",
    );
    let input = r#"Derive([("out","","","")],[("/nix/store/9q0mqp4y1k819ysjzsfjah1ld74x19w2-fod",["out"])],[],"s","b",[],[])"#;
    refused_at(input, r#""/nix"#, "not a .drv path");
    let srcs = r#"Derive([("out","","","")],[],["/nix/store/h404sx5bly67j62dgjs4ahmi41768wim-b","/nix/store/9q0mqp4y1k819ysjzsfjah1ld74x19w2-a"],"s","b",[],[])"#;
    refused_at(srcs, r#""/nix/store/9q0"#, "input source");
    let mut non_utf8 = minimal(
        r#"("out","/nix/store/9q0mqp4y1k819ysjzsfjah1ld74x19w2-fo?","","")"#,
        "",
    );
    let at_path = non_utf8.find(r#""/nix"#).unwrap();
    let at = non_utf8.find('?').unwrap();
    let mut non_utf8 = std::mem::take(&mut non_utf8).into_bytes();
    non_utf8[at] = 0xff;
    assert_refused(non_utf8, at_path, "invalid store path");
    let bad_name = Derivation::parse(&store(), "a/b", minimal(OUT, "").as_bytes()).unwrap_err();
    assert!(
        matches!(bad_name.kind, ParseErrorKind::BadName(_)),
        "{bad_name}"
    );
}

#[test]
fn nesting_and_huge_strings_cost_no_more_than_the_input() {
    let deep = format!("Derive({}", "[".repeat(1_000_000));
    assert_refused(deep, 8, "expected `(`");
    let huge = "a".repeat(50_000_000);
    let text = minimal(OUT, &format!(r#"("big","{huge}")"#));
    let drv = Derivation::parse(&store(), "x", text.as_bytes()).unwrap();
    assert_eq!(drv.env_var("big").map(<[u8]>::len), Some(huge.len()));
    assert_refused(
        &text[..text.len() - 5],
        minimal(OUT, "").len() + 5,
        "not terminated",
    );
}
