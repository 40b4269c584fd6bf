//! Authorization rules: what an authenticated caller may do here, decided after authentication
//! and before the request is forwarded.
//!
//! This follows the spirit of Istio's `AuthorizationPolicy`: named rules with an action, `allow`
//! or `deny`, match on principals (the mTLS peer identity or the token `sub`), methods, paths and
//! token claims, each with a `not_` form. Deny rules are checked first; if any allow rule exists,
//! a request must match one. A dry-run mode computes the same decision but lets the request
//! through, so that new rules can be rolled out by watching what they would deny.
//!
//! The module is pure: [`Policy::compile`] turns the `authorization:` section into matchers
//! once, [`Policy::evaluate`] answers one request without allocating, and [`Policy::lint`]
//! finds rules that can never take effect, for `portcullis check`. It does not authenticate,
//! answer the client, log or count; the caller does, with the [`Decision`] it gets back. Paths
//! must be brought into normal form with [`normalize_path`] first, or a deny rule could be
//! evaded with `..` or percent-encoding.

mod config;
mod error;
mod lint;
mod matchers;
mod path;
mod rule;

use std::fmt;

use serde_json::{Map, Value};

pub use config::{Action, AuthorizationConfig, ClaimValue, ClaimsConfig, RuleConfig};
pub use error::RuleError;
pub use lint::{Finding, Problem};
pub use path::{PathError, PathPattern, PatternProblem, normalize_path};

use error::is_valid_name;
use rule::Rule;

/// A compiled rule set: immutable, cheap to share and to evaluate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    name: String,
    dry_run: bool,
    /// In configuration order; deny and allow rules interleaved as written.
    rules: Vec<Rule>,
    has_allow_rules: bool,
}

/// What is known about a request when rules are evaluated.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// As received; compared with the rule's methods ignoring ASCII case.
    pub method: &'a str,
    /// The path in normal form, from [`normalize_path`].
    pub path: &'a str,
    /// Every identity the request proved: the mTLS peer, the token `sub`, or both.
    pub principals: &'a [&'a str],
    /// The verified token's claims; `None` when the caller authenticated with mTLS only.
    pub claims: Option<&'a Map<String, Value>>,
}

/// The outcome of [`Policy::evaluate`]. Rule names are for logs and metrics; the client is only
/// told the rule set's [`Policy::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision<'p> {
    /// Let it through. `rule` is the allow rule that matched, `None` when there are none.
    Allow { rule: Option<&'p str> },
    /// Answer 403.
    Deny(Denial<'p>),
    /// Dry run: let it through, but log and count that it would have been denied.
    WouldDeny(Denial<'p>),
}

/// Why a request is (or in a dry run, would be) denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial<'p> {
    /// This deny rule matched.
    DenyRule { rule: &'p str },
    /// Allow rules exist and none matched.
    NoAllowRuleMatched,
}

impl Decision<'_> {
    /// Whether the request goes on to the app: also true for [`Decision::WouldDeny`].
    pub fn is_allowed(&self) -> bool {
        !matches!(self, Decision::Deny(_))
    }

    /// The reason the request was or would have been denied, if it was.
    pub fn denial(&self) -> Option<&Denial<'_>> {
        match self {
            Decision::Allow { .. } => None,
            Decision::Deny(denial) | Decision::WouldDeny(denial) => Some(denial),
        }
    }
}

impl Denial<'_> {
    /// A fixed label for logs and metrics: `deny_rule` or `no_allow_rule`.
    pub fn reason_code(&self) -> &'static str {
        match self {
            Denial::DenyRule { .. } => "deny_rule",
            Denial::NoAllowRuleMatched => "no_allow_rule",
        }
    }
}

impl fmt::Display for Denial<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denial::DenyRule { rule } => write!(f, "deny rule {rule}"),
            Denial::NoAllowRuleMatched => f.write_str("no allow rule matched"),
        }
    }
}

impl Default for Policy {
    /// No rules: every authenticated request is allowed.
    fn default() -> Self {
        Policy {
            name: config::default_policy_name(),
            dry_run: false,
            rules: Vec::new(),
            has_allow_rules: false,
        }
    }
}

impl Policy {
    /// Validates the `authorization:` section and compiles its rules.
    pub fn compile(cfg: &AuthorizationConfig) -> Result<Policy, RuleError> {
        if !is_valid_name(&cfg.name) {
            let name = cfg.name.clone();
            return Err(RuleError::BadPolicyName { name });
        }
        check_rule_names(&cfg.rules)?;

        let rules = cfg
            .rules
            .iter()
            .map(Rule::compile)
            .collect::<Result<Vec<_>, _>>()?;
        let has_allow_rules = rules.iter().any(|r| r.action == Action::Allow);
        Ok(Policy {
            name: cfg.name.clone(),
            dry_run: cfg.dry_run,
            rules,
            has_allow_rules,
        })
    }

    /// The rule set's name, for the description of a 403.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether denials are only reported ([`Decision::WouldDeny`]).
    pub fn is_dry_run(&self) -> bool {
        self.dry_run
    }

    /// No rules at all: every request is allowed.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// How many rules there are, for the start-up log.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Decides one request: the first matching deny rule denies; otherwise, when allow rules
    /// exist, the first matching one allows and no match denies; with no allow rules, allow.
    pub fn evaluate(&self, req: &RequestFacts<'_>) -> Decision<'_> {
        let decision = self.decide(req);
        match decision {
            Decision::Deny(denial) if self.dry_run => Decision::WouldDeny(denial),
            other => other,
        }
    }

    fn decide(&self, req: &RequestFacts<'_>) -> Decision<'_> {
        let of = |action| self.rules.iter().filter(move |r| r.action == action);

        if let Some(deny) = of(Action::Deny).find(|r| r.matches(req)) {
            return Decision::Deny(Denial::DenyRule { rule: &deny.name });
        }
        if !self.has_allow_rules {
            return Decision::Allow { rule: None };
        }
        match of(Action::Allow).find(|r| r.matches(req)) {
            Some(allow) => Decision::Allow {
                rule: Some(&allow.name),
            },
            None => Decision::Deny(Denial::NoAllowRuleMatched),
        }
    }

    /// Rules that can never take effect, and likely typos, in configuration order.
    pub fn lint(&self) -> Vec<Finding> {
        lint::lint(&self.rules)
    }
}

/// Every rule name valid and used once.
fn check_rule_names(rules: &[RuleConfig]) -> Result<(), RuleError> {
    for (index, rule) in rules.iter().enumerate() {
        if !is_valid_name(&rule.name) {
            let name = rule.name.clone();
            return Err(RuleError::BadRuleName { index, name });
        }
        if let Some(first) = rules[..index].iter().position(|r| r.name == rule.name) {
            let name = rule.name.clone();
            return Err(RuleError::DuplicateRuleName {
                name,
                first,
                second: index,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
