//! The `authorization:` section of the configuration file, exactly as written.
//!
//! These types only describe the YAML; nothing here is checked beyond its shape. Every struct
//! rejects unknown fields, so a typo such as `method:` fails with a message that names it
//! instead of silently widening a rule. [`super::Policy::compile`] validates the values and
//! turns them into matchers.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// The rule set: its name, whether it only reports, and its rules in order.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationConfig {
    /// Named in the description of every 403, so that a caller knows which rule set said no.
    #[serde(default = "default_policy_name")]
    pub name: String,

    /// Evaluate every request, report what would be denied, and let it through.
    #[serde(default)]
    pub dry_run: bool,

    /// Checked deny rules first, then allow rules; each kind in the order written.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

impl Default for AuthorizationConfig {
    fn default() -> Self {
        AuthorizationConfig {
            name: default_policy_name(),
            dry_run: false,
            rules: Vec::new(),
        }
    }
}

/// The name a rule set has when the configuration gives none.
pub(crate) fn default_policy_name() -> String {
    "default".to_owned()
}

/// One rule. Every field that is present must match; an absent field matches anything.
///
/// A list field that is present but `null` (`methods:` with nothing after it) is rejected while
/// parsing: read as "absent" it would make the rule match every method.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Unique within the rule set; named in logs and metrics, never to the client.
    pub name: String,
    pub action: Action,
    /// mTLS peer identities or token subjects: exact, `*`, `prefix*` or `*suffix`.
    #[serde(default, deserialize_with = "present_list")]
    pub principals: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present_list")]
    pub not_principals: Option<Vec<String>>,
    /// HTTP methods, in any case.
    #[serde(default, deserialize_with = "present_list")]
    pub methods: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present_list")]
    pub not_methods: Option<Vec<String>>,
    /// Path patterns in normal form: `/exact`, `/prefix/*`, `/glob/*/segment`, or `*`.
    #[serde(default, deserialize_with = "present_list")]
    pub paths: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present_list")]
    pub not_paths: Option<Vec<String>>,
    /// Every listed claim must equal, or as an array contain, one of its values.
    #[serde(default, deserialize_with = "present_map")]
    pub claims: Option<ClaimsConfig>,
    /// No listed claim may equal, or as an array contain, any of its values.
    #[serde(default, deserialize_with = "present_map")]
    pub not_claims: Option<ClaimsConfig>,
}

impl RuleConfig {
    /// A rule with the given name and action and no conditions, for building rules in code.
    pub fn new(name: impl Into<String>, action: Action) -> Self {
        RuleConfig {
            name: name.into(),
            action,
            principals: None,
            not_principals: None,
            methods: None,
            not_methods: None,
            paths: None,
            not_paths: None,
            claims: None,
            not_claims: None,
        }
    }
}

/// Claim name to the values of which the claim must equal (or, for an array, contain) one.
pub type ClaimsConfig = BTreeMap<String, Vec<ClaimValue>>;

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        })
    }
}

/// A value a claim is compared with. Types are compared strictly: the string `"42"` does not
/// equal the number `42`, so quote a value in YAML exactly when the token carries a string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClaimValue {
    String(String),
    Integer(i64),
    Bool(bool),
}

impl fmt::Display for ClaimValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClaimValue::String(s) => write!(f, "{s:?}"),
            ClaimValue::Integer(i) => write!(f, "{i}"),
            ClaimValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

impl<'de> Deserialize<'de> for ClaimValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ClaimValueVisitor)
    }
}

struct ClaimValueVisitor;

impl Visitor<'_> for ClaimValueVisitor {
    type Value = ClaimValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, an integer or a boolean")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<ClaimValue, E> {
        Ok(ClaimValue::String(v.to_owned()))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<ClaimValue, E> {
        Ok(ClaimValue::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<ClaimValue, E> {
        Ok(ClaimValue::Integer(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<ClaimValue, E> {
        i64::try_from(v)
            .map(ClaimValue::Integer)
            .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
    }
}

/// A list that, when the field is written at all, must be a list: `null` is an error.
fn present_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    Vec::deserialize(d).map(Some)
}

/// A map that, when the field is written at all, must be a map: `null` is an error.
fn present_map<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ClaimsConfig>, D::Error> {
    ClaimsConfig::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<AuthorizationConfig, serde_saphyr::Error> {
        serde_saphyr::from_str(yaml)
    }

    #[test]
    fn empty_section_has_default_name_and_no_rules() {
        let cfg = parse("{}").expect("fixture is valid");
        assert_eq!(cfg, AuthorizationConfig::default());
        assert_eq!(cfg.name, "default");
    }

    #[test]
    fn full_rule_parses() {
        let cfg = parse(
            "name: todos-policy\n\
             dry_run: true\n\
             rules:\n\
             - name: reads\n  action: allow\n  principals: [a]\n  not_principals: [b]\n  \
             methods: [GET]\n  not_methods: [POST]\n  paths: [/x]\n  not_paths: [/y]\n  \
             claims: { roles: [admin, 7, true] }\n  not_claims: { tier: [free] }\n",
        )
        .expect("fixture is valid");
        assert!(cfg.dry_run);
        let rule = &cfg.rules[0];
        assert_eq!(rule.action, Action::Allow);
        assert_eq!(rule.methods.as_deref(), Some(&["GET".to_owned()][..]));
        let roles = &rule.claims.as_ref().expect("fixture is valid")["roles"];
        assert_eq!(
            roles,
            &[
                ClaimValue::String("admin".into()),
                ClaimValue::Integer(7),
                ClaimValue::Bool(true)
            ]
        );
    }

    #[test]
    fn unknown_rule_field_is_rejected_by_name() {
        let err = parse("rules:\n- name: a\n  action: allow\n  method: [GET]\n")
            .expect_err("must be refused");
        assert!(err.to_string().contains("method"), "{err}");
    }

    #[test]
    fn unknown_section_field_is_rejected_by_name() {
        let err = parse("dryrun: true\n").expect_err("must be refused");
        assert!(err.to_string().contains("dryrun"), "{err}");
    }

    #[test]
    fn unknown_action_is_rejected() {
        let err = parse("rules:\n- name: a\n  action: permit\n").expect_err("must be refused");
        assert!(err.to_string().contains("permit"), "{err}");
    }

    #[test]
    fn null_list_is_rejected_rather_than_read_as_absent() {
        assert!(parse("rules:\n- name: a\n  action: allow\n  methods:\n").is_err());
        assert!(parse("rules:\n- name: a\n  action: allow\n  claims:\n").is_err());
    }

    #[test]
    fn nested_claim_value_is_rejected() {
        assert!(parse("rules:\n- name: a\n  action: allow\n  claims: { r: [[x]] }\n").is_err());
    }

    #[test]
    fn action_must_be_written() {
        assert!(parse("rules:\n- name: a\n").is_err());
    }
}
