//! Why a rule set could not be compiled. Each error names the rule and the field, and says how
//! to fix it; the configuration loader prints it as one line.

use thiserror::Error;

use super::path::PatternProblem;

/// A rule set that [`super::Policy::compile`] refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RuleError {
    #[error(
        "authorization.name `{name}` is not a valid name: use 1 to {max} letters, digits, `.`, \
         `_` or `-`",
        max = MAX_NAME_LEN
    )]
    BadPolicyName { name: String },

    #[error(
        "authorization.rules[{index}].name `{name}` is not a valid name: use 1 to {max} \
         letters, digits, `.`, `_` or `-`",
        max = MAX_NAME_LEN
    )]
    BadRuleName { index: usize, name: String },

    #[error(
        "authorization.rules[{second}]: the name `{name}` is already used by rules[{first}]; \
         give every rule its own name"
    )]
    DuplicateRuleName {
        name: String,
        first: usize,
        second: usize,
    },

    #[error(
        "rule `{rule}`: `{field}` is empty and could never match; remove `{field}` to match \
         anything, or list at least one entry"
    )]
    EmptyList { rule: String, field: &'static str },

    #[error("rule `{rule}`: `{field}` has an empty entry; remove it")]
    EmptyEntry { rule: String, field: &'static str },

    #[error("rule `{rule}`: `{field}` entry `{method}` is not an HTTP method name")]
    BadMethod {
        rule: String,
        field: &'static str,
        method: String,
    },

    #[error("rule `{rule}`: `{field}` cannot contain `*`; remove `{field}` to match every method")]
    WildcardMethod { rule: String, field: &'static str },

    #[error(
        "rule `{rule}`: `{field}` entry `{principal}` may use `*` only alone, as its first \
         character or as its last"
    )]
    BadPrincipal {
        rule: String,
        field: &'static str,
        principal: String,
    },

    #[error("rule `{rule}`: `{field}` entry `{pattern}`: {problem}")]
    BadPath {
        rule: String,
        field: &'static str,
        pattern: String,
        problem: PatternProblem,
    },

    #[error(
        "rule `{rule}`: `{field}` claim `{claim}` has no values and could never match; list \
         at least one value"
    )]
    EmptyClaimValues {
        rule: String,
        field: &'static str,
        claim: String,
    },
}

/// The longest rule or rule set name; names end up in logs, metrics labels and 403 bodies.
pub(crate) const MAX_NAME_LEN: usize = 64;

/// Whether a rule or rule set name is short and made only of `[A-Za-z0-9._-]`, so that it is
/// safe in a `WWW-Authenticate` quoted string, a log line and a metrics label.
pub(crate) fn is_valid_name(name: &str) -> bool {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    (1..=MAX_NAME_LEN).contains(&name.len()) && name.chars().all(allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_and_plain() {
        assert!(is_valid_name("todos-policy"));
        assert!(is_valid_name("reminder.reads_v2"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("two words"));
        assert!(!is_valid_name("quote\"d"));
        assert!(!is_valid_name(&"x".repeat(MAX_NAME_LEN + 1)));
    }

    #[test]
    fn messages_name_rule_field_and_fix() {
        let err = RuleError::EmptyList {
            rule: "reads".into(),
            field: "methods",
        };
        let text = err.to_string();
        assert!(
            text.contains("`reads`") && text.contains("`methods`"),
            "{text}"
        );
        assert!(text.contains("remove `methods`"), "{text}");
    }
}
