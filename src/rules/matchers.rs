//! The matchers for principals, methods and claims (paths live in [`super::path`]), each with
//! the coverage test the linter uses to prove that one condition implies another.

use serde_json::{Map, Value};

use super::config::ClaimValue;

/// A `principals` entry: `*` (any principal), `prefix*`, `*suffix`, or an exact identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PrincipalPattern {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl PrincipalPattern {
    /// `None` when `*` appears anywhere but alone, first or last. `text` is not empty.
    pub(crate) fn compile(text: &str) -> Option<PrincipalPattern> {
        if text == "*" {
            return Some(PrincipalPattern::Any);
        }
        let pattern = if let Some(prefix) = text.strip_suffix('*') {
            PrincipalPattern::Prefix(prefix.to_owned())
        } else if let Some(suffix) = text.strip_prefix('*') {
            PrincipalPattern::Suffix(suffix.to_owned())
        } else {
            PrincipalPattern::Exact(text.to_owned())
        };
        (!pattern.text().contains('*')).then_some(pattern)
    }

    fn text(&self) -> &str {
        match self {
            PrincipalPattern::Any => "",
            PrincipalPattern::Exact(t)
            | PrincipalPattern::Prefix(t)
            | PrincipalPattern::Suffix(t) => t,
        }
    }

    pub(crate) fn matches(&self, principal: &str) -> bool {
        match self {
            PrincipalPattern::Any => !principal.is_empty(),
            PrincipalPattern::Exact(exact) => principal == exact,
            PrincipalPattern::Prefix(prefix) => principal.starts_with(prefix.as_str()),
            PrincipalPattern::Suffix(suffix) => principal.ends_with(suffix.as_str()),
        }
    }

    /// Whether every principal this pattern matches is also matched by `other`.
    pub(crate) fn is_covered_by(&self, other: &PrincipalPattern) -> bool {
        match (self, other) {
            (_, PrincipalPattern::Any) => true,
            (PrincipalPattern::Exact(exact), _) => other.matches(exact),
            (PrincipalPattern::Prefix(a), PrincipalPattern::Prefix(b)) => a.starts_with(b.as_str()),
            (PrincipalPattern::Suffix(a), PrincipalPattern::Suffix(b)) => a.ends_with(b.as_str()),
            _ => false,
        }
    }
}

/// The methods every HTTP/1.1 and HTTP/2 server knows (RFC 9110 §9, RFC 5789). Others are
/// legal, but in a rule they are more often a typo.
pub(crate) const STANDARD_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Whether `text` is a method name: an RFC 9110 `token`.
pub(crate) fn is_method_token(text: &str) -> bool {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    !text.is_empty() && text.bytes().all(tchar)
}

/// Whether the request method is one of the rule's methods (stored upper-case).
///
/// The comparison ignores ASCII case on purpose: some frameworks upper-case the method before
/// routing, so a `delete` request must not slip past a deny rule on `DELETE`.
pub(crate) fn method_in(methods: &[String], method: &str) -> bool {
    methods.iter().any(|m| m.eq_ignore_ascii_case(method))
}

/// One entry of `claims`: the claim must equal one of the values or, when it is an array,
/// contain one of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClaimCondition {
    pub(crate) name: String,
    pub(crate) values: Vec<ClaimValue>,
}

impl ClaimCondition {
    /// False when there are no claims (an mTLS-only request) or the claim is absent.
    pub(crate) fn matches(&self, claims: Option<&Map<String, Value>>) -> bool {
        let Some(claim) = claims.and_then(|claims| claims.get(&self.name)) else {
            return false;
        };
        match claim {
            Value::Array(items) => items.iter().any(|item| self.accepts(item)),
            scalar => self.accepts(scalar),
        }
    }

    fn accepts(&self, value: &Value) -> bool {
        self.values.iter().any(|wanted| wanted.equals(value))
    }

    /// Whether this condition's values are all among `other`'s, for the same claim: then any
    /// request meeting this condition meets `other` too.
    pub(crate) fn is_covered_by(&self, other: &ClaimCondition) -> bool {
        self.name == other.name && self.values.iter().all(|v| other.values.contains(v))
    }
}

impl ClaimValue {
    /// Strict comparison with a JSON value: same type and same value; floats never match.
    pub(crate) fn equals(&self, value: &Value) -> bool {
        match (self, value) {
            (ClaimValue::String(want), Value::String(have)) => want == have,
            (ClaimValue::Integer(want), Value::Number(have)) => have.as_i64() == Some(*want),
            (ClaimValue::Bool(want), Value::Bool(have)) => want == have,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn principal(text: &str) -> PrincipalPattern {
        PrincipalPattern::compile(text).expect("fixture is valid")
    }

    fn claims(value: Value) -> Map<String, Value> {
        value.as_object().cloned().expect("fixture is valid")
    }

    fn condition(name: &str, values: &[ClaimValue]) -> ClaimCondition {
        ClaimCondition {
            name: name.into(),
            values: values.to_vec(),
        }
    }

    fn text(s: &str) -> ClaimValue {
        ClaimValue::String(s.into())
    }

    const REMINDER: &str = "spiffe://cluster.local/ns/default/sa/reminder";

    #[test]
    fn principal_patterns_match_as_written() {
        assert!(principal("*").matches(REMINDER));
        assert!(!principal("*").matches(""));
        assert!(principal(REMINDER).matches(REMINDER));
        assert!(principal("spiffe://cluster.local/ns/default/*").matches(REMINDER));
        assert!(!principal("spiffe://cluster.local/ns/other/*").matches(REMINDER));
        assert!(principal("*/sa/reminder").matches(REMINDER));
        assert!(!principal(REMINDER).matches("spiffe://cluster.local/ns/default/sa/reminder2"));
    }

    #[test]
    fn star_inside_a_principal_is_refused() {
        assert_eq!(PrincipalPattern::compile("spiffe://*/sa/x"), None);
        assert_eq!(PrincipalPattern::compile("**"), None);
        assert_eq!(PrincipalPattern::compile("*x*"), None);
    }

    #[test]
    fn principal_coverage() {
        let covered = |a: &str, b: &str| principal(a).is_covered_by(&principal(b));
        assert!(covered(REMINDER, "*"));
        assert!(covered(REMINDER, "spiffe://cluster.local/*"));
        assert!(covered(
            "spiffe://cluster.local/ns/a/*",
            "spiffe://cluster.local/*"
        ));
        assert!(covered("*/reminder", "*der"));
        assert!(!covered("spiffe://cluster.local/*", REMINDER));
        assert!(!covered("*", "spiffe://*"));
    }

    #[test]
    fn method_tokens() {
        assert!(is_method_token("GET"));
        assert!(is_method_token("PROPFIND"));
        assert!(!is_method_token(""));
        assert!(!is_method_token("GET POST"));
        assert!(!is_method_token("GET,"));
    }

    #[test]
    fn lower_case_method_cannot_evade_a_method_list() {
        let methods = ["DELETE".to_owned()];
        assert!(method_in(&methods, "DELETE"));
        assert!(method_in(&methods, "delete"));
        assert!(!method_in(&methods, "GET"));
    }

    #[test]
    fn claim_matches_string_claim() {
        let admin = condition("roles", &[text("admin")]);
        assert!(admin.matches(Some(&claims(json!({"roles": "admin"})))));
        assert!(!admin.matches(Some(&claims(json!({"roles": "user"})))));
    }

    #[test]
    fn claim_matches_array_claim_containing_a_value() {
        let admin = condition("roles", &[text("admin"), text("ops")]);
        assert!(admin.matches(Some(&claims(json!({"roles": ["user", "ops"]})))));
        assert!(!admin.matches(Some(&claims(json!({"roles": ["user"]})))));
        assert!(!admin.matches(Some(&claims(json!({"roles": []})))));
    }

    #[test]
    fn absent_claim_or_no_token_does_not_match() {
        let admin = condition("roles", &[text("admin")]);
        assert!(!admin.matches(Some(&claims(json!({"sub": "bob"})))));
        assert!(!admin.matches(None));
    }

    #[test]
    fn claim_types_are_compared_strictly() {
        let tenant = condition("tenant", &[ClaimValue::Integer(42)]);
        assert!(tenant.matches(Some(&claims(json!({"tenant": 42})))));
        assert!(!tenant.matches(Some(&claims(json!({"tenant": "42"})))));
        assert!(!tenant.matches(Some(&claims(json!({"tenant": 42.0})))));
        let flag = condition("beta", &[ClaimValue::Bool(true)]);
        assert!(flag.matches(Some(&claims(json!({"beta": true})))));
        assert!(!flag.matches(Some(&claims(json!({"beta": "true"})))));
    }

    #[test]
    fn nested_claim_values_do_not_match() {
        let admin = condition("roles", &[text("admin")]);
        assert!(!admin.matches(Some(&claims(json!({"roles": {"admin": true}})))));
        assert!(!admin.matches(Some(&claims(json!({"roles": [["admin"]]})))));
    }

    #[test]
    fn claim_coverage_needs_same_claim_and_subset_of_values() {
        let admin = condition("roles", &[text("admin")]);
        let staff = condition("roles", &[text("admin"), text("ops")]);
        assert!(admin.is_covered_by(&staff));
        assert!(!staff.is_covered_by(&admin));
        assert!(!admin.is_covered_by(&condition("groups", &[text("admin")])));
    }
}
