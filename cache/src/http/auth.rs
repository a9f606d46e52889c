//! Reading the token a request carries.

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::error::CacheError;

/// The token in the `Authorization` header, if any: the password of HTTP Basic credentials (the
/// user name when the password is empty), or a Bearer token. Malformed credentials are an
/// `InvalidToken`, never silently anonymous.
pub fn token_from_headers(headers: &HeaderMap) -> Result<Option<String>, CacheError> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| CacheError::InvalidToken)?;
    let (scheme, rest) = value.split_once(' ').ok_or(CacheError::InvalidToken)?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Ok(Some(rest.to_owned()));
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(CacheError::InvalidToken);
    }
    let decoded = BASE64.decode(rest).map_err(|_| CacheError::InvalidToken)?;
    let decoded = String::from_utf8(decoded).map_err(|_| CacheError::InvalidToken)?;
    let (user, password) = decoded.split_once(':').unwrap_or((decoded.as_str(), ""));
    let token = if password.is_empty() { user } else { password };
    if token.is_empty() {
        return Err(CacheError::InvalidToken);
    }
    Ok(Some(token.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_auth(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn basic_password_is_the_token_whatever_the_user() {
        let basic = |s: &str| format!("Basic {}", BASE64.encode(s));
        assert_eq!(
            token_from_headers(&with_auth(&basic("anyone:kiln_abc")))
                .unwrap()
                .as_deref(),
            Some("kiln_abc")
        );
        assert_eq!(
            token_from_headers(&with_auth(&basic("kiln_abc:")))
                .unwrap()
                .as_deref(),
            Some("kiln_abc")
        );
        assert_eq!(
            token_from_headers(&with_auth("Bearer kiln_xyz"))
                .unwrap()
                .as_deref(),
            Some("kiln_xyz")
        );
        assert_eq!(token_from_headers(&HeaderMap::new()).unwrap(), None);
    }

    #[test]
    fn malformed_credentials_are_refused() {
        for bad in [
            "Basic !!!",
            "Digest abc",
            "Basic",
            &format!("Basic {}", BASE64.encode(":")),
        ] {
            assert!(
                matches!(
                    token_from_headers(&with_auth(bad)),
                    Err(CacheError::InvalidToken)
                ),
                "{bad}"
            );
        }
    }
}
