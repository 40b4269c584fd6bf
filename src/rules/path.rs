//! Request paths: bringing a raw path into one normal form, and matching it against patterns.
//!
//! Rules are only as strong as the path they see. If `/todos/../admin` or `/%61dmin` reached
//! the matcher as written, a deny rule on `/admin` would not fire while the app, after its own
//! decoding, served `/admin`. So [`normalize_path`] follows RFC 3986 §6.2.2: it decodes
//! percent-encoded *unreserved* characters, upper-cases the hex of the encodings it keeps,
//! merges `//`, and resolves `.` and `..`. What it cannot make unambiguous it refuses instead of
//! guessing: an encoded `/` or `\`, a raw `\`, `..` above the root, control characters. The
//! caller answers 400 for those.
//!
//! It deliberately does not fold case, strip `;` parameters, or decode twice: apps differ there,
//! and guessing one app's behaviour would be wrong for the next.

use std::borrow::Cow;

use thiserror::Error;

/// Why a request path has no normal form. Positions are byte offsets into the raw path; the
/// path itself is not repeated, since it comes from the client.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PathError {
    #[error("path does not start with `/`")]
    NotAbsolute,
    #[error("path contains a percent-encoded `/` or `\\` at byte {at}")]
    EncodedSeparator { at: usize },
    #[error("path contains a percent-encoded control character at byte {at}")]
    EncodedControl { at: usize },
    #[error("path contains a `%` not followed by two hex digits at byte {at}")]
    BadPercentEncoding { at: usize },
    #[error("path contains a character not allowed in a request path at byte {at}")]
    InvalidCharacter { at: usize },
    #[error("path climbs above the root with `..`")]
    EscapesRoot,
}

/// Brings a raw request path (with or without its query) into the form rules are matched on.
///
/// The query is dropped. The result starts with `/`, has no empty, `.` or `..` segments, keeps
/// a trailing `/`, and contains `%` only in upper-case encodings of characters that are not
/// unreserved. A path already in that form is returned borrowed, without allocating.
pub fn normalize_path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let path = raw.split_once('?').map_or(raw, |(path, _query)| path);
    check_characters(path)?;
    if is_normal(path) {
        return Ok(Cow::Borrowed(path));
    }

    let decoded = decode_unreserved(path)?;
    resolve_dot_segments(&decoded).map(Cow::Owned)
}

/// Refuses what no normal form can contain: anything but printable ASCII, `\`, and `#`.
fn check_characters(path: &str) -> Result<(), PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let bad = |b: u8| !b.is_ascii_graphic() || b == b'\\' || b == b'#';
    match path.bytes().position(bad) {
        Some(at) => Err(PathError::InvalidCharacter { at }),
        None => Ok(()),
    }
}

/// True when [`normalize_path`] would return the path unchanged, checked without allocating.
fn is_normal(path: &str) -> bool {
    if path.contains('%') {
        return false;
    }
    let rest = path.strip_prefix('/').unwrap_or(path);
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let is_last = segments.peek().is_none();
        let is_empty_inside = segment.is_empty() && !is_last;
        if is_empty_inside || segment == "." || segment == ".." {
            return false;
        }
    }
    true
}

/// Decodes `%XX` where it encodes an unreserved character and upper-cases the rest.
fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(char::from(bytes[i]));
            i += 1;
            continue;
        }

        let byte = hex_pair(bytes, i).ok_or(PathError::BadPercentEncoding { at: i })?;
        if byte == b'/' || byte == b'\\' {
            return Err(PathError::EncodedSeparator { at: i });
        }
        if byte.is_ascii_control() {
            return Err(PathError::EncodedControl { at: i });
        }
        if is_unreserved(byte) {
            out.push(char::from(byte));
        } else {
            push_encoded(&mut out, byte);
        }
        i += 3;
    }
    Ok(out)
}

/// The byte that the two hex digits after the `%` at `at` encode.
fn hex_pair(bytes: &[u8], at: usize) -> Option<u8> {
    let high = hex_value(*bytes.get(at + 1)?)?;
    let low = hex_value(*bytes.get(at + 2)?)?;
    Some(high << 4 | low)
}

fn hex_value(byte: u8) -> Option<u8> {
    let digit = char::from(byte).to_digit(16)?;
    u8::try_from(digit).ok()
}

/// Appends `%XX` with upper-case hex digits.
fn push_encoded(out: &mut String, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(byte >> 4)]));
    out.push(char::from(HEX[usize::from(byte & 0x0F)]));
}

/// RFC 3986 §2.3: `ALPHA / DIGIT / "-" / "." / "_" / "~"`.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// Merges empty segments and resolves `.` and `..`; the path starts with `/`.
fn resolve_dot_segments(path: &str) -> Result<String, PathError> {
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    let rest = path.strip_prefix('/').unwrap_or(path);
    for segment in rest.split('/') {
        match segment {
            "" | "." => trailing_slash = true,
            ".." => {
                kept.pop().ok_or(PathError::EscapesRoot)?;
                trailing_slash = true;
            }
            name => {
                kept.push(name);
                trailing_slash = false;
            }
        }
    }

    let mut out = format!("/{}", kept.join("/"));
    if trailing_slash && !kept.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// A compiled `paths` entry: `*` for any path, or `/`-separated segments of which `*` stands
/// for exactly one non-empty segment, optionally ending in `/*` for "this prefix and below".
///
/// Public so that other path lists (public routes, say) can share the same matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    segments: Vec<Segment>,
    /// Ends in `/*`: matches paths with at least one more segment, even an empty one.
    below: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// A whole-segment `*`: any one non-empty segment.
    Any,
}

/// Why a path pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PatternProblem {
    #[error("a path pattern starts with `/`, or is `*` for any path")]
    NotAbsolute,
    #[error("rules match the path without its query, so a pattern cannot contain `?`")]
    HasQuery,
    #[error(
        "`*` must be a whole segment (`/users/*/todos`) or end the pattern (`/todos/*`); \
         prefixes inside a segment such as `/todo*` are not supported"
    )]
    PartialWildcard,
    #[error("requests are matched in normal form, so write it as `{normal}`")]
    NotNormal { normal: String },
    #[error("{0}")]
    Invalid(PathError),
}

impl PathPattern {
    /// Compiles one pattern; it must already be in the normal form requests are matched in.
    pub fn compile(pattern: &str) -> Result<PathPattern, PatternProblem> {
        if pattern == "*" {
            return Ok(PathPattern::ANY);
        }
        if !pattern.starts_with('/') {
            return Err(PatternProblem::NotAbsolute);
        }
        if pattern.contains('?') {
            return Err(PatternProblem::HasQuery);
        }
        let normal = normalize_path(pattern).map_err(PatternProblem::Invalid)?;
        if normal != pattern {
            let normal = normal.into_owned();
            return Err(PatternProblem::NotNormal { normal });
        }

        let (base, below) = match pattern.strip_suffix("/*") {
            Some(base) => (base, true),
            None => (pattern, false),
        };
        let segments = split_segments(base)?;
        Ok(PathPattern { segments, below })
    }

    /// Matches every path: `*`, or `/*`.
    pub(crate) const ANY: PathPattern = PathPattern {
        segments: Vec::new(),
        below: true,
    };

    /// Whether a path from [`normalize_path`] matches. Does not allocate.
    pub fn matches(&self, path: &str) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let mut parts = rest.split('/');
        for segment in &self.segments {
            match parts.next() {
                Some(part) if segment.matches(part) => {}
                _ => return false,
            }
        }
        // `below` needs at least one more segment (`/todos/` has the empty one); exact needs none.
        parts.next().is_some() == self.below
    }

    /// Whether every path this pattern matches is also matched by `other`. Exact, never
    /// optimistic: `false` may still mean "covered" in cases this does not reason about.
    pub(crate) fn is_covered_by(&self, other: &PathPattern) -> bool {
        let (mine, theirs) = (self.segments.len(), other.segments.len());
        let shape_fits = if other.below {
            mine > theirs || (self.below && mine == theirs)
        } else {
            !self.below && mine == theirs
        };
        let mut pairs = self.segments.iter().zip(&other.segments);
        shape_fits && pairs.all(|(a, b)| a.is_covered_by(b))
    }
}

/// Splits `/a/*/c` (or the empty base of `/*`) into segments, checking each `*`.
fn split_segments(base: &str) -> Result<Vec<Segment>, PatternProblem> {
    if base.is_empty() {
        return Ok(Vec::new());
    }
    let rest = base.strip_prefix('/').unwrap_or(base);
    rest.split('/').map(Segment::compile).collect()
}

impl Segment {
    fn compile(text: &str) -> Result<Segment, PatternProblem> {
        match text {
            "*" => Ok(Segment::Any),
            _ if text.contains('*') => Err(PatternProblem::PartialWildcard),
            _ => Ok(Segment::Literal(text.to_owned())),
        }
    }

    fn matches(&self, part: &str) -> bool {
        match self {
            Segment::Literal(literal) => literal == part,
            Segment::Any => !part.is_empty(),
        }
    }

    fn is_covered_by(&self, other: &Segment) -> bool {
        match (self, other) {
            (Segment::Literal(a), Segment::Literal(b)) => a == b,
            // The empty trailing segment of `/todos/` is not covered by a `*`.
            (Segment::Literal(a), Segment::Any) => !a.is_empty(),
            (Segment::Any, Segment::Any) => true,
            (Segment::Any, Segment::Literal(_)) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(raw: &str) -> Result<String, PathError> {
        normalize_path(raw).map(Cow::into_owned)
    }

    fn pattern(text: &str) -> PathPattern {
        PathPattern::compile(text).expect("fixture is valid")
    }

    #[test]
    fn normal_path_is_borrowed_unchanged() {
        for path in ["/", "/todos", "/todos/", "/todos/1/items", "/a.b/c~d"] {
            assert!(matches!(normalize_path(path), Ok(Cow::Borrowed(p)) if p == path));
        }
    }

    #[test]
    fn query_is_dropped() {
        assert_eq!(
            norm("/todos?x=/../admin").expect("fixture is valid"),
            "/todos"
        );
        assert_eq!(norm("/a/../b?q").expect("fixture is valid"), "/b");
    }

    #[test]
    fn unreserved_encodings_are_decoded() {
        assert_eq!(norm("/%61dmin").expect("fixture is valid"), "/admin");
        assert_eq!(norm("/%7Euser/%2D").expect("fixture is valid"), "/~user/-");
    }

    #[test]
    fn reserved_encodings_are_kept_in_upper_case() {
        assert_eq!(norm("/a%3fb").expect("fixture is valid"), "/a%3Fb");
        assert_eq!(norm("/a%20b").expect("fixture is valid"), "/a%20b");
        assert_eq!(norm("/%e2%82%ac").expect("fixture is valid"), "/%E2%82%AC");
    }

    #[test]
    fn percent_sign_is_decoded_only_once() {
        assert_eq!(norm("/%252F").expect("fixture is valid"), "/%252F");
    }

    #[test]
    fn double_slashes_are_merged() {
        assert_eq!(norm("//admin").expect("fixture is valid"), "/admin");
        assert_eq!(norm("/a//b///").expect("fixture is valid"), "/a/b/");
    }

    #[test]
    fn dot_segments_are_resolved() {
        assert_eq!(norm("/todos/../admin").expect("fixture is valid"), "/admin");
        assert_eq!(norm("/a/./b/.").expect("fixture is valid"), "/a/b/");
        assert_eq!(norm("/a/..").expect("fixture is valid"), "/");
        assert_eq!(norm("/a/%2e%2E/admin").expect("fixture is valid"), "/admin");
    }

    #[test]
    fn dotdot_above_root_is_refused() {
        assert_eq!(norm("/.."), Err(PathError::EscapesRoot));
        assert_eq!(norm("/a/../../b"), Err(PathError::EscapesRoot));
        assert_eq!(norm("/%2e%2e/etc"), Err(PathError::EscapesRoot));
    }

    #[test]
    fn encoded_separators_are_refused() {
        assert_eq!(norm("/a%2Fb"), Err(PathError::EncodedSeparator { at: 2 }));
        assert_eq!(norm("/a%2fb"), Err(PathError::EncodedSeparator { at: 2 }));
        assert_eq!(norm("/a%5cb"), Err(PathError::EncodedSeparator { at: 2 }));
    }

    #[test]
    fn raw_backslash_and_odd_characters_are_refused() {
        assert_eq!(norm("/a\\b"), Err(PathError::InvalidCharacter { at: 2 }));
        assert_eq!(norm("/a b"), Err(PathError::InvalidCharacter { at: 2 }));
        assert_eq!(norm("/a#b"), Err(PathError::InvalidCharacter { at: 2 }));
        assert_eq!(norm("/ä"), Err(PathError::InvalidCharacter { at: 1 }));
    }

    #[test]
    fn broken_or_control_encodings_are_refused() {
        assert_eq!(norm("/a%2"), Err(PathError::BadPercentEncoding { at: 2 }));
        assert_eq!(norm("/a%zz"), Err(PathError::BadPercentEncoding { at: 2 }));
        assert_eq!(norm("/a%+1"), Err(PathError::BadPercentEncoding { at: 2 }));
        assert_eq!(norm("/a%00"), Err(PathError::EncodedControl { at: 2 }));
    }

    #[test]
    fn relative_path_is_refused() {
        assert_eq!(norm("todos"), Err(PathError::NotAbsolute));
        assert_eq!(norm("*"), Err(PathError::NotAbsolute));
        assert_eq!(norm(""), Err(PathError::NotAbsolute));
    }

    #[test]
    fn fast_path_agrees_with_full_normalisation() {
        let samples = [
            "/", "/a", "/a/", "/a//", "/a/.", "/.a", "/a..b/", "/a/b/c", "/x/../y",
        ];
        for path in samples {
            let full = resolve_dot_segments(&decode_unreserved(path).expect("fixture is valid"))
                .expect("fixture is valid");
            assert_eq!(is_normal(path), full == path, "{path}");
        }
    }

    #[test]
    fn exact_pattern_matches_only_itself() {
        let exact = pattern("/todos");
        assert!(exact.matches("/todos"));
        assert!(!exact.matches("/todos/"));
        assert!(!exact.matches("/todos/1"));
        assert!(!exact.matches("/todosx"));
    }

    #[test]
    fn prefix_matches_children_and_trailing_slash() {
        let prefix = pattern("/todos/*");
        assert!(prefix.matches("/todos/"));
        assert!(prefix.matches("/todos/1"));
        assert!(prefix.matches("/todos/1/items"));
        assert!(!prefix.matches("/todosx/1"));
    }

    #[test]
    fn prefix_does_not_match_parent() {
        assert!(!pattern("/todos/*").matches("/todos"));
    }

    #[test]
    fn glob_segment_matches_exactly_one_segment() {
        let glob = pattern("/users/*/todos");
        assert!(glob.matches("/users/bob/todos"));
        assert!(!glob.matches("/users/todos"));
        assert!(!glob.matches("/users/a/b/todos"));
        assert!(!glob.matches("/users/bob/todos/1"));
    }

    #[test]
    fn glob_segment_and_prefix_combine() {
        let glob = pattern("/users/*/todos/*");
        assert!(glob.matches("/users/bob/todos/1"));
        assert!(!glob.matches("/users/bob/todos"));
    }

    #[test]
    fn star_and_slash_star_match_every_path() {
        for any in ["*", "/*"] {
            let any = pattern(any);
            assert_eq!(any, PathPattern::ANY);
            assert!(any.matches("/"));
            assert!(any.matches("/a/b/"));
        }
    }

    #[test]
    fn root_pattern_matches_only_root() {
        assert!(pattern("/").matches("/"));
        assert!(!pattern("/").matches("/a"));
    }

    #[test]
    fn patterns_not_in_normal_form_are_refused_with_the_fix() {
        let err = PathPattern::compile("/a//b").expect_err("must be refused");
        assert_eq!(
            err,
            PatternProblem::NotNormal {
                normal: "/a/b".into()
            }
        );
        assert!(PathPattern::compile("/a/../b").is_err());
        assert!(PathPattern::compile("/%61").is_err());
    }

    #[test]
    fn malformed_patterns_are_refused() {
        let compile = PathPattern::compile;
        assert_eq!(compile("todos"), Err(PatternProblem::NotAbsolute));
        assert_eq!(compile("/todos?x"), Err(PatternProblem::HasQuery));
        assert_eq!(compile("/todo*"), Err(PatternProblem::PartialWildcard));
        assert_eq!(compile("/*/a*"), Err(PatternProblem::PartialWildcard));
        assert!(matches!(compile("/a%2F"), Err(PatternProblem::Invalid(_))));
    }

    #[test]
    fn coverage_between_patterns() {
        let covered = |a: &str, b: &str| pattern(a).is_covered_by(&pattern(b));
        assert!(covered("/todos", "*"));
        assert!(covered("/todos/*", "/todos/*"));
        assert!(covered("/todos/1", "/todos/*"));
        assert!(covered("/todos/1/*", "/todos/*"));
        assert!(covered("/users/bob/todos", "/users/*/todos"));
        assert!(covered("/users/*/todos/*", "/users/*/*"));
        assert!(!covered("/todos", "/todos/*"));
        assert!(!covered("/todos/*", "/todos/1"));
        assert!(!covered("*", "/todos/*"));
        assert!(!covered("/users/*/todos", "/users/bob/todos"));
        assert!(
            !covered("/a/", "/a/*/"),
            "the empty trailing segment is not `*`"
        );
    }
}
