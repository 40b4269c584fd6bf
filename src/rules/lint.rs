//! Finding rules that can never take effect, for `portcullis check`.
//!
//! Every finding is proved, never guessed: when this module says a rule can never match, no
//! request can make it match. The converse does not hold; the checks reason about the shapes of
//! patterns, not about every request, so some dead rules go unreported.

use thiserror::Error;

use super::config::Action;
use super::matchers::{ClaimCondition, PrincipalPattern, STANDARD_METHODS};
use super::path::PathPattern;
use super::rule::Rule;

/// One problem with one rule.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("rule `{rule}`: {problem}")]
pub struct Finding {
    pub rule: String,
    pub problem: Problem,
}

/// What is wrong with a rule.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Problem {
    #[error("every entry of `methods` is also in `not_methods`, so the rule can never match")]
    MethodsAllExcluded,
    #[error("`not_paths` excludes every path that `paths` admits, so the rule can never match")]
    PathsAllExcluded,
    #[error(
        "`not_principals` excludes every principal that `principals` admits, so the rule can \
         never match"
    )]
    PrincipalsAllExcluded,
    #[error(
        "`not_claims` excludes every value of claim `{claim}` that `claims` accepts, so the \
         rule can never match"
    )]
    ClaimAllExcluded { claim: String },
    #[error(
        "every request it matches is denied first by deny rule `{deny_rule}`, so it never \
         allows anything"
    )]
    ShadowedByDeny { deny_rule: String },
    #[error("`{field}` entry `{method}` is not a standard HTTP method; check its spelling")]
    UnknownMethod { field: &'static str, method: String },
}

impl Problem {
    /// Whether the rule can never change a decision. An unknown method may be intended (a
    /// WebDAV `PROPFIND`, say), so that one alone does not make a rule dead.
    pub fn never_applies(&self) -> bool {
        !matches!(self, Problem::UnknownMethod { .. })
    }
}

/// The findings for every rule, in configuration order.
pub(crate) fn lint(rules: &[Rule]) -> Vec<Finding> {
    let mut findings = Vec::new();
    for rule in rules {
        for problem in problems(rule, rules) {
            let rule = rule.name.clone();
            findings.push(Finding { rule, problem });
        }
    }
    findings
}

fn problems(rule: &Rule, all: &[Rule]) -> Vec<Problem> {
    let mut found = unknown_methods(rule);
    found.extend(contradictions(rule));
    if found.iter().any(Problem::never_applies) || rule.action == Action::Deny {
        return found;
    }

    let mut deny_rules = all.iter().filter(|other| other.action == Action::Deny);
    if let Some(deny) = deny_rules.find(|deny| rule_is_covered_by(rule, deny)) {
        let deny_rule = deny.name.clone();
        found.push(Problem::ShadowedByDeny { deny_rule });
    }
    found
}

fn unknown_methods(rule: &Rule) -> Vec<Problem> {
    let mut found = Vec::new();
    for (field, methods) in [
        ("methods", &rule.methods),
        ("not_methods", &rule.not_methods),
    ] {
        for method in methods.iter().flatten() {
            if !STANDARD_METHODS.contains(&method.as_str()) {
                let method = method.clone();
                found.push(Problem::UnknownMethod { field, method });
            }
        }
    }
    found
}

/// A rule whose `not_*` fields exclude everything its positive fields admit.
fn contradictions(rule: &Rule) -> Vec<Problem> {
    let mut found = Vec::new();
    if let (Some(methods), Some(not)) = (&rule.methods, &rule.not_methods)
        && methods.iter().all(|method| not.contains(method))
    {
        found.push(Problem::MethodsAllExcluded);
    }
    if let Some(not) = &rule.not_paths
        && all_covered(&paths_or_any(rule), not, PathPattern::is_covered_by)
    {
        found.push(Problem::PathsAllExcluded);
    }
    if let (Some(principals), Some(not)) = (&rule.principals, &rule.not_principals)
        && all_covered(principals, not, PrincipalPattern::is_covered_by)
    {
        found.push(Problem::PrincipalsAllExcluded);
    }
    found.extend(claim_contradictions(rule));
    found
}

fn claim_contradictions(rule: &Rule) -> Vec<Problem> {
    let (Some(claims), Some(not)) = (&rule.claims, &rule.not_claims) else {
        return Vec::new();
    };
    let excluded = |claim: &&ClaimCondition| not.iter().any(|n| claim.is_covered_by(n));
    let problem = |claim: &ClaimCondition| Problem::ClaimAllExcluded {
        claim: claim.name.clone(),
    };
    claims.iter().filter(excluded).map(problem).collect()
}

/// A rule's `paths`, or `*` when it has none.
fn paths_or_any(rule: &Rule) -> Vec<PathPattern> {
    rule.paths.clone().unwrap_or_else(|| vec![PathPattern::ANY])
}

/// Whether each of `entries` is covered by one of `by`.
fn all_covered<T>(entries: &[T], by: &[T], covered: impl Fn(&T, &T) -> bool) -> bool {
    entries
        .iter()
        .all(|entry| by.iter().any(|b| covered(entry, b)))
}

/// Whether every request `rule` matches is also matched by `other`.
fn rule_is_covered_by(rule: &Rule, other: &Rule) -> bool {
    methods_covered(rule, other)
        && paths_covered(rule, other)
        && principals_covered(rule, other)
        && claims_covered(rule, other)
}

fn paths_covered(rule: &Rule, other: &Rule) -> bool {
    let covered = PathPattern::is_covered_by;
    let (not_mine, not_theirs) = (rule.not_paths.as_deref(), other.not_paths.as_deref());
    includes_hold(Some(&paths_or_any(rule)), other.paths.as_deref(), covered)
        && excludes_hold(not_mine, not_theirs, covered)
}

fn principals_covered(rule: &Rule, other: &Rule) -> bool {
    let covered = PrincipalPattern::is_covered_by;
    let (mine, theirs) = (rule.principals.as_deref(), other.principals.as_deref());
    let (not_mine, not_theirs) = (
        rule.not_principals.as_deref(),
        other.not_principals.as_deref(),
    );
    includes_hold(mine, theirs, covered) && excludes_hold(not_mine, not_theirs, covered)
}

/// `other`'s positive list admits everything `rule`'s does. An absent list on `other` admits
/// anything; an absent list on `rule` is only covered by an absent one.
fn includes_hold<T>(
    mine: Option<&[T]>,
    theirs: Option<&[T]>,
    covered: impl Fn(&T, &T) -> bool,
) -> bool {
    match (mine, theirs) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(mine), Some(theirs)) => all_covered(mine, theirs, covered),
    }
}

/// Everything `other`'s `not_` list excludes, `rule`'s already excludes.
fn excludes_hold<T>(
    mine: Option<&[T]>,
    theirs: Option<&[T]>,
    covered: impl Fn(&T, &T) -> bool,
) -> bool {
    match (mine, theirs) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(mine), Some(theirs)) => all_covered(theirs, mine, covered),
    }
}

fn methods_covered(rule: &Rule, other: &Rule) -> bool {
    let same = |a: &String, b: &String| a == b;
    let methods = rule.methods.as_deref();
    let includes = includes_hold(methods, other.methods.as_deref(), same);

    // `other`'s exclusions are harmless if `rule` excludes them too, or never admits them.
    let Some(their_not) = &other.not_methods else {
        return includes;
    };
    let disjoint = methods.is_some_and(|mine| mine.iter().all(|m| !their_not.contains(m)));
    includes && (disjoint || excludes_hold(rule.not_methods.as_deref(), Some(their_not), same))
}

/// Each of `other`'s claim conditions is implied by one of `rule`'s, and each claim value
/// `other` excludes, `rule` excludes too.
fn claims_covered(rule: &Rule, other: &Rule) -> bool {
    let mine = || rule.claims.iter().flatten();
    let my_exclusions = || rule.not_claims.iter().flatten();

    let mut required = other.claims.iter().flatten();
    let mut excluded = other.not_claims.iter().flatten();
    required.all(|theirs| mine().any(|m| m.is_covered_by(theirs)))
        && excluded.all(|theirs| my_exclusions().any(|m| theirs.is_covered_by(m)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{AuthorizationConfig, Policy};

    fn lint_yaml(rules: &str) -> Vec<Finding> {
        let yaml = format!("rules:\n{rules}");
        let cfg: AuthorizationConfig = serde_saphyr::from_str(&yaml).expect("fixture is valid");
        Policy::compile(&cfg).expect("fixture is valid").lint()
    }

    fn problems_of(rules: &str) -> Vec<Problem> {
        lint_yaml(rules).into_iter().map(|f| f.problem).collect()
    }

    #[test]
    fn sound_rules_have_no_findings() {
        let rules = "- name: reads\n  action: allow\n  methods: [GET]\n  paths: [/todos/*]\n\
                     - name: no-admin\n  action: deny\n  paths: [/admin/*]\n";
        assert_eq!(lint_yaml(rules), vec![]);
    }

    #[test]
    fn methods_entirely_excluded_are_found() {
        let rules =
            "- name: r\n  action: allow\n  methods: [GET, HEAD]\n  not_methods: [HEAD, GET]\n";
        let found = lint_yaml(rules);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].rule, "r");
        assert_eq!(found[0].problem, Problem::MethodsAllExcluded);
        assert!(
            found[0].to_string().starts_with("rule `r`: "),
            "{}",
            found[0]
        );
    }

    #[test]
    fn methods_partly_excluded_are_fine() {
        let rules = "- name: r\n  action: allow\n  methods: [GET, HEAD]\n  not_methods: [HEAD]\n";
        assert_eq!(problems_of(rules), vec![]);
    }

    #[test]
    fn paths_entirely_excluded_are_found() {
        let rules = "- name: r\n  action: allow\n  paths: [/todos/1, /todos/2/*]\n  \
                     not_paths: [/todos/*]\n";
        assert_eq!(problems_of(rules), vec![Problem::PathsAllExcluded]);
    }

    #[test]
    fn not_paths_star_excludes_everything() {
        let rules = "- name: r\n  action: deny\n  not_paths: ['*']\n";
        assert_eq!(problems_of(rules), vec![Problem::PathsAllExcluded]);
    }

    #[test]
    fn prefix_exclusion_leaves_parent_path_matchable() {
        let rules = "- name: r\n  action: allow\n  paths: [/todos, /todos/*]\n  \
                     not_paths: [/todos/*]\n";
        assert_eq!(problems_of(rules), vec![]);
    }

    #[test]
    fn principals_entirely_excluded_are_found() {
        let rules = "- name: r\n  action: allow\n  principals: [spiffe://c/ns/a/sa/x]\n  \
                     not_principals: ['spiffe://c/ns/a/*']\n";
        assert_eq!(problems_of(rules), vec![Problem::PrincipalsAllExcluded]);
    }

    #[test]
    fn claim_entirely_excluded_is_found() {
        let rules = "- name: r\n  action: allow\n  claims: { roles: [admin] }\n  \
                     not_claims: { roles: [admin, guest] }\n";
        let claim = "roles".to_owned();
        assert_eq!(
            problems_of(rules),
            vec![Problem::ClaimAllExcluded { claim }]
        );
    }

    #[test]
    fn method_typo_is_found_but_does_not_make_the_rule_dead() {
        let rules = "- name: r\n  action: allow\n  methods: [GTE, PROPFIND]\n";
        let found = problems_of(rules);
        assert_eq!(found.len(), 2);
        let field = "methods";
        let method = "GTE".to_owned();
        assert_eq!(found[0], Problem::UnknownMethod { field, method });
        assert!(!found[0].never_applies());
    }

    #[test]
    fn allow_shadowed_by_unconditional_deny_is_found() {
        let rules = "- name: lockdown\n  action: deny\n\
                     - name: reads\n  action: allow\n  methods: [GET]\n";
        let found = lint_yaml(rules);
        let deny_rule = "lockdown".to_owned();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].rule, "reads");
        assert_eq!(found[0].problem, Problem::ShadowedByDeny { deny_rule });
    }

    #[test]
    fn allow_shadowed_by_broader_deny_is_found() {
        let rules = "- name: reads\n  action: allow\n  methods: [GET]\n  paths: [/admin/users]\n  \
                     principals: [spiffe://c/sa/ops]\n  claims: { roles: [admin] }\n\
                     - name: no-admin\n  action: deny\n  paths: [/admin/*]\n  \
                     principals: ['spiffe://c/*']\n";
        let deny_rule = "no-admin".to_owned();
        assert_eq!(
            problems_of(rules),
            vec![Problem::ShadowedByDeny { deny_rule }]
        );
    }

    #[test]
    fn allow_overlapping_a_narrower_deny_is_not_shadowed() {
        let cases = [
            "- name: a\n  action: allow\n  paths: [/todos/*]\n- name: d\n  action: deny\n  \
             paths: [/todos/secret]\n",
            "- name: a\n  action: allow\n- name: d\n  action: deny\n  methods: [DELETE]\n",
            "- name: a\n  action: allow\n  methods: [GET]\n- name: d\n  action: deny\n  \
             claims: { roles: [guest] }\n",
            "- name: a\n  action: allow\n- name: d\n  action: deny\n  principals: ['*']\n",
        ];
        for rules in cases {
            assert_eq!(problems_of(rules), vec![], "{rules}");
        }
    }

    #[test]
    fn deny_exclusions_count_when_judging_shadowing() {
        let shadowed = "- name: a\n  action: allow\n  methods: [POST]\n\
                        - name: d\n  action: deny\n  not_methods: [GET, HEAD]\n";
        let deny_rule = "d".to_owned();
        assert_eq!(
            problems_of(shadowed),
            vec![Problem::ShadowedByDeny { deny_rule }]
        );

        let spared = "- name: a\n  action: allow\n  methods: [GET]\n\
                      - name: d\n  action: deny\n  not_methods: [GET, HEAD]\n";
        assert_eq!(problems_of(spared), vec![]);
    }

    #[test]
    fn deny_not_claims_shadow_only_when_allow_excludes_them_too() {
        let shadowed = "- name: a\n  action: allow\n  not_claims: { roles: [admin, ops] }\n\
                        - name: d\n  action: deny\n  not_claims: { roles: [admin] }\n";
        let deny_rule = "d".to_owned();
        assert_eq!(
            problems_of(shadowed),
            vec![Problem::ShadowedByDeny { deny_rule }]
        );

        let spared = "- name: a\n  action: allow\n  claims: { roles: [admin] }\n\
                      - name: d\n  action: deny\n  not_claims: { roles: [admin] }\n";
        assert_eq!(problems_of(spared), vec![]);
    }

    #[test]
    fn dead_rule_is_not_also_reported_as_shadowed() {
        let rules = "- name: a\n  action: allow\n  methods: [GET]\n  not_methods: [GET]\n\
                     - name: d\n  action: deny\n";
        assert_eq!(problems_of(rules), vec![Problem::MethodsAllExcluded]);
    }
}
