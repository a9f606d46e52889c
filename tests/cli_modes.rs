//! The distributed modes' own checks, which need no services: `kiln check-config` names what a
//! role lacks and never prints secrets, and `kiln worker` refuses to start with a token that
//! cannot push (it would fail every step it took).

mod harness;

use std::process::Command;

use harness::Kiln;

fn kiln() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    for (key, _) in std::env::vars() {
        if key.starts_with("KILN_") || key.starts_with("AWS_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

#[test]
fn check_config_names_what_each_role_lacks_and_hides_secrets() {
    let out = kiln()
        .args(["check-config", "--for", "worker"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for missing in [
        "KILN_AMQP_URL",
        "KILN_REDIS_URL",
        "KILN_WEB_URL",
        "KILN_WORKER_TOKEN",
    ] {
        assert!(err.contains(missing), "{err}");
    }

    let out = kiln()
        .args(["check-config", "--for", "coordinator"])
        .env(
            "KILN_DATABASE_URL",
            "postgres://kiln:hunter2@db.internal/kiln",
        )
        .env("KILN_AMQP_URL", "amqp://kiln:hunter3@mq.internal/%2f")
        .env("KILN_REDIS_URL", "redis://redis.internal:6379/0")
        .env("KILN_WEB_URL", "http://web.internal:8080")
        .env(
            "KILN_CACHE_STORAGE",
            "s3://nars?endpoint=http://s3.internal:9000",
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("postgres://kiln:***@db.internal/kiln"),
        "{text}"
    );
    assert!(
        text.contains("s3 bucket nars at http://s3.internal:9000"),
        "{text}"
    );
    assert!(!text.contains("hunter"), "{text}");

    let out = kiln()
        .args(["check-config"])
        .env("KILN_CACHE_STORAGE", "s3://")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bucket name is missing"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_worker_whose_token_cannot_push_refuses_to_start() {
    let web = Kiln::start();
    let read = web.token("main", "read");
    let dir = tempfile::tempdir().unwrap();
    for (token, expected) in [
        ("kiln_not-a-token".to_owned(), "is not a valid token"),
        (read, "may not push to cache main"),
    ] {
        let out = kiln()
            .args(["worker", "--name", "w", "--data-dir"])
            .arg(dir.path())
            // Never reached: the token is checked first.
            .env("KILN_AMQP_URL", "amqp://127.0.0.1:1/%2f")
            .env("KILN_REDIS_URL", "redis://127.0.0.1:1/0")
            .env("KILN_WEB_URL", &web.base)
            .env("KILN_WORKER_TOKEN", &token)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{err}");
    }
}
