//! `GET /api/v1/caches/{name}/access`: what a token may do, as a remote worker checks it before
//! taking steps. Unknown tokens are refused, not answered with no rights.

mod harness;

use harness::{Body, Kiln};

fn access(kiln: &Kiln, cache: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    let response = kiln.request(
        "GET",
        &format!("/api/v1/caches/{cache}/access"),
        &headers,
        Body::Empty,
    );
    let body = serde_json::from_str(&response.text()).unwrap_or(serde_json::Value::Null);
    (response.status, body)
}

#[test]
fn access_reports_each_permission_of_the_token() {
    let kiln = Kiln::start();
    let push = kiln.token("main", "push");
    let read = kiln.token("main", "read");

    let (status, body) = access(&kiln, "main", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            body["read"].as_bool(),
            body["push"].as_bool(),
            body["admin"].as_bool()
        ),
        (Some(true), Some(false), Some(false)),
        "anonymous on a public cache: {body}"
    );
    let (status, body) = access(&kiln, "main", Some(&push));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["push"].as_bool(), body["admin"].as_bool()),
        (Some(true), Some(false)),
        "{body}"
    );
    let (_, body) = access(&kiln, "main", Some(&read));
    assert_eq!(body["push"].as_bool(), Some(false), "{body}");

    let (status, body) = access(&kiln, "main", Some("kiln_not-a-real-token"));
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "invalid_token", "{body}");

    let (status, _) = access(&kiln, "nosuch", Some(&push));
    assert_eq!(status, 404);
    // A push token of another cache grants nothing on a private one.
    kiln.create_cache("private", true);
    let (status, body) = access(&kiln, "private", Some(&push));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["read"].as_bool(), Some(false), "{body}");
}
