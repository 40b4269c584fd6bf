//! Request and response heads: what a head says about framing and connection options, and the
//! app's copy of the request head, written straight into a byte buffer.
//!
//! Pure functions over httparse's borrowed heads, so the rules of RFC 9112 the forwarder
//! enforces live in one place and are tested without a socket.

use crate::answer::Rejection;
use crate::auth::Authorization;
use crate::context::CONTEXT_HEADER;
use crate::pipeline::{Allowed, HeaderSink, Inbound, Pipeline};
use crate::rules::normalize_path;

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Response only: the body ends when the app closes the connection.
    UntilClose,
}

/// A request ready to go to the app, or why not.
pub(super) struct Prepared {
    pub(super) head_len: usize,
    pub(super) is_head: bool,
    /// Whether the client may send another request on this connection.
    pub(super) keep_alive: bool,
    pub(super) http10: bool,
    pub(super) body: Framing,
    pub(super) upgrade: bool,
    pub(super) expect_continue: bool,
    pub(super) outcome: Result<Allowed, Refusal>,
}

/// A request that does not reach the app.
pub(super) enum Refusal {
    /// Refused by the pipeline: counted and logged as a decision; method and path for the log.
    Decision(Rejection, String, String),
    /// Not a valid HTTP/1.1 request: status and description.
    Protocol(u16, &'static str),
}

/// Writes identity headers straight into the app's request head.
pub(super) struct HeadSink<'a>(&'a mut Vec<u8>);

impl HeaderSink for HeadSink<'_> {
    fn add(&mut self, name: &str, value: &str) {
        push_header(self.0, name.as_bytes(), value.as_bytes());
    }
}

/// A header whose value is a decimal number, written without an intermediate string.
fn push_number_header(out: &mut Vec<u8>, name: &[u8], value: u64) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    push_number(out, value);
    out.extend_from_slice(b"\r\n");
}

fn push_number(out: &mut Vec<u8>, value: u64) {
    use std::io::Write;
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{value}");
}

pub(super) fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Parses the request head into what the exchange needs, asking the pipeline on the way.
pub(super) fn prepare(
    pipeline: &Pipeline,
    upstream_host: &str,
    req: &httparse::Request<'_, '_>,
    head_len: usize,
    req_out: &mut Vec<u8>,
    extra: &mut Vec<u8>,
) -> Prepared {
    let method = req.method.unwrap_or("");
    let target = req.path.unwrap_or("");
    let http10 = req.version == Some(0);
    let mut p = Prepared {
        head_len,
        is_head: method == "HEAD",
        // HTTP/1.1 keeps the connection unless told to close; HTTP/1.0 only when asked to.
        keep_alive: !http10,
        http10,
        body: Framing::None,
        upgrade: false,
        expect_continue: false,
        outcome: Err(Refusal::Protocol(400, "malformed request")),
    };

    // One pass over the headers for framing, connection options and credentials.
    let mut hosts = 0;
    let mut length: Option<u64> = None;
    let mut bad_length = false;
    let mut te: Option<&[u8]> = None;
    let mut te_count = 0;
    let mut upgrade_value: Option<&[u8]> = None;
    let mut connection_upgrade = false;
    let mut connection_names = false;
    let mut auth_values: [&[u8]; 2] = [&[], &[]];
    let mut auth_count = 0;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => hosts += 1,
            14 if name.eq_ignore_ascii_case(b"content-length") => match parse_length(h.value) {
                Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
                _ => bad_length = true,
            },
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                te = Some(h.value);
                te_count += 1;
            }
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for token in tokens(h.value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        p.keep_alive = false;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        p.keep_alive = true;
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        connection_upgrade = true;
                    } else {
                        connection_names = true;
                    }
                }
            }
            7 if name.eq_ignore_ascii_case(b"upgrade") => upgrade_value = Some(h.value),
            6 if name.eq_ignore_ascii_case(b"expect") => {
                p.expect_continue = h.value.eq_ignore_ascii_case(b"100-continue");
            }
            13 if name.eq_ignore_ascii_case(b"authorization") => {
                if auth_count < 2 {
                    auth_values[auth_count] = h.value;
                }
                auth_count += 1;
            }
            _ => {}
        }
    }
    // Framing first: a message portcullis would delimit differently from the app never passes.
    let refuse = |p: &mut Prepared, status, what| {
        p.keep_alive = false;
        p.outcome = Err(Refusal::Protocol(status, what));
    };
    if te_count > 0 {
        if length.is_some() || bad_length {
            refuse(&mut p, 400, "both Content-Length and Transfer-Encoding");
            return p;
        }
        if http10 {
            refuse(&mut p, 400, "Transfer-Encoding in an HTTP/1.0 request");
            return p;
        }
        if te_count > 1 || !te.is_some_and(|v| trim(v).eq_ignore_ascii_case(b"chunked")) {
            refuse(&mut p, 501, "only the chunked transfer coding is supported");
            return p;
        }
        p.body = Framing::Chunked;
    } else if bad_length {
        refuse(&mut p, 400, "invalid Content-Length");
        return p;
    } else if let Some(n) = length.filter(|&n| n > 0) {
        p.body = Framing::Length(n);
    }
    if hosts > 1 || (hosts == 0 && !http10) {
        refuse(&mut p, 400, "exactly one Host header is required");
        return p;
    }
    p.upgrade = connection_upgrade && upgrade_value.is_some();

    // The request-target: origin form, or absolute form reduced to it.
    let origin = if target.starts_with('/') {
        target
    } else if let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        rest.find('/').map_or("/", |i| &rest[i..])
    } else {
        refuse(&mut p, 400, "the request-target must be a path");
        return p;
    };
    let (raw_path, query) = match origin.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (origin, None),
    };
    let path = match normalize_path(raw_path) {
        Ok(path) => path,
        Err(error) => {
            tracing::info!(%error, "request path refused");
            p.outcome = Err(Refusal::Decision(
                Rejection::BadPath,
                method.to_string(),
                raw_path.to_string(),
            ));
            return p;
        }
    };

    extra.clear();
    let inbound = Inbound {
        method,
        path: &path,
        query,
        authorization: match auth_count {
            0 => Authorization::None,
            1 => Authorization::One(auth_values[0]),
            _ => Authorization::Many,
        },
        head_bytes: head_len,
        peer: None,
    };
    let allowed = match pipeline.decide(&inbound, &mut HeadSink(extra)) {
        Ok(allowed) => allowed,
        Err(rejection) => {
            p.outcome = Err(Refusal::Decision(
                rejection,
                method.to_string(),
                path.into_owned(),
            ));
            return p;
        }
    };
    let drop_authorization = !pipeline.forward_token && allowed.reason != "public";

    // The app's request head.
    req_out.clear();
    req_out.extend_from_slice(method.as_bytes());
    req_out.push(b' ');
    req_out.extend_from_slice(path.as_bytes());
    if let Some(q) = query {
        req_out.push(b'?');
        req_out.extend_from_slice(q.as_bytes());
    }
    req_out.extend_from_slice(b" HTTP/1.1\r\n");
    for h in req.headers.iter() {
        let name = h.name;
        if is_hop_by_hop(name)
            || name.eq_ignore_ascii_case("content-length")
            || (p.expect_continue && name.eq_ignore_ascii_case("expect"))
            || (drop_authorization && name.eq_ignore_ascii_case("authorization"))
            || pipeline.is_identity_header(name)
            || (connection_names && listed_in_connection(req.headers, name))
        {
            continue;
        }
        push_header(req_out, name.as_bytes(), h.value);
    }
    if hosts == 0 {
        push_header(req_out, b"host", upstream_host.as_bytes());
    }
    match p.body {
        Framing::Chunked => push_header(req_out, b"transfer-encoding", b"chunked"),
        Framing::Length(n) => push_number_header(req_out, b"content-length", n),
        _ if length == Some(0) => push_header(req_out, b"content-length", b"0"),
        _ => {}
    }
    if let (true, Some(protocol)) = (p.upgrade, upgrade_value) {
        push_header(req_out, b"connection", b"upgrade");
        push_header(req_out, b"upgrade", protocol);
    }
    req_out.extend_from_slice(extra);
    if let Some(handle) = &allowed.context {
        push_header(req_out, CONTEXT_HEADER.as_bytes(), handle.as_bytes());
    }
    req_out.extend_from_slice(b"\r\n");
    p.outcome = Ok(allowed);
    p
}

/// What the response head says about the body and the app connection.
pub(super) struct ResponseInfo {
    pub(super) framing: Framing,
    /// Whether the app connection may be reused afterwards.
    pub(super) keep_alive: bool,
}

pub(super) fn response_info(
    resp: &httparse::Response<'_, '_>,
    is_head: bool,
) -> Result<ResponseInfo, &'static str> {
    let code = resp.code.unwrap_or(0);
    let mut keep_alive = resp.version == Some(1);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut other_coding = false;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            match parse_length(h.value) {
                Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
                _ => return Err("invalid Content-Length from the app"),
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // The final coding decides: chunked, or else the body runs to the close.
            let last = h
                .value
                .rsplit(|&b| b == b',')
                .next()
                .map(trim)
                .unwrap_or(b"");
            chunked = last.eq_ignore_ascii_case(b"chunked");
            other_coding |= !chunked;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in tokens(h.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    let framing = if is_head || code == 204 || code == 304 {
        Framing::None
    } else if chunked && !other_coding {
        Framing::Chunked
    } else if other_coding {
        Framing::UntilClose
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    Ok(ResponseInfo {
        framing,
        keep_alive,
    })
}

/// How the client's copy of a response is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ResponseFraming {
    /// No body: the app's `Content-Length` (a HEAD answer) is passed on as it is.
    AsIs,
    Length(u64),
    Chunked,
    /// HTTP/1.0 client: the body ends with the connection.
    Close,
    /// A 1xx answer other than 101.
    Interim,
    /// 101: `Connection` and `Upgrade` are passed on.
    Upgrade,
}

/// Writes the status line and the headers to pass on (no final CRLF, except for interim and
/// upgrade answers, which are complete).
pub(super) fn write_response_head(
    out: &mut Vec<u8>,
    resp: &httparse::Response<'_, '_>,
    framing: ResponseFraming,
) {
    let code = resp.code.unwrap_or(502);
    out.extend_from_slice(b"HTTP/1.1 ");
    push_number(out, u64::from(code));
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let upgrade = framing == ResponseFraming::Upgrade;
    let connection_names = resp.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("connection")
            && tokens(h.value).any(|t| {
                !t.eq_ignore_ascii_case(b"close")
                    && !t.eq_ignore_ascii_case(b"keep-alive")
                    && !t.eq_ignore_ascii_case(b"upgrade")
            })
    });
    for h in resp.headers.iter() {
        let name = h.name;
        let pass = if upgrade
            && (name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("upgrade"))
        {
            true
        } else if is_hop_by_hop(name) {
            false
        } else if name.eq_ignore_ascii_case("content-length") {
            framing == ResponseFraming::AsIs || framing == ResponseFraming::Interim
        } else {
            !(connection_names && listed_in_connection(resp.headers, name))
        };
        if pass {
            push_header(out, name.as_bytes(), h.value);
        }
    }
    match framing {
        ResponseFraming::Length(n) => push_number_header(out, b"content-length", n),
        ResponseFraming::Chunked => push_header(out, b"transfer-encoding", b"chunked"),
        ResponseFraming::Interim | ResponseFraming::Upgrade => out.extend_from_slice(b"\r\n"),
        ResponseFraming::AsIs | ResponseFraming::Close => {}
    }
}

/// Headers that describe one hop and are never passed on (RFC 9110 §7.6.1).
pub(super) fn is_hop_by_hop(name: &str) -> bool {
    const HOP: [&str; 8] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
    ];
    HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Whether `name` is listed in a `Connection` header of the same message.
pub(super) fn listed_in_connection(headers: &[httparse::Header<'_>], name: &str) -> bool {
    headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("connection")
            && tokens(h.value).any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
    })
}

/// The comma-separated tokens of a header value, trimmed, empty ones skipped.
pub(super) fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim)
        .filter(|t| !t.is_empty())
}

pub(super) fn trim(v: &[u8]) -> &[u8] {
    v.trim_ascii()
}

/// A `Content-Length` value: digits only, at most 18 of them.
pub(super) fn parse_length(value: &[u8]) -> Option<u64> {
    let v = trim(value);
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_is_digits_only() {
        assert_eq!(parse_length(b"12"), Some(12));
        assert_eq!(parse_length(b" 0 "), Some(0));
        for bad in [
            &b""[..],
            b"-1",
            b"+1",
            b"1,1",
            b"0x10",
            b"1 2",
            b"9999999999999999999",
        ] {
            assert_eq!(
                parse_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn hop_by_hop_names_in_any_case() {
        assert!(is_hop_by_hop("Connection"));
        assert!(is_hop_by_hop("TRANSFER-ENCODING"));
        assert!(!is_hop_by_hop("content-type"));
        let headers = [httparse::Header {
            name: "Connection",
            value: b"keep-alive, X-Secret",
        }];
        assert!(listed_in_connection(&headers, "x-secret"));
        assert!(!listed_in_connection(&headers, "x-other"));
    }
}
