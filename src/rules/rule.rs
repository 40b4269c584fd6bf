//! One compiled rule: its conditions, validated and ready to match without allocating.
//!
//! Every field is `Option`: `None` is a field the configuration left out, which matches
//! anything. A present list is never empty; [`Rule::compile`] refuses empty lists, so "none of
//! the entries matched" can only ever come from the entries themselves.

use super::RequestFacts;
use super::config::{Action, ClaimsConfig, RuleConfig};
use super::error::RuleError;
use super::matchers::{ClaimCondition, PrincipalPattern, is_method_token, method_in};
use super::path::PathPattern;

/// A rule ready to match: the validated form of one [`RuleConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    pub(crate) name: String,
    pub(crate) action: Action,
    pub(crate) principals: Option<Vec<PrincipalPattern>>,
    pub(crate) not_principals: Option<Vec<PrincipalPattern>>,
    /// Upper-case.
    pub(crate) methods: Option<Vec<String>>,
    /// Upper-case.
    pub(crate) not_methods: Option<Vec<String>>,
    pub(crate) paths: Option<Vec<PathPattern>>,
    pub(crate) not_paths: Option<Vec<PathPattern>>,
    pub(crate) claims: Option<Vec<ClaimCondition>>,
    pub(crate) not_claims: Option<Vec<ClaimCondition>>,
}

impl Rule {
    /// Validates one rule; its name has already been checked.
    pub(crate) fn compile(cfg: &RuleConfig) -> Result<Rule, RuleError> {
        let field = |field| Field {
            rule: &cfg.name,
            field,
        };
        Ok(Rule {
            name: cfg.name.clone(),
            action: cfg.action,
            principals: field("principals").list(&cfg.principals, Field::principal)?,
            not_principals: field("not_principals").list(&cfg.not_principals, Field::principal)?,
            methods: field("methods").list(&cfg.methods, Field::method)?,
            not_methods: field("not_methods").list(&cfg.not_methods, Field::method)?,
            paths: field("paths").list(&cfg.paths, Field::path)?,
            not_paths: field("not_paths").list(&cfg.not_paths, Field::path)?,
            claims: field("claims").claims(&cfg.claims)?,
            not_claims: field("not_claims").claims(&cfg.not_claims)?,
        })
    }

    /// Whether every present condition holds; the cheap ones are checked first.
    pub(crate) fn matches(&self, req: &RequestFacts<'_>) -> bool {
        let method = |methods: &[String]| method_in(methods, req.method);
        let path = |paths: &[PathPattern]| paths.iter().any(|p| p.matches(req.path));
        let principal = |patterns: &[PrincipalPattern]| {
            let matches_one = |p: &&str| patterns.iter().any(|pattern| pattern.matches(p));
            req.principals.iter().any(matches_one)
        };
        let all_claims = |conds: &[ClaimCondition]| conds.iter().all(|c| c.matches(req.claims));
        let any_claim = |conds: &[ClaimCondition]| conds.iter().any(|c| c.matches(req.claims));

        holds(&self.methods, method)
            && holds_not(&self.not_methods, method)
            && holds(&self.paths, path)
            && holds_not(&self.not_paths, path)
            && holds(&self.principals, principal)
            && holds_not(&self.not_principals, principal)
            && holds(&self.claims, all_claims)
            && holds_not(&self.not_claims, any_claim)
    }
}

/// An absent field holds; a present one holds when `test` does.
fn holds<T>(field: &Option<Vec<T>>, test: impl Fn(&[T]) -> bool) -> bool {
    field.as_deref().is_none_or(test)
}

/// An absent `not_*` field holds; a present one holds when `test` does not.
fn holds_not<T>(field: &Option<Vec<T>>, test: impl Fn(&[T]) -> bool) -> bool {
    field.as_deref().is_none_or(|entries| !test(entries))
}

/// Which rule and field is being compiled, to name them in errors.
#[derive(Clone, Copy)]
struct Field<'a> {
    rule: &'a str,
    field: &'static str,
}

impl Field<'_> {
    /// Compiles each entry of a list that must be absent or non-empty.
    fn list<T>(
        self,
        list: &Option<Vec<String>>,
        compile: impl Fn(Self, &str) -> Result<T, RuleError>,
    ) -> Result<Option<Vec<T>>, RuleError> {
        let Some(list) = list else {
            return Ok(None);
        };
        if list.is_empty() {
            return Err(self.error_empty_list());
        }
        let entry = |text: &String| {
            if text.is_empty() {
                return Err(self.error_empty_entry());
            }
            compile(self, text)
        };
        list.iter().map(entry).collect::<Result<_, _>>().map(Some)
    }

    fn principal(self, text: &str) -> Result<PrincipalPattern, RuleError> {
        PrincipalPattern::compile(text).ok_or_else(|| RuleError::BadPrincipal {
            rule: self.rule.to_owned(),
            field: self.field,
            principal: text.to_owned(),
        })
    }

    fn method(self, text: &str) -> Result<String, RuleError> {
        if text == "*" {
            let (rule, field) = (self.rule.to_owned(), self.field);
            return Err(RuleError::WildcardMethod { rule, field });
        }
        if !is_method_token(text) {
            return Err(RuleError::BadMethod {
                rule: self.rule.to_owned(),
                field: self.field,
                method: text.to_owned(),
            });
        }
        Ok(text.to_ascii_uppercase())
    }

    fn path(self, text: &str) -> Result<PathPattern, RuleError> {
        PathPattern::compile(text).map_err(|problem| RuleError::BadPath {
            rule: self.rule.to_owned(),
            field: self.field,
            pattern: text.to_owned(),
            problem,
        })
    }

    fn claims(
        self,
        claims: &Option<ClaimsConfig>,
    ) -> Result<Option<Vec<ClaimCondition>>, RuleError> {
        let Some(claims) = claims else {
            return Ok(None);
        };
        if claims.is_empty() {
            return Err(self.error_empty_list());
        }
        let condition = |(name, values): (&String, &Vec<_>)| {
            if name.is_empty() {
                return Err(self.error_empty_entry());
            }
            if values.is_empty() {
                return Err(RuleError::EmptyClaimValues {
                    rule: self.rule.to_owned(),
                    field: self.field,
                    claim: name.clone(),
                });
            }
            let (name, values) = (name.clone(), values.clone());
            Ok(ClaimCondition { name, values })
        };
        claims
            .iter()
            .map(condition)
            .collect::<Result<_, _>>()
            .map(Some)
    }

    fn error_empty_list(self) -> RuleError {
        let (rule, field) = (self.rule.to_owned(), self.field);
        RuleError::EmptyList { rule, field }
    }

    fn error_empty_entry(self) -> RuleError {
        let (rule, field) = (self.rule.to_owned(), self.field);
        RuleError::EmptyEntry { rule, field }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, Value, json};

    use super::*;
    use crate::rules::config::ClaimValue;

    fn rule(yaml: &str) -> Result<Rule, RuleError> {
        let cfg: RuleConfig = serde_saphyr::from_str(yaml).expect("fixture is valid");
        Rule::compile(&cfg)
    }

    fn facts<'a>(method: &'a str, path: &'a str, principals: &'a [&'a str]) -> RequestFacts<'a> {
        RequestFacts {
            method,
            path,
            principals,
            claims: None,
        }
    }

    fn claims(value: Value) -> Map<String, Value> {
        value.as_object().cloned().expect("fixture is valid")
    }

    #[test]
    fn rule_without_conditions_matches_everything() {
        let any = rule("name: any\naction: deny\n").expect("fixture is valid");
        assert!(any.matches(&facts("GET", "/", &[])));
        assert!(any.matches(&facts("PROPFIND", "/a/b", &["x"])));
    }

    #[test]
    fn every_present_field_must_match() {
        let r = rule("name: r\naction: allow\nmethods: [GET]\npaths: [/todos/*]\n")
            .expect("fixture is valid");
        assert!(r.matches(&facts("GET", "/todos/1", &[])));
        assert!(!r.matches(&facts("POST", "/todos/1", &[])));
        assert!(!r.matches(&facts("GET", "/admin", &[])));
    }

    #[test]
    fn any_entry_of_a_list_matches() {
        let r = rule("name: r\naction: allow\nmethods: [GET, HEAD]\n").expect("fixture is valid");
        assert!(r.matches(&facts("HEAD", "/", &[])));
    }

    #[test]
    fn not_fields_exclude_any_matching_entry() {
        let r = rule("name: r\naction: deny\nnot_methods: [GET]\nnot_paths: [/healthz]\n")
            .expect("fixture is valid");
        assert!(r.matches(&facts("POST", "/todos", &[])));
        assert!(!r.matches(&facts("GET", "/todos", &[])));
        assert!(!r.matches(&facts("POST", "/healthz", &[])));
    }

    #[test]
    fn any_of_several_principals_may_match() {
        let r = rule("name: r\naction: allow\nprincipals: [spiffe://c/sa/share]\n")
            .expect("fixture is valid");
        assert!(r.matches(&facts("GET", "/", &["bob", "spiffe://c/sa/share"])));
        assert!(!r.matches(&facts("GET", "/", &["bob"])));
        assert!(
            !r.matches(&facts("GET", "/", &[])),
            "no principal never matches"
        );
    }

    #[test]
    fn not_principals_exclude_if_any_principal_matches() {
        let r = rule("name: r\naction: deny\nnot_principals: [spiffe://c/*]\n")
            .expect("fixture is valid");
        assert!(!r.matches(&facts("GET", "/", &["bob", "spiffe://c/sa/share"])));
        assert!(r.matches(&facts("GET", "/", &["bob"])));
        assert!(r.matches(&facts("GET", "/", &[])));
    }

    #[test]
    fn several_claims_are_and_ed() {
        let r = rule("name: r\naction: allow\nclaims: { roles: [admin], tenant: [acme] }\n")
            .expect("fixture is valid");
        let both = claims(json!({"roles": ["admin"], "tenant": "acme"}));
        let one = claims(json!({"roles": ["admin"], "tenant": "other"}));
        let mut req = facts("GET", "/", &[]);
        req.claims = Some(&both);
        assert!(r.matches(&req));
        req.claims = Some(&one);
        assert!(!r.matches(&req));
    }

    #[test]
    fn not_claims_exclude_if_any_claim_matches() {
        let r = rule("name: r\naction: allow\nnot_claims: { roles: [guest], tier: [free] }\n");
        let r = r.expect("fixture is valid");
        let free = claims(json!({"roles": ["user"], "tier": "free"}));
        let paid = claims(json!({"roles": ["user"], "tier": "paid"}));
        let mut req = facts("GET", "/", &[]);
        assert!(r.matches(&req), "no token, so no claim can exclude");
        req.claims = Some(&free);
        assert!(!r.matches(&req));
        req.claims = Some(&paid);
        assert!(r.matches(&req));
    }

    #[test]
    fn methods_are_stored_upper_case() {
        let r = rule("name: r\naction: allow\nmethods: [get, Post]\n").expect("fixture is valid");
        assert_eq!(r.methods, Some(vec!["GET".to_owned(), "POST".to_owned()]));
    }

    #[test]
    fn empty_lists_are_refused() {
        for field in [
            "principals",
            "not_principals",
            "methods",
            "not_methods",
            "paths",
        ] {
            let err = rule(&format!("name: r\naction: allow\n{field}: []\n"))
                .expect_err("must be refused");
            assert_eq!(
                err,
                RuleError::EmptyList {
                    rule: "r".into(),
                    field
                }
            );
        }
        let err = rule("name: r\naction: allow\nnot_claims: {}\n").expect_err("must be refused");
        let field = "not_claims";
        assert_eq!(
            err,
            RuleError::EmptyList {
                rule: "r".into(),
                field
            }
        );
    }

    #[test]
    fn claim_without_values_is_refused() {
        let err =
            rule("name: r\naction: allow\nclaims: { roles: [] }\n").expect_err("must be refused");
        let (rule, field, claim) = ("r".into(), "claims", "roles".into());
        assert_eq!(err, RuleError::EmptyClaimValues { rule, field, claim });
    }

    #[test]
    fn empty_entries_are_refused() {
        let err = rule("name: r\naction: allow\nmethods: ['']\n").expect_err("must be refused");
        let field = "methods";
        assert_eq!(
            err,
            RuleError::EmptyEntry {
                rule: "r".into(),
                field
            }
        );
    }

    #[test]
    fn bad_method_is_refused() {
        let err =
            rule("name: r\naction: allow\nmethods: ['GET POST']\n").expect_err("must be refused");
        assert!(matches!(err, RuleError::BadMethod { ref method, .. } if method == "GET POST"));
        let err =
            rule("name: r\naction: allow\nnot_methods: ['*']\n").expect_err("must be refused");
        let field = "not_methods";
        assert_eq!(
            err,
            RuleError::WildcardMethod {
                rule: "r".into(),
                field
            }
        );
    }

    #[test]
    fn bad_principal_and_path_are_refused_with_field() {
        let err =
            rule("name: r\naction: allow\nprincipals: ['a*b']\n").expect_err("must be refused");
        assert!(matches!(
            err,
            RuleError::BadPrincipal {
                field: "principals",
                ..
            }
        ));
        let err =
            rule("name: r\naction: allow\nnot_paths: [/a/../b]\n").expect_err("must be refused");
        assert!(matches!(
            err,
            RuleError::BadPath {
                field: "not_paths",
                ..
            }
        ));
        assert!(err.to_string().contains("write it as `/b`"), "{err}");
    }

    #[test]
    fn claim_values_are_kept_typed() {
        let r = rule("name: r\naction: allow\nclaims: { tenant: [42, '42'] }\n")
            .expect("fixture is valid");
        let values = &r.claims.expect("fixture is valid")[0].values;
        assert_eq!(
            values,
            &[ClaimValue::Integer(42), ClaimValue::String("42".into())]
        );
    }
}
