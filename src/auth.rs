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
    if !visible_ascii(value) {
        return Err(Rejection::InvalidToken(TokenError::Malformed(
            "token is not ASCII",
        )));
    }
    let (scheme, rest) = match value.iter().position(|&b| b == b' ') {
        Some(i) => (&value[..i], &value[i + 1..]),
        None => (value, &b""[..]),
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err(Rejection::MissingCredentials);
    }
    let token = trim_spaces(rest);
    if token.is_empty() {
        return Err(Rejection::InvalidRequest("Bearer scheme without a token"));
    }
    if !is_b64token(token) {
        return Err(Rejection::InvalidToken(TokenError::Malformed(
            "token has characters outside the b64token grammar",
        )));
    }
    // b64token characters are ASCII: this cannot fail.
    std::str::from_utf8(token)
        .map_err(|_| Rejection::InvalidToken(TokenError::Malformed("token is not ASCII")))
}

/// Leading and trailing spaces (not other whitespace) removed.
fn trim_spaces(mut v: &[u8]) -> &[u8] {
    while let [b' ', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' '] = v {
        v = rest;
    }
    v
}

/// Visible ASCII, space and tab only. Written as a fold without early exit so that the
/// compiler checks many bytes per instruction: tokens run to thousands of characters.
fn visible_ascii(bytes: &[u8]) -> bool {
    bytes.iter().fold(true, |ok, &b| {
        ok & ((0x20..0x7f).contains(&b) | (b == b'\t'))
    })
}

/// RFC 6750 §2.1: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(bytes: &[u8]) -> bool {
    let body_len = bytes.len() - bytes.iter().rev().take_while(|&&b| b == b'=').count();
    body_len > 0
        && bytes[..body_len]
            .iter()
            .fold(true, |ok, &b| ok & is_b64token_char(b))
}

/// One `b64token` character, by arithmetic rather than a table, so that it vectorizes.
#[inline]
fn is_b64token_char(b: u8) -> bool {
    let letter = (b | 0x20).wrapping_sub(b'a') < 26;
    let digit = b.wrapping_sub(b'0') < 10;
    letter
        | digit
        | (b == b'-')
        | (b == b'.')
        | (b == b'_')
        | (b == b'~')
        | (b == b'+')
        | (b == b'/')
}

fn query_has_token(query: &str) -> bool {
    query
        .split('&')
        .any(|pair| pair.split('=').next() == Some("access_token"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(
        auth: &[&'static str],
        uri: &'static str,
    ) -> (Authorization<'static>, Option<&'static str>) {
        let values = auth.iter().map(|a| a.as_bytes());
        (
            Authorization::from_values(values),
            uri.split_once('?').map(|(_, q)| q),
        )
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
    fn b64token_characters_match_the_rfc() {
        for b in 0..=255u8 {
            let expected = b.is_ascii_alphanumeric() || b"-._~+/".contains(&b);
            assert_eq!(is_b64token_char(b), expected, "byte {b:#x}");
        }
        assert!(is_b64token(b"abc=="));
        assert!(!is_b64token(b"=="));
        assert!(!is_b64token(b"a=b"));
    }

    #[test]
    fn non_ascii_tokens_are_malformed() {
        let (h, u) = head(&["Bearer a\u{e9}b"], "/");
        assert_eq!(
            bearer_token(h, u),
            Err(Rejection::InvalidToken(TokenError::Malformed(
                "token is not ASCII"
            )))
        );
        let (h, u) = head(&["Bearer   a.b.c  "], "/");
        assert_eq!(bearer_token(h, u), Ok("a.b.c"));
    }

    #[test]
    fn identity_headers_are_recognised_in_any_case() {
        let claims = [HeaderName::from_static("x-email")];
        assert!(is_identity_header("X-Auth-Subject", &claims));
        assert!(is_identity_header("x-auth-", &claims));
        assert!(is_identity_header("X-Portcullis-Context", &claims));
        assert!(is_identity_header("X-EMAIL", &claims));
        assert!(!is_identity_header("x-authority", &claims));
        assert!(!is_identity_header("x-aut", &claims));
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
