use super::*;

const DRV_PATH: &str = "/nix/store/5vjk905zfc68brfp64jd2vda51bl5yzr-b.drv";
const DRV: &str = r#"Derive([("dev","/nix/store/mx14p6a3d773pbraan1jx8zghr1ks749-b-dev","",""),("out","/nix/store/hfjjd2jzlicsl569bc7vdv55676a0ccw-b","","")],[("/nix/store/h0qb3wmwhkx4nsnnlp5janwnw1bz9ng8-a.drv",["out"])],["/nix/store/7fkyl4dcd4wp3va6qyfxz7c7gac4dwp4-src.txt"],"x86_64-linux","/bin/sh",["-c","cat /nix/store/ggbqg8lqjwj75wznkv03h0x2bjr2in0j-a /nix/store/7fkyl4dcd4wp3va6qyfxz7c7gac4dwp4-src.txt > $out"],[("builder","/bin/sh"),("dev","/nix/store/mx14p6a3d773pbraan1jx8zghr1ks749-b-dev"),("name","b"),("out","/nix/store/hfjjd2jzlicsl569bc7vdv55676a0ccw-b"),("outputs","out dev"),("requiredSystemFeatures","big-parallel"),("system","x86_64-linux")])"#;
const DEP: &str = "/nix/store/ggbqg8lqjwj75wznkv03h0x2bjr2in0j-a";
const SRC: &str = "/nix/store/7fkyl4dcd4wp3va6qyfxz7c7gac4dwp4-src.txt";

fn message() -> StepMessage {
    StepMessage {
        version: kiln_proto::PROTO_VERSION,
        step_id: 1,
        attempt: 1,
        drv_path: DRV_PATH.into(),
        drv: DRV.into(),
        input_paths: vec![DEP.into()],
        outputs: BTreeMap::from([
            (
                "dev".into(),
                "/nix/store/mx14p6a3d773pbraan1jx8zghr1ks749-b-dev".into(),
            ),
            (
                "out".into(),
                "/nix/store/hfjjd2jzlicsl569bc7vdv55676a0ccw-b".into(),
            ),
        ]),
        system: "x86_64-linux".into(),
        required_features: vec![],
        timeout_secs: 10,
        max_silent_secs: 5,
        max_log_bytes: 1000,
        max_output_bytes: 0,
    }
}

#[test]
fn a_valid_message_plans_inputs_sources_outputs_and_features() {
    let plan = plan(&message()).unwrap();
    assert_eq!(plan.inputs, [SRC, DEP]);
    let srcs: Vec<_> = plan
        .basic
        .input_srcs
        .iter()
        .map(|p| p.to_absolute())
        .collect();
    assert_eq!(srcs, [SRC, DEP]);
    assert_eq!(plan.outputs.len(), 2);
    assert_eq!(plan.system, "x86_64-linux");
    assert_eq!(
        plan.required_features.into_iter().collect::<Vec<_>>(),
        ["big-parallel"]
    );
    assert_eq!(
        plan.limits,
        BuildLimits {
            max_silent_secs: 5,
            timeout_secs: 10,
            max_log_bytes: 1000
        }
    );
}

fn refused(msg: StepMessage) -> String {
    plan(&msg).unwrap_err().0
}

#[test]
fn a_malformed_drv_is_refused_with_its_parse_error() {
    let mut msg = message();
    msg.drv = "Derive([(".into();
    let err = refused(msg);
    assert!(err.contains("is malformed"), "{err}");
    let mut msg = message();
    msg.drv = String::new();
    assert!(refused(msg).contains("is malformed"));
}

#[test]
fn a_drv_that_does_not_hash_to_its_path_is_refused() {
    let mut msg = message();
    msg.drv = DRV.replace("cat ", "cat  ");
    let err = refused(msg);
    assert!(err.contains("does not belong to"), "{err}");
}

#[test]
fn bad_paths_in_the_message_are_refused() {
    let mut msg = message();
    msg.drv_path = "/tmp/evil.drv".into();
    assert!(refused(msg).contains("drv_path"));
    let mut msg = message();
    msg.drv_path = "/nix/store/hfjjd2jzlicsl569bc7vdv55676a0ccw-b".into();
    assert!(refused(msg).contains("does not name a .drv"));
    let mut msg = message();
    msg.input_paths.push("../../etc/passwd".into());
    assert!(refused(msg).contains("input path"));
}

#[test]
fn outputs_and_system_must_match_the_drv() {
    let mut msg = message();
    msg.outputs.remove("dev");
    assert!(refused(msg).contains("differ"));
    let mut msg = message();
    msg.outputs.insert(
        "out".into(),
        "/nix/store/ggbqg8lqjwj75wznkv03h0x2bjr2in0j-a".into(),
    );
    assert!(refused(msg).contains("differ"));
    let mut msg = message();
    msg.system = "aarch64-linux".into();
    assert!(refused(msg).contains("system"));
}
