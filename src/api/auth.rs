//! Bearer-token authentication for the admin API (RFC 6750 §2.1).

use http::HeaderMap;
use http::header::AUTHORIZATION;

use crate::secret::constant_time_eq;

/// What the `Authorization` header says about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credentials {
    /// No header, a scheme other than Bearer, or a header that is not a single token.
    Missing,
    Wrong,
    Valid,
}

/// Checks `Authorization: Bearer <token>` against the configured token.
pub fn check(headers: &HeaderMap, expected: &str) -> Credentials {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Credentials::Missing;
    };
    let Some(presented) = value.to_str().ok().and_then(bearer_token) else {
        return Credentials::Missing;
    };
    if constant_time_eq(presented.as_bytes(), expected.as_bytes()) { Credentials::Valid } else { Credentials::Wrong }
}

/// The token of a `Bearer` credential. The scheme is case-insensitive (RFC 9110 §11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim_matches(' ');
    (!token.is_empty() && !token.contains(' ')).then_some(token)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(AUTHORIZATION, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn bearer_credentials_are_parsed_strictly() {
        assert_eq!(check(&headers(&["Bearer s3cret"]), "s3cret"), Credentials::Valid);
        assert_eq!(check(&headers(&["bearer s3cret"]), "s3cret"), Credentials::Valid);
        assert_eq!(check(&headers(&["BEARER  s3cret "]), "s3cret"), Credentials::Valid);
        assert_eq!(check(&headers(&["Bearer nope"]), "s3cret"), Credentials::Wrong);
        assert_eq!(check(&headers(&[]), "s3cret"), Credentials::Missing);
        assert_eq!(check(&headers(&["Basic czNjcmV0"]), "s3cret"), Credentials::Missing);
        assert_eq!(check(&headers(&["Bearer"]), "s3cret"), Credentials::Missing);
        assert_eq!(check(&headers(&["Bearer "]), "s3cret"), Credentials::Missing);
        assert_eq!(check(&headers(&["Bearer s3 cret"]), "s3cret"), Credentials::Missing);
        assert_eq!(check(&headers(&["Bearer s3cret", "Bearer s3cret"]), "s3cret"), Credentials::Missing);
        assert_eq!(check(&headers(&["s3cret"]), "s3cret"), Credentials::Missing);
    }
}
