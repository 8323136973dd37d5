//! The AWS side of `check`: whose account the credentials act in, whether resources pinned to
//! another account would meet them, whether the Proton endpoint answers in the configured
//! region, and whether every AccountMapping's role can be assumed. Reads only.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use super::{Finding, Scope};
use crate::aws::credentials::{AwsIdentity, RoleIdentity, role_account};
use crate::aws::proton::Proton;
use crate::connection::api::EnvironmentAccountConnection;
use crate::mapping::{AccountMapping, MappingError, Resolved, resolve};

const CREDENTIALS_FIX: &str = "give the controller AWS credentials (IRSA or EKS Pod Identity in a cluster; AWS_PROFILE or AWS_ACCESS_KEY_ID locally) and, for an emulator, --sts-endpoint or AWS_ENDPOINT_URL_STS";

/// The account the controller's own credentials act in (STS GetCallerIdentity), if they work.
pub async fn caller(proton: &Proton) -> (Finding, Option<String>) {
    const CHECK: &str = "AWS credentials";
    match proton.caller_account(&AwsIdentity::Own).await {
        Ok(account) => (
            Finding::pass(
                CHECK,
                format!("act in account {account} (STS GetCallerIdentity)"),
            ),
            Some(account),
        ),
        Err(e) => (
            Finding::fail(
                CHECK,
                format!("STS GetCallerIdentity failed: {e}"),
                CREDENTIALS_FIX,
            ),
            None,
        ),
    }
}

/// The Proton endpoint answers a cheap read in the configured region.
pub async fn endpoint(proton: &Proton, scope: &Scope) -> Finding {
    let check = format!("Proton endpoint ({})", scope.region);
    match proton.probe(&AwsIdentity::Own, &scope.region).await {
        Ok(()) => Finding::pass(check, "answers ListEnvironmentAccountConnections"),
        Err(e) => Finding::fail(
            check,
            format!("{e}"),
            "check --proton-endpoint / AWS_ENDPOINT_URL_PROTON and --region; AWS Proton itself reached end of support on 2026-10-07, so point the controller at a Proton-compatible endpoint such as proton-emulator",
        ),
    }
}

/// Every AccountMapping's role can be assumed (STS AssumeRole: nothing is created).
pub async fn roles(proton: &Proton, mappings: &[AccountMapping]) -> Vec<Finding> {
    let mut found = Vec::new();
    for mapping in mappings {
        let check = format!("AccountMapping {}", mapping.name_any());
        let role = RoleIdentity {
            role_arn: mapping.spec.role_arn.clone(),
            external_id: mapping.spec.external_id.clone(),
        };
        found.push(
            match proton
                .caller_account(&AwsIdentity::Role(Arc::new(role)))
                .await
            {
                Ok(account) => Finding::pass(
                    check,
                    format!(
                        "role {} assumed: account {account}",
                        mapping.spec.role_arn
                    ),
                ),
                Err(e) => Finding::fail(
                    check,
                    format!("role {} cannot be assumed: {e}", mapping.spec.role_arn),
                    "let the controller's own role assume it (sts:AssumeRole in its policy, and the role's trust policy naming the controller's role and the mapping's externalId)",
                ),
            },
        );
    }
    found
}

/// What the cluster holds that the AWS checks read: the watched resources, and with account
/// mappings the mappings and the namespaces' labels.
pub struct Listed {
    pub resources: Vec<EnvironmentAccountConnection>,
    pub mappings: Vec<AccountMapping>,
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
}

/// Lists what [`pinned`] and [`roles`] look at.
pub async fn list(client: &Client, scope: &Scope) -> Result<Listed, kube::Error> {
    let resources: Api<EnvironmentAccountConnection> = match &scope.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let resources = resources.list(&ListParams::default()).await?.items;
    let (mappings, namespaces) = if scope.account_mappings {
        let mappings = Api::<AccountMapping>::all(client.clone())
            .list(&ListParams::default())
            .await?
            .items;
        let namespaces = Api::<Namespace>::all(client.clone())
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .map(|ns| (ns.name_any(), ns.labels().clone()))
            .collect();
        (mappings, namespaces)
    } else {
        (Vec::new(), BTreeMap::new())
    };
    Ok(Listed {
        resources,
        mappings,
        namespaces,
    })
}

/// Resources pinned to an account other than the one their credentials would act in get
/// `AccountMismatch` and nothing is done for them: name them before the controller runs.
/// `own`: the account of the controller's own credentials.
pub fn pinned(listed: &Listed, own: &str, account_mappings: bool) -> Finding {
    const CHECK: &str = "Pinned accounts";
    let mut mismatched: Vec<String> = Vec::new();
    let mut pinned = 0;
    for resource in &listed.resources {
        let Some(pinned_to) = resource
            .status
            .as_ref()
            .and_then(|s| s.environment_account_id.as_deref())
        else {
            continue;
        };
        pinned += 1;
        let namespace = resource.namespace().unwrap_or_default();
        let resolved: Result<Resolved, MappingError> = if account_mappings {
            let labels = listed
                .namespaces
                .get(&namespace)
                .cloned()
                .unwrap_or_default();
            resolve(
                &namespace,
                &labels,
                listed
                    .mappings
                    .iter()
                    .map(|m| (m.metadata.name.as_deref().unwrap_or_default(), &m.spec)),
            )
        } else {
            Ok(Resolved::default())
        };
        let acts_in = match resolved {
            Ok(Resolved {
                identity: AwsIdentity::Own,
                ..
            }) => Some(own.to_string()),
            Ok(Resolved {
                identity: AwsIdentity::Role(role),
                ..
            }) => role_account(&role.role_arn).map(str::to_string),
            // A namespace whose mapping is ambiguous or unreadable gets no credentials at all:
            // its resources report that, not a mismatch.
            Err(_) => None,
        };
        if let Some(acts_in) = acts_in
            && acts_in != pinned_to
        {
            mismatched.push(format!(
                "{namespace}/{} (pinned to {pinned_to}, would act in {acts_in})",
                resource.name_any()
            ));
        }
    }
    if mismatched.is_empty() {
        return Finding::pass(
            CHECK,
            format!("{pinned} resource(s) pinned to an account; each would act in its own"),
        );
    }
    let shown: Vec<&str> = mismatched.iter().take(5).map(String::as_str).collect();
    let more = mismatched.len().saturating_sub(shown.len());
    Finding::fail(
        CHECK,
        format!(
            "{} resource(s) would get AccountMismatch (nothing created, changed or deleted for them): {}{}",
            mismatched.len(),
            shown.join("; "),
            if more > 0 {
                format!("; and {more} more")
            } else {
                String::new()
            }
        ),
        "run the controller with credentials of the account the connections were created in, or map their namespaces to a role in that account (AccountMapping)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Verdict;
    use crate::connection::api::EnvironmentAccountConnectionStatus;
    use crate::mapping::AccountMappingSpec;

    fn resource(namespace: &str, name: &str, pinned: Option<&str>) -> EnvironmentAccountConnection {
        let mut r = EnvironmentAccountConnection::new(name, Default::default());
        r.metadata.namespace = Some(namespace.into());
        r.status = pinned.map(|a| EnvironmentAccountConnectionStatus {
            environment_account_id: Some(a.into()),
            ..Default::default()
        });
        r
    }

    #[test]
    fn resources_pinned_to_another_account_than_their_credentials_are_named() {
        let listed = Listed {
            resources: vec![
                resource("a", "ok", Some("111111111111")),
                resource("a", "moved", Some("999999999999")),
                resource("a", "new", None),
            ],
            mappings: Vec::new(),
            namespaces: BTreeMap::new(),
        };
        let finding = pinned(&listed, "111111111111", false);
        assert_eq!(finding.verdict, Verdict::Fail);
        assert!(
            finding
                .detail
                .starts_with("1 resource(s) would get AccountMismatch")
        );
        assert!(
            finding
                .detail
                .contains("a/moved (pinned to 999999999999, would act in 111111111111)")
        );

        let fine = pinned(&listed, "999999999999", false);
        assert_eq!(fine.verdict, Verdict::Fail, "then a/ok mismatches");
    }

    #[test]
    fn a_mapped_namespace_acts_in_its_roles_account() {
        let mut mapping = AccountMapping::new(
            "payments",
            AccountMappingSpec {
                namespace_selector: serde_json::from_value(
                    serde_json::json!({"matchLabels": {"team": "payments"}}),
                )
                .unwrap(),
                role_arn: "arn:aws:iam::222222222222:role/eac".into(),
                external_id: None,
                region: None,
            },
        );
        mapping.metadata.name = Some("payments".into());
        let listed = Listed {
            resources: vec![resource("pay", "c", Some("222222222222"))],
            mappings: vec![mapping],
            namespaces: BTreeMap::from([(
                "pay".to_string(),
                BTreeMap::from([("team".to_string(), "payments".to_string())]),
            )]),
        };
        assert_eq!(pinned(&listed, "111111111111", true).verdict, Verdict::Pass);
        assert_eq!(
            pinned(&listed, "111111111111", false).verdict,
            Verdict::Fail,
            "without mappings it would act with the controller's own"
        );
    }
}
