//! Which requests a policy matches: its environment accounts, and its environment names or
//! patterns (`*`: any run of characters, `?`: one character; case-sensitive, as Proton's names
//! are). Pure and total: any input, even one the schema would have refused, gives an answer.

use super::api::ConnectionAcceptancePolicySpec as Spec;
use crate::aws::proton::Connection;

/// Whether `pattern` matches all of `name`.
pub fn glob(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative matching with one backtrack point (the last `*`): linear in practice, never
    // exponential.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(&c) if c == '?' || c == n[ni] => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Whether the policy accepts a request from `environment_account_id` for `environment_name`.
pub fn matches(spec: &Spec, environment_account_id: &str, environment_name: &str) -> bool {
    spec.environment_account_ids
        .iter()
        .any(|a| a == environment_account_id)
        && spec
            .environment_names
            .as_ref()
            .is_none_or(|names| names.iter().any(|p| glob(p, environment_name)))
}

/// Whether the policy accepts this request.
pub fn matches_request(spec: &Spec, request: &Connection) -> bool {
    matches(
        spec,
        &request.environment_account_id,
        &request.environment_name,
    )
}

/// What in a spec the schema should have refused (a policy applied while an older CRD was
/// installed, or written around the API server's validation): the controller acts on none of it.
pub fn invalid(spec: &Spec) -> Vec<String> {
    let account = crate::connection::api::patterns::is_account_id;
    let mut problems = Vec::new();
    if !account(&spec.management_account_id) {
        problems.push(format!(
            "managementAccountId {:?} is not a 12-digit account id",
            spec.management_account_id
        ));
    }
    if spec.environment_account_ids.is_empty() {
        problems.push("environmentAccountIds is empty".into());
    }
    for a in &spec.environment_account_ids {
        if !account(a) {
            problems.push(format!(
                "environmentAccountIds: {a:?} is not a 12-digit account id"
            ));
        }
    }
    if let Some(names) = &spec.environment_names {
        if names.is_empty() {
            problems.push("environmentNames is empty (leave it out to allow any name)".into());
        }
        for p in names {
            let ok = !p.is_empty()
                && p.len() <= 100
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '*' | '?'));
            if !ok {
                problems.push(format!(
                    "environmentNames: {p:?} is not a name or pattern (letters, digits, _, -, * and ?)"
                ));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_patterns() {
        #[rustfmt::skip]
        let cases = [
            ("prod", "prod", true),
            ("prod", "prod-eu", false),
            ("prod-*", "prod-eu", true),
            ("prod-*", "prod-", true),
            ("prod-*", "prod", false),
            ("*-eu", "prod-eu", true),
            ("*-eu", "prod-us", false),
            ("*", "", true),
            ("*", "anything", true),
            ("?", "a", true),
            ("?", "", false),
            ("?", "ab", false),
            ("team-?-dev", "team-a-dev", true),
            ("team-?-dev", "team-ab-dev", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("a*b*c", "abcabc", true),
            ("**", "x", true),
            ("Prod-*", "prod-eu", false),
            ("*a*a*a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false),
        ];
        for (pattern, name, want) in cases {
            assert_eq!(glob(pattern, name), want, "{pattern:?} vs {name:?}");
        }
    }

    fn spec(accounts: &[&str], names: Option<&[&str]>) -> Spec {
        Spec {
            management_account_id: "111122223333".into(),
            environment_account_ids: accounts.iter().map(|s| s.to_string()).collect(),
            environment_names: names.map(|n| n.iter().map(|s| s.to_string()).collect()),
            ..Spec::default()
        }
    }

    #[test]
    fn a_request_matches_by_account_and_name() {
        let any_name = spec(&["444455556666"], None);
        assert!(matches(&any_name, "444455556666", "whatever"));
        assert!(!matches(&any_name, "777788889999", "whatever"));
        let prod = spec(
            &["444455556666", "777788889999"],
            Some(&["prod-*", "staging"]),
        );
        assert!(matches(&prod, "777788889999", "prod-eu"));
        assert!(matches(&prod, "444455556666", "staging"));
        assert!(!matches(&prod, "444455556666", "dev"));
        assert!(!matches(&prod, "999999999999", "prod-eu"));
    }

    #[test]
    fn what_the_schema_refuses_is_reported() {
        assert!(invalid(&spec(&["444455556666"], Some(&["prod-*"]))).is_empty());
        let bad = Spec {
            management_account_id: "1111".into(),
            ..spec(&["44445555666x"], Some(&["prod eu", ""]))
        };
        assert_eq!(invalid(&bad).len(), 4, "{:?}", invalid(&bad));
        assert_eq!(invalid(&spec(&[], Some(&[]))).len(), 2);
    }
}
