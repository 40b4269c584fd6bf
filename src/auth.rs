//! The first steps of the inbound pipeline: strip what a caller could spoof, recognise public
//! routes, and find the one bearer token (RFC 6750 §2.1).
//!
//! These are pure functions over the request head so they can be tested without a server.
//! Verification itself lives in [`crate::verify`]; what the client is told, in
//! [`crate::answer`].

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName};
use pingora::http::RequestHeader;

use crate::answer::Rejection;
use crate::config::IDENTITY_HEADERS;
use crate::context::CONTEXT_HEADER;
use crate::verify::TokenError;

/// Every header whose name starts with this is reserved for portcullis.
const RESERVED_PREFIX: &str = "x-auth-";

/// Removes every identity header from an incoming request: the fixed ones, anything else under
/// `x-auth-`, the context handle header, and the configured claim headers. Runs before anything
/// else, public routes too.
pub fn strip_identity_headers(req: &mut RequestHeader, claim_headers: &[HeaderName]) {
    let reserved: Vec<HeaderName> = req
        .headers
        .keys()
        .filter(|name| is_identity_header(name.as_str(), claim_headers))
        .cloned()
        .collect();
    for name in reserved {
        req.remove_header(&name);
    }
    debug_assert!(
        IDENTITY_HEADERS
            .iter()
            .all(|h| h.starts_with(RESERVED_PREFIX))
    );
}

/// Whether a header name (in any case) is one only portcullis may set.
pub fn is_identity_header(name: &str, claim_headers: &[HeaderName]) -> bool {
    let n = name.as_bytes();
    (n.len() >= RESERVED_PREFIX.len()
        && n[..RESERVED_PREFIX.len()].eq_ignore_ascii_case(RESERVED_PREFIX.as_bytes()))
        || name.eq_ignore_ascii_case(CONTEXT_HEADER)
        || claim_headers
            .iter()
            .any(|h| h.as_str().eq_ignore_ascii_case(name))
}

/// The `Authorization` headers of a request, as far as the bearer check cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authorization<'r> {
    None,
    One(&'r [u8]),
    /// More than one `Authorization` header.
    Many,
}

impl<'r> Authorization<'r> {
    /// Collects the `Authorization` header values, in order.
    pub fn from_values(values: impl IntoIterator<Item = &'r [u8]>) -> Self {
        let mut values = values.into_iter();
        match (values.next(), values.next()) {
            (None, _) => Self::None,
            (Some(one), None) => Self::One(one),
            (Some(_), Some(_)) => Self::Many,
        }
    }

    pub fn from_headers(headers: &'r HeaderMap) -> Self {
        Self::from_values(headers.get_all(AUTHORIZATION).iter().map(|v| v.as_bytes()))
    }
}

/// The bearer token of a request, or why there is none usable.
///
/// Exactly one `Authorization` header; the scheme is case-insensitive; the token must follow
/// the `b64token` grammar. A token in the query string is never accepted.
pub fn bearer_token<'r>(
    authorization: Authorization<'r>,
    query: Option<&str>,
) -> Result<&'r str, Rejection> {
    let in_query = query.is_some_and(query_has_token);
    let value = match authorization {
        Authorization::None if in_query => {
            return Err(Rejection::InvalidRequest(
                "tokens are not accepted in the query string",
            ));
        }
        Authorization::None => return Err(Rejection::MissingCredentials),
        Authorization::Many => {
            return Err(Rejection::InvalidRequest(
                "more than one Authorization header",
            ));
        }
        Authorization::One(_) if in_query => {
            return Err(Rejection::InvalidRequest(
                "token sent in more than one place",
            ));
        }
        Authorization::One(value) => value,
    };
    // Visible ASCII and tabs only, as `http::HeaderValue::to_str` would have it.
    let value = value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
        .ok_or(Rejection::InvalidToken(TokenError::Malformed(
            "token is not ASCII",
        )))?;
    let (scheme, rest) = match value.split_once(' ') {
        Some((s, r)) => (s, r),
        None => (value, ""),
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Rejection::MissingCredentials);
    }
    let token = rest.trim_matches(' ');
    if token.is_empty() {
        return Err(Rejection::InvalidRequest("Bearer scheme without a token"));
    }
    if !is_b64token(token) {
        return Err(Rejection::InvalidToken(TokenError::Malformed(
            "token has characters outside the b64token grammar",
        )));
    }
    Ok(token)
}

/// RFC 6750 §2.1: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(token: &str) -> bool {
    let bytes = token.as_bytes();
    let body_len = bytes.len() - bytes.iter().rev().take_while(|&&b| b == b'=').count();
    body_len > 0 && bytes[..body_len].iter().all(|&b| B64TOKEN[usize::from(b)])
}

/// The `b64token` characters, as a table: one lookup per byte on the request path.
static B64TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] =
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        b += 1;
    }
    table
};

fn query_has_token(query: &str) -> bool {
    query
        .split('&')
        .any(|pair| pair.split('=').next() == Some("access_token"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(auth: &[&'static str], uri: &'static str) -> (Authorization<'static>, Option<&'static str>) {
        let values = auth.iter().map(|a| a.as_bytes());
        (Authorization::from_values(values), uri.split_once('?').map(|(_, q)| q))
    }

    #[test]
    fn scheme_is_case_insensitive() {
        let (h, u) = head(&["bEaReR abc.def.ghi"], "/");
        assert_eq!(bearer_token(h, u), Ok("abc.def.ghi"));
    }

    #[test]
    fn missing_and_other_schemes_ask_for_credentials() {
        let (h, u) = head(&[], "/");
        assert_eq!(bearer_token(h, u), Err(Rejection::MissingCredentials));
        let (h, u) = head(&["Basic dXNlcjpwYXNz"], "/");
        assert_eq!(bearer_token(h, u), Err(Rejection::MissingCredentials));
    }

    #[test]
    fn two_headers_or_empty_token_are_invalid_requests() {
        let (h, u) = head(&["Bearer a.b.c", "Bearer a.b.c"], "/");
        assert!(matches!(
            bearer_token(h, u),
            Err(Rejection::InvalidRequest(_))
        ));
        let (h, u) = head(&["Bearer "], "/");
        assert!(matches!(
            bearer_token(h, u),
            Err(Rejection::InvalidRequest(_))
        ));
    }

    #[test]
    fn query_string_tokens_are_refused() {
        let (h, u) = head(&[], "/x?access_token=a.b.c");
        assert!(matches!(
            bearer_token(h, u),
            Err(Rejection::InvalidRequest(_))
        ));
        let (h, u) = head(&["Bearer a.b.c"], "/x?a=1&access_token=a.b.c");
        assert!(matches!(
            bearer_token(h, u),
            Err(Rejection::InvalidRequest(_))
        ));
    }

    #[test]
    fn grammar_is_enforced() {
        let (h, u) = head(&["Bearer a.b.c,d"], "/");
        assert!(matches!(
            bearer_token(h, u),
            Err(Rejection::InvalidToken(_))
        ));
    }

    #[test]
    fn reserved_headers_are_stripped() {
        let mut req = RequestHeader::build("GET", b"/", None).expect("head");
        req.insert_header("X-Auth-Subject", "admin")
            .expect("insert");
        req.insert_header("x-auth-anything", "x").expect("insert");
        req.insert_header("x-email", "e").expect("insert");
        req.insert_header("x-keep", "k").expect("insert");
        strip_identity_headers(&mut req, &[HeaderName::from_static("x-email")]);
        assert!(req.headers.get("x-auth-subject").is_none());
        assert!(req.headers.get("x-auth-anything").is_none());
        assert!(req.headers.get("x-email").is_none());
        assert_eq!(
            req.headers.get("x-keep").map(|v| v.as_bytes()),
            Some(&b"k"[..])
        );
    }
}
