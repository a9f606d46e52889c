//! `GET /api/v1/status` of `kiln up`: the process is its own leading coordinator, and each local
//! worker lists the steps it is building while it builds them; the dashboard, rendered by a real
//! headless Chromium, shows the same.

mod harness;

use harness::farm::FarmApi;
use harness::farm::TestFarm;

const SLOW: &str = r#"
{ system ? builtins.currentSystem }:
{
  slow = derivation {
    name = "slow";
    inherit system;
    builder = "/bin/sh";
    args = [ "-c" "echo started; /bin/busybox sleep 12; echo done > $out" ];
  };
}
"#;

#[test]
fn status_lists_the_leader_and_what_each_worker_builds() {
    let farm = TestFarm::start().with_workers(2).run();
    let status = farm.get("/api/v1/status");
    assert!(status["coordinator_leader"].as_str().is_some(), "{status}");
    assert_eq!(status["live"], true, "{status}");
    let workers = status["workers"].as_array().unwrap();
    let names: Vec<&str> = workers
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["local-0", "local-1"], "{status}");
    for w in workers {
        assert_eq!(w["slots"], 1, "{status}");
        assert!(w["systems"].as_array().unwrap().len() >= 2, "{status}");
        assert!(w["running"].as_array().unwrap().is_empty(), "{status}");
    }

    let repo = farm.repo("slow", &[("release.nix", SLOW)]);
    farm.add_jobset("p", "slow", &repo, "release.nix");
    let id = farm.evaluate("p", "slow");
    farm.wait_eval(id);
    let running = farm.wait_for("a worker building the slow step", || {
        let status = farm.get("/api/v1/status");
        status["workers"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|w| w["running"].as_array().unwrap().clone())
            .next()
    });
    assert!(
        running["drv_path"].as_str().unwrap().ends_with("-slow.drv"),
        "{running}"
    );
    assert_eq!(running["attempt"], 1, "{running}");
    // The dashboard, as a browser renders it, lists the workers and the step being built.
    let dom = browser_dom(&format!("{}/", farm.kiln.base));
    assert!(dom.contains("Leading coordinator"), "{dom}");
    assert!(dom.contains("local-0") && dom.contains("local-1"), "{dom}");
    assert!(dom.contains("-slow.drv"), "{dom}");
    let eval = farm.wait_builds(id);
    assert_eq!(TestFarm::statuses(&eval)["slow"], "succeeded");
    let status = farm.get("/api/v1/status");
    assert!(
        status["workers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["running"].as_array().unwrap().is_empty()),
        "{status}"
    );
    // The OpenAPI document describes the endpoint.
    let doc = farm.get("/api/v1/openapi.json");
    assert!(doc["paths"]["/api/v1/status"]["get"].is_object());
}

/// The DOM of `url` after headless Chromium loaded it.
fn browser_dom(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .output()
        .expect("run chromium (install it with `scripts/install-deps test`)");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
