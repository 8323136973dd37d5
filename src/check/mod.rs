//! `eac-controller check`: a preflight and health check of an installation, for a person at a
//! terminal and for CI. Each check is one line with a verdict and, when it fails, what to do.
//!
//! It takes the flags and environment of `run`, so it checks what that controller would meet:
//! the Kubernetes API and its version ([`cluster`]), the CRDs (installed, established, and the
//! schema this binary generates), the controller's own permissions (SelfSubjectAccessReview, in
//! the watched namespace or cluster-wide), and on the AWS side ([`aws`]) the caller's account,
//! the resources pinned to another one, the Proton endpoint in the configured region, and each
//! AccountMapping's role. Nothing is created or changed, in Kubernetes or in AWS.

pub mod aws;
pub mod cluster;

use serde::Serialize;

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    /// Works, but worth a look (an untested Kubernetes version, nothing to check yet).
    Warn,
    Fail,
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What was checked, e.g. `CRD accountmappings.proton.eac.dev`.
    pub check: String,
    pub verdict: Verdict,
    /// What was found.
    pub detail: String,
    /// What to do about it, when it is not a pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    pub fn pass(check: impl Into<String>, detail: impl Into<String>) -> Finding {
        Finding {
            check: check.into(),
            verdict: Verdict::Pass,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn warn(
        check: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Finding {
        Finding {
            check: check.into(),
            verdict: Verdict::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    pub fn fail(
        check: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Finding {
        Finding {
            check: check.into(),
            verdict: Verdict::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Every finding, in the order checked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub ok: bool,
    pub checks: Vec<Finding>,
}

impl Report {
    pub fn new(checks: Vec<Finding>) -> Report {
        Report {
            ok: checks.iter().all(|f| f.verdict != Verdict::Fail),
            checks,
        }
    }

    /// One line a check (`PASS`, `WARN`, `FAIL`), with its fix indented below.
    pub fn text(&self) -> String {
        let width = self.checks.iter().map(|f| f.check.len()).max().unwrap_or(0);
        let mut out = String::new();
        for f in &self.checks {
            let verdict = match f.verdict {
                Verdict::Pass => "PASS",
                Verdict::Warn => "WARN",
                Verdict::Fail => "FAIL",
            };
            out.push_str(&format!("{verdict}  {:<width$}  {}\n", f.check, f.detail));
            if let Some(fix) = &f.fix {
                out.push_str(&format!("      {:<width$}  fix: {fix}\n", ""));
            }
        }
        let failed = self
            .checks
            .iter()
            .filter(|f| f.verdict == Verdict::Fail)
            .count();
        out.push_str(&match failed {
            0 => "all checks passed\n".to_string(),
            n => format!("{n} check(s) failed\n"),
        });
        out
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// What the controller would do, and so what is checked.
#[derive(Clone, Debug)]
pub struct Scope {
    /// `--namespace`: watched namespace (None: all).
    pub namespace: Option<String>,
    pub account_mappings: bool,
    pub acceptance_policies: bool,
    /// The adoption policy reads namespaces' labels.
    pub namespace_opt_in: bool,
    /// The Lease's namespace and name, when leader election is on.
    pub lease: Option<(String, String)>,
    /// The region of new connections.
    pub region: String,
}

/// Runs every check that applies and reports them all. `client` and `proton` are what the
/// flags and environment gave, or why they could not be built.
pub async fn run(
    client: Result<::kube::Client, String>,
    proton: Result<crate::aws::proton::Proton, String>,
    scope: &Scope,
) -> Report {
    let mut found = Vec::new();
    let client = match client {
        Ok(client) => match cluster::version(&client).await {
            Ok(version) => {
                found.push(version);
                found.extend(cluster::crds(&client, scope).await);
                found.extend(cluster::access(&client, scope).await);
                Some(client)
            }
            Err(unreachable) => {
                found.push(unreachable);
                None
            }
        },
        Err(e) => {
            found.push(Finding::fail(
                "Kubernetes API",
                e,
                "set KUBECONFIG (or run in a Pod with a service account)",
            ));
            None
        }
    };
    let proton = match proton {
        Ok(proton) => proton,
        Err(e) => {
            found.push(Finding::fail(
                "AWS configuration",
                e,
                "pass --region (or set AWS_REGION) and, for an emulator, --proton-endpoint",
            ));
            return Report::new(found);
        }
    };
    let (credentials, account) = aws::caller(&proton).await;
    found.push(credentials);
    found.push(aws::endpoint(&proton, scope).await);
    if let Some(client) = &client {
        match aws::list(client, scope).await {
            Ok(listed) => {
                if let Some(account) = &account {
                    found.push(aws::pinned(&listed, account, scope.account_mappings));
                }
                found.extend(aws::roles(&proton, &listed.mappings).await);
            }
            Err(e) => found.push(Finding::warn(
                "Pinned accounts",
                format!("skipped: the resources cannot be listed: {e}"),
                "fix the CRD and RBAC findings above",
            )),
        }
    }
    Report::new(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_fails_on_any_failure_and_says_what_to_do() {
        let report = Report::new(vec![
            Finding::pass("Kubernetes API", "v1.36.0"),
            Finding::warn("CRDs", "x", "y"),
            Finding::fail("CRD a.b", "not installed", "kubectl apply -f crds/"),
        ]);
        assert!(!report.ok);
        let text = report.text();
        assert!(text.contains("FAIL  CRD a.b"), "{text}");
        assert!(text.contains("fix: kubectl apply -f crds/"), "{text}");
        assert!(text.ends_with("1 check(s) failed\n"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&report.json()).unwrap();
        assert_eq!(json["ok"], false);
        assert_eq!(json["checks"][2]["verdict"], "fail");
        assert!(json["checks"][0].get("fix").is_none());
        assert!(Report::new(vec![Finding::warn("a", "b", "c")]).ok);
    }
}
