//! What the client is told when a request is refused (RFC 6750 §3, RFC 6585 §5).
//!
//! This is the one place that maps a failure to a status, a `WWW-Authenticate` challenge and a
//! small JSON body. Descriptions say what *kind* of failure it was; they never contain the
//! token, a claim value or parser internals. The detailed cause goes to the log, not here.

use bytes::Bytes;

use crate::verify::TokenError;

/// Why a request did not reach the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// No `Authorization` header (or another scheme than Bearer).
    MissingCredentials,
    /// The request is malformed as a bearer request: two headers, an empty token, a token in
    /// two places.
    InvalidRequest(&'static str),
    /// A token was presented but cannot be accepted.
    InvalidToken(TokenError),
    /// Authenticated, but a rule denies it; names the rule set, not the rule.
    Forbidden { policy: String },
    /// No usable key set is loaded: answering 401 would be wrong, so the answer is 503.
    NoKeys,
    /// The request head is larger than the configured limit.
    HeadTooLarge,
    /// The path has no safe normal form (`..` above the root, `%2F`, broken escapes).
    BadPath,
    /// mTLS would be needed, and no usable client certificate was presented; says why.
    NoClientCertificate(&'static str),
}

/// A complete refusal, ready to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub www_authenticate: Option<String>,
    pub body: Bytes,
}

impl Rejection {
    /// Stable reason code for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingCredentials => "missing",
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidToken(e) => e.reason(),
            Self::Forbidden { .. } => "forbidden",
            Self::NoKeys => "no_keys",
            Self::HeadTooLarge => "head_too_large",
            Self::BadPath => "bad_path",
            Self::NoClientCertificate(_) => "no_client_certificate",
        }
    }

    /// Builds the response for a sidecar whose identity is `realm`.
    pub fn answer(&self, realm: &str) -> Answer {
        let realm = quote_safe(realm);
        match self {
            Self::MissingCredentials => Answer {
                status: 401,
                www_authenticate: Some(format!("Bearer realm=\"{realm}\"")),
                body: json_body("unauthorized", "a bearer token is required"),
            },
            Self::InvalidRequest(what) => challenge(400, &realm, "invalid_request", what),
            Self::InvalidToken(e) => challenge(401, &realm, "invalid_token", describe(e)),
            Self::Forbidden { policy } => {
                let text = format!("denied by authorization policy {}", quote_safe(policy));
                challenge(403, &realm, "insufficient_scope", &text)
            }
            Self::NoKeys => Answer {
                status: 503,
                www_authenticate: None,
                body: json_body("temporarily_unavailable", "no verification keys are loaded"),
            },
            Self::NoClientCertificate(why) => Answer {
                status: 401,
                www_authenticate: Some(format!("Bearer realm=\"{realm}\"")),
                body: json_body("unauthorized", why),
            },
            Self::BadPath => Answer {
                status: 400,
                www_authenticate: None,
                body: json_body(
                    "invalid_path",
                    "the request path cannot be normalised safely",
                ),
            },
            Self::HeadTooLarge => Answer {
                status: 431,
                www_authenticate: None,
                body: json_body(
                    "request_header_fields_too_large",
                    "request head exceeds the size limit",
                ),
            },
        }
    }
}

fn challenge(status: u16, realm: &str, error: &str, description: &str) -> Answer {
    Answer {
        status,
        www_authenticate: Some(format!(
            "Bearer realm=\"{realm}\", error=\"{error}\", error_description=\"{description}\""
        )),
        body: json_body(error, description),
    }
}

/// The client-facing description of a token failure.
pub fn describe(e: &TokenError) -> &'static str {
    match e {
        TokenError::TooLarge => "token too large",
        TokenError::Malformed(what) => what,
        TokenError::UnsupportedAlgorithm => "unsupported algorithm, only HS256 is accepted",
        TokenError::UnsupportedCritical => "unsupported critical header parameter",
        TokenError::UnknownKey => "unknown key id",
        TokenError::BadSignature => "bad signature",
        TokenError::Expired => "token expired",
        TokenError::NotYetValid => "token not yet valid",
        TokenError::IssuedInFuture => "token issued in the future",
        TokenError::MissingClaim("exp") => "token has no exp claim",
        TokenError::MissingClaim("iss") => "token has no iss claim",
        TokenError::MissingClaim("aud") => "token has no aud claim",
        TokenError::MissingClaim(_) => "token lacks a required claim",
        TokenError::WrongIssuer => "issuer not accepted",
        TokenError::WrongAudience => "wrong audience",
    }
}

/// The small JSON body every refusal carries.
pub fn json_body(error: &str, description: &str) -> Bytes {
    let value = serde_json::json!({ "error": error, "error_description": description });
    Bytes::from(value.to_string())
}

/// Keeps a value inside a quoted-string: no quotes, backslashes or control characters.
fn quote_safe(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_token_has_no_error_code() {
        let a = Rejection::MissingCredentials.answer("todos");
        assert_eq!(a.status, 401);
        assert_eq!(
            a.www_authenticate.as_deref(),
            Some("Bearer realm=\"todos\"")
        );
    }

    #[test]
    fn expired_token_is_invalid_token_with_description() {
        let a = Rejection::InvalidToken(TokenError::Expired).answer("todos");
        assert_eq!(a.status, 401);
        let h = a.www_authenticate.expect("challenge");
        assert!(
            h.contains("error=\"invalid_token\"")
                && h.contains("error_description=\"token expired\"")
        );
        let v: serde_json::Value = serde_json::from_slice(&a.body).expect("json");
        assert_eq!(v["error_description"], "token expired");
    }

    #[test]
    fn policy_denial_is_403_insufficient_scope() {
        let a = Rejection::Forbidden {
            policy: "todos-policy".into(),
        }
        .answer("todos");
        assert_eq!(a.status, 403);
        assert!(
            a.www_authenticate
                .expect("challenge")
                .contains("insufficient_scope")
        );
    }

    #[test]
    fn realm_cannot_break_out_of_quotes() {
        let a = Rejection::MissingCredentials.answer("a\"b\\c");
        assert_eq!(a.www_authenticate.as_deref(), Some("Bearer realm=\"abc\""));
    }
}
