//! Tests of a whole rule set: decision order, dry run, compile errors, and the todo story.

use serde_json::json;

use super::*;

const REMINDER: &str = "spiffe://cluster.local/ns/default/sa/reminder";
const TODOS: &str = "spiffe://cluster.local/ns/default/sa/todos";
const SHARE: &str = "spiffe://cluster.local/ns/default/sa/share";

fn policy(yaml: &str) -> Policy {
    let cfg: AuthorizationConfig = serde_saphyr::from_str(yaml).expect("fixture is valid");
    Policy::compile(&cfg).expect("fixture is valid")
}

fn compile_error(yaml: &str) -> RuleError {
    let cfg: AuthorizationConfig = serde_saphyr::from_str(yaml).expect("fixture is valid");
    Policy::compile(&cfg).expect_err("must be refused")
}

fn request<'a>(method: &'a str, path: &'a str, principals: &'a [&'a str]) -> RequestFacts<'a> {
    RequestFacts {
        method,
        path,
        principals,
        claims: None,
    }
}

/// Decides a request whose path arrives raw, the way the proxy will.
fn decide_raw<'p>(policy: &'p Policy, method: &str, raw_path: &str) -> Decision<'p> {
    let path = normalize_path(raw_path).expect("fixture is valid");
    policy.evaluate(&request(method, &path, &[REMINDER]))
}

fn denied_by(rule: &str) -> Decision<'_> {
    Decision::Deny(Denial::DenyRule { rule })
}

fn allowed_by(rule: &str) -> Decision<'_> {
    Decision::Allow { rule: Some(rule) }
}

const NO_ALLOW_MATCHED: Decision<'static> = Decision::Deny(Denial::NoAllowRuleMatched);

#[test]
fn no_rules_allow_everything() {
    let empty = policy("{}");
    assert!(empty.is_empty());
    assert_eq!(empty, Policy::default());
    let decision = empty.evaluate(&request("DELETE", "/admin", &[]));
    assert_eq!(decision, Decision::Allow { rule: None });
}

#[test]
fn deny_rules_alone_allow_the_rest() {
    let p = policy("rules:\n- name: no-admin\n  action: deny\n  paths: [/admin/*]\n");
    assert_eq!(
        p.evaluate(&request("GET", "/admin/x", &[])),
        denied_by("no-admin")
    );
    assert_eq!(
        p.evaluate(&request("GET", "/todos", &[])),
        Decision::Allow { rule: None }
    );
}

#[test]
fn deny_rule_wins_over_allow() {
    let p = policy(
        "rules:\n- name: everyone\n  action: allow\n\
         - name: no-deletes\n  action: deny\n  methods: [DELETE]\n",
    );
    assert_eq!(
        p.evaluate(&request("DELETE", "/x", &[])),
        denied_by("no-deletes")
    );
    assert_eq!(
        p.evaluate(&request("GET", "/x", &[])),
        allowed_by("everyone")
    );
}

#[test]
fn request_matching_no_allow_rule_is_denied() {
    let p = policy("rules:\n- name: reads\n  action: allow\n  methods: [GET]\n");
    let decision = p.evaluate(&request("POST", "/x", &[]));
    assert_eq!(decision, NO_ALLOW_MATCHED);
    let denial = decision.denial().expect("fixture is valid");
    assert_eq!(denial.to_string(), "no allow rule matched");
    assert_eq!(denial.reason_code(), "no_allow_rule");
}

#[test]
fn first_matching_rule_of_each_kind_is_reported() {
    let p = policy(
        "rules:\n- name: a1\n  action: allow\n- name: d1\n  action: deny\n  paths: [/x]\n\
         - name: a2\n  action: allow\n- name: d2\n  action: deny\n",
    );
    assert_eq!(p.evaluate(&request("GET", "/x", &[])), denied_by("d1"));
    assert_eq!(p.evaluate(&request("GET", "/y", &[])), denied_by("d2"));
    let without_d2 = policy("rules:\n- name: a1\n  action: allow\n- name: a2\n  action: allow\n");
    assert_eq!(
        without_d2.evaluate(&request("GET", "/y", &[])),
        allowed_by("a1")
    );
}

#[test]
fn deny_description_names_the_rule() {
    let denial = Denial::DenyRule { rule: "no-admin" };
    assert_eq!(denial.to_string(), "deny rule no-admin");
    assert_eq!(denial.reason_code(), "deny_rule");
}

#[test]
fn dry_run_reports_would_deny_and_lets_through() {
    let p = policy(
        "name: rollout\ndry_run: true\nrules:\n\
         - name: reads\n  action: allow\n  methods: [GET]\n\
         - name: no-admin\n  action: deny\n  paths: [/admin]\n",
    );
    assert!(p.is_dry_run());
    let would = p.evaluate(&request("GET", "/admin", &[]));
    assert_eq!(
        would,
        Decision::WouldDeny(Denial::DenyRule { rule: "no-admin" })
    );
    assert!(would.is_allowed());
    let unmatched = p.evaluate(&request("POST", "/x", &[]));
    assert_eq!(unmatched, Decision::WouldDeny(Denial::NoAllowRuleMatched));
    assert_eq!(p.evaluate(&request("GET", "/x", &[])), allowed_by("reads"));
}

#[test]
fn dry_run_without_rules_allows() {
    let p = policy("dry_run: true\n");
    assert_eq!(
        p.evaluate(&request("GET", "/", &[])),
        Decision::Allow { rule: None }
    );
}

#[test]
fn not_paths_carve_an_exception_out_of_an_allow_rule() {
    let p = policy("rules:\n- name: most\n  action: allow\n  not_paths: [/admin, /admin/*]\n");
    assert_eq!(
        p.evaluate(&request("GET", "/todos", &[])),
        allowed_by("most")
    );
    assert_eq!(
        p.evaluate(&request("GET", "/admin/x", &[])),
        NO_ALLOW_MATCHED
    );
}

#[test]
fn mtls_only_caller_never_matches_a_claims_rule() {
    let p = policy("rules:\n- name: admins\n  action: allow\n  claims: { roles: [admin] }\n");
    assert_eq!(
        p.evaluate(&request("GET", "/", &[REMINDER])),
        NO_ALLOW_MATCHED
    );
}

#[test]
fn real_denial_is_not_allowed() {
    assert!(!NO_ALLOW_MATCHED.is_allowed());
    assert!(Decision::Allow { rule: None }.is_allowed());
    assert_eq!(Decision::Allow { rule: None }.denial(), None);
}

#[test]
fn policy_reports_its_name_and_size() {
    let p = policy("name: todos-policy\nrules:\n- name: a\n  action: allow\n");
    assert_eq!(p.name(), "todos-policy");
    assert_eq!(p.rule_count(), 1);
    assert!(!p.is_empty());
}

#[test]
fn duplicate_rule_names_are_refused() {
    let rules = "- name: a\n  action: allow\n- name: b\n  action: deny\n";
    let err = compile_error(&format!("rules:\n{rules}- name: a\n  action: deny\n"));
    let name = "a".to_owned();
    assert_eq!(
        err,
        RuleError::DuplicateRuleName {
            name,
            first: 0,
            second: 2
        }
    );
    assert!(err.to_string().contains("rules[2]"), "{err}");
}

#[test]
fn unsafe_names_are_refused() {
    let err = compile_error("name: 'my policy'\n");
    assert!(matches!(err, RuleError::BadPolicyName { .. }), "{err}");
    let err = compile_error("rules:\n- name: 'a\"b'\n  action: allow\n");
    assert!(
        matches!(err, RuleError::BadRuleName { index: 0, .. }),
        "{err}"
    );
}

#[test]
fn compile_error_names_rule_and_field() {
    let err = compile_error("rules:\n- name: reads\n  action: allow\n  methods: []\n");
    let text = err.to_string();
    assert!(
        text.contains("rule `reads`") && text.contains("`methods`"),
        "{text}"
    );
}

#[test]
fn dotdot_cannot_evade_deny() {
    let p = policy("rules:\n- name: no-admin\n  action: deny\n  paths: [/admin, /admin/*]\n");
    for raw in [
        "/todos/../admin",
        "/./admin",
        "//admin",
        "/todos/%2E%2E/admin/x",
    ] {
        assert_eq!(decide_raw(&p, "GET", raw), denied_by("no-admin"), "{raw}");
    }
    assert_eq!(normalize_path("/../admin"), Err(PathError::EscapesRoot));
}

#[test]
fn percent_encoding_cannot_evade_deny() {
    let p = policy("rules:\n- name: no-admin\n  action: deny\n  paths: [/admin, /admin/*]\n");
    for raw in ["/%61dmin", "/%61%64%6D%69%6E/", "/admin?x=1"] {
        assert_eq!(decide_raw(&p, "GET", raw), denied_by("no-admin"), "{raw}");
    }
    let encoded_slash = normalize_path("/x%2F..%2Fadmin");
    assert!(matches!(
        encoded_slash,
        Err(PathError::EncodedSeparator { .. })
    ));
}

#[test]
fn lower_case_method_cannot_evade_deny() {
    let p = policy("rules:\n- name: no-deletes\n  action: deny\n  methods: [DELETE]\n");
    assert_eq!(
        p.evaluate(&request("delete", "/x", &[])),
        denied_by("no-deletes")
    );
}

/// The todo story of issue 3, as the todos and reminder sidecars would configure it.
mod todo_story {
    use super::*;

    /// The todos service lets reminder read, share act for its users, and admins do anything.
    const TODOS_POLICY: &str = r#"
        name: todos-policy
        rules:
          - name: reminder-reads
            action: allow
            principals: ["spiffe://cluster.local/ns/default/sa/reminder"]
            methods: [GET, HEAD]
            paths: ["/todos", "/todos/*"]
          - name: share-on-behalf
            action: allow
            principals: ["spiffe://cluster.local/ns/default/sa/share"]
          - name: admins
            action: allow
            claims: { roles: [admin] }
    "#;

    /// The reminder service takes calls from its namespace, but never from todos.
    const REMINDER_POLICY: &str = r#"
        name: reminder-policy
        rules:
          - name: not-from-todos
            action: deny
            principals: ["spiffe://cluster.local/ns/default/sa/todos"]
          - name: in-namespace
            action: allow
            principals: ["spiffe://cluster.local/ns/default/*"]
    "#;

    fn todos_sidecar() -> Policy {
        policy(TODOS_POLICY)
    }

    fn reminder_sidecar() -> Policy {
        policy(REMINDER_POLICY)
    }

    #[test]
    fn reminder_may_read_todos() {
        let p = todos_sidecar();
        for path in ["/todos", "/todos/7"] {
            let decision = p.evaluate(&request("GET", path, &[REMINDER]));
            assert_eq!(decision, allowed_by("reminder-reads"), "{path}");
        }
    }

    #[test]
    fn reminder_may_not_change_todos() {
        let p = todos_sidecar();
        for method in ["POST", "PUT", "DELETE"] {
            let decision = p.evaluate(&request(method, "/todos/7", &[REMINDER]));
            assert_eq!(decision, NO_ALLOW_MATCHED, "{method}");
        }
    }

    #[test]
    fn reminder_may_not_read_outside_todos() {
        let p = todos_sidecar();
        assert_eq!(
            p.evaluate(&request("GET", "/admin", &[REMINDER])),
            NO_ALLOW_MATCHED
        );
    }

    #[test]
    fn todos_may_not_call_reminder() {
        let p = reminder_sidecar();
        let decision = p.evaluate(&request("GET", "/reminders", &[TODOS]));
        assert_eq!(decision, denied_by("not-from-todos"));
        assert_eq!(
            p.evaluate(&request("GET", "/reminders", &[SHARE])),
            allowed_by("in-namespace")
        );
    }

    #[test]
    fn share_on_behalf_of_bob_matches_by_its_peer_identity() {
        let p = todos_sidecar();
        let decision = p.evaluate(&request("POST", "/todos", &[SHARE, "bob"]));
        assert_eq!(decision, allowed_by("share-on-behalf"));
    }

    #[test]
    fn admin_role_matches_an_array_claim() {
        let claims = json!({"sub": "alice", "roles": ["user", "admin"]});
        let claims = claims.as_object().expect("fixture is valid");
        let req = RequestFacts {
            claims: Some(claims),
            ..request("DELETE", "/todos/7", &["alice"])
        };
        assert_eq!(todos_sidecar().evaluate(&req), allowed_by("admins"));
    }

    #[test]
    fn admin_role_matches_a_string_claim() {
        let claims = json!({"sub": "alice", "roles": "admin"});
        let claims = claims.as_object().expect("fixture is valid");
        let req = RequestFacts {
            claims: Some(claims),
            ..request("DELETE", "/todos/7", &["alice"])
        };
        assert_eq!(todos_sidecar().evaluate(&req), allowed_by("admins"));
    }

    #[test]
    fn user_without_admin_role_is_denied() {
        let claims = json!({"sub": "bob", "roles": ["user"]});
        let claims = claims.as_object().expect("fixture is valid");
        let req = RequestFacts {
            claims: Some(claims),
            ..request("DELETE", "/todos/7", &["bob"])
        };
        assert_eq!(todos_sidecar().evaluate(&req), NO_ALLOW_MATCHED);
    }

    #[test]
    fn story_rules_lint_clean() {
        assert_eq!(todos_sidecar().lint(), vec![]);
        assert_eq!(reminder_sidecar().lint(), vec![]);
    }
}

#[test]
fn documented_example_compiles_and_decides() {
    let doc = include_str!("../../docs/rules.md");
    let fence = "```yaml\n";
    let start = doc.find(fence).expect("docs/rules.md has a yaml example") + fence.len();
    let end = start
        + doc[start..]
            .find("```")
            .expect("the yaml example is closed");
    #[derive(serde::Deserialize)]
    struct File {
        authorization: AuthorizationConfig,
    }
    let file: File = serde_saphyr::from_str(&doc[start..end]).expect("the example parses");
    let p = Policy::compile(&file.authorization).expect("the example compiles");

    assert_eq!(p.name(), "todos-policy");
    assert_eq!(p.lint(), vec![]);
    let read = request("GET", "/todos/1", &[REMINDER]);
    assert_eq!(p.evaluate(&read), allowed_by("reminder-reads"));
    let write = request("POST", "/todos", &[REMINDER]);
    assert_eq!(p.evaluate(&write), NO_ALLOW_MATCHED);
    let internal = request("GET", "/internal/x", &[SHARE]);
    assert_eq!(p.evaluate(&internal), denied_by("no-internal"));
}
