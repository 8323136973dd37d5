//! What a cluster admin sees on an `AccountMapping`: its account, the namespaces it selects, and
//! whether each of them really acts with it (no other mapping selects it too). Pure: computed
//! from the mappings and namespaces in the watch caches.

use std::collections::BTreeMap;

use kube::core::{Selector, SelectorExt};

use super::api::{AccountMappingSpec, AccountMappingStatus};
use crate::aws::credentials::role_account;
use crate::conditions::{self, Want};

/// At most this many namespaces are named in a list of the status.
const LISTED: usize = 20;

/// The status of mapping `name`, given every mapping (itself included) and every namespace
/// with its labels. Transition times carry over from `recorded`, so an unchanged state renders
/// an identical status (and costs no write).
pub fn status_of(
    name: &str,
    generation: i64,
    mappings: &[(&str, &AccountMappingSpec)],
    namespaces: &[(&str, &BTreeMap<String, String>)],
    recorded: Option<&AccountMappingStatus>,
    now: jiff::Timestamp,
) -> AccountMappingStatus {
    let previous = recorded.map(|r| r.conditions.as_slice()).unwrap_or(&[]);
    let mut selectors = Vec::new();
    let mut invalid = Vec::new();
    for (other, spec) in mappings {
        match Selector::try_from(spec.namespace_selector.clone()) {
            Ok(selector) => selectors.push((*other, selector)),
            Err(e) => invalid.push((*other, e.to_string())),
        }
    }
    let Some(spec) = mappings.iter().find(|(n, _)| *n == name).map(|(_, s)| *s) else {
        return AccountMappingStatus::default();
    };
    let account_id = role_account(&spec.role_arn).map(str::to_string);
    let ready = |ok: bool, reason: &str, message: String| {
        conditions::build(
            previous,
            &[Want::new(conditions::READY, ok, reason, message)],
            generation,
            now,
        )
    };
    if let Some((_, reason)) = invalid.iter().find(|(n, _)| *n == name) {
        return AccountMappingStatus {
            account_id,
            conditions: ready(
                false,
                "InvalidSelector",
                format!(
                    "the namespace selector cannot be read ({reason}); no namespace gets credentials until it is fixed"
                ),
            ),
            ..AccountMappingStatus::default()
        };
    }
    let own = selectors
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| s.clone())
        .unwrap_or_default();
    let mut selected: Vec<&str> = namespaces
        .iter()
        .filter(|(_, labels)| own.matches(labels))
        .map(|(ns, _)| *ns)
        .collect();
    selected.sort_unstable();
    let mut overlapping = Vec::new();
    let mut rivals = std::collections::BTreeSet::new();
    for ns in &selected {
        let labels = namespaces.iter().find(|(n, _)| n == ns).map(|(_, l)| *l);
        let others: Vec<&str> = selectors
            .iter()
            .filter(|(n, s)| *n != name && labels.is_some_and(|l| s.matches(l)))
            .map(|(n, _)| *n)
            .collect();
        if !others.is_empty() {
            overlapping.push(ns.to_string());
            rivals.extend(others);
        }
    }
    let conditions = if let Some((other, _)) = invalid.first() {
        ready(
            false,
            "OtherMappingInvalid",
            format!(
                "AccountMapping {other} has a namespace selector that cannot be read; until it is fixed no namespace gets credentials"
            ),
        )
    } else if !overlapping.is_empty() {
        ready(
            false,
            "Overlapping",
            format!(
                "{} of the {} selected namespaces are selected by {} too; their resources get no credentials until the selectors are disjoint",
                overlapping.len(),
                selected.len(),
                rivals.into_iter().collect::<Vec<_>>().join(", ")
            ),
        )
    } else {
        ready(
            true,
            "Mapped",
            format!(
                "{} namespaces act with role {}",
                selected.len(),
                spec.role_arn
            ),
        )
    };
    AccountMappingStatus {
        account_id,
        namespace_count: u32::try_from(selected.len()).unwrap_or(u32::MAX),
        namespaces: selected
            .iter()
            .take(LISTED)
            .map(|s| s.to_string())
            .collect(),
        overlapping: overlapping.into_iter().take(LISTED).collect(),
        conditions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use crate::mapping::decide::fixtures::{labels, mapping};

    fn now() -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_795_255_200).unwrap()
    }

    #[test]
    fn a_mapping_shows_its_account_its_namespaces_and_whether_they_are_its_alone() {
        let payments = mapping(
            &[("team", "payments")],
            "arn:aws:iam::111111111111:role/eac",
        );
        let tier = mapping(&[("tier", "prod")], "arn:aws:iam::222222222222:role/eac");
        let (pay, pay_prod, search) = (
            labels(&[("team", "payments")]),
            labels(&[("team", "payments"), ("tier", "prod")]),
            labels(&[("team", "search")]),
        );
        let namespaces = [
            ("pay-dev", &pay),
            ("pay-prod", &pay_prod),
            ("search", &search),
        ];

        let alone = status_of(
            "payments",
            1,
            &[("payments", &payments)],
            &namespaces,
            None,
            now(),
        );
        assert_eq!(alone.account_id.as_deref(), Some("111111111111"));
        assert_eq!(alone.namespace_count, 2);
        assert_eq!(alone.namespaces, ["pay-dev", "pay-prod"]);
        assert!(alone.overlapping.is_empty());
        assert_eq!(alone.conditions[0].status, "True");
        assert_eq!(alone.conditions[0].reason, "Mapped");
        // Unchanged: the same status, transition time included.
        let again = status_of(
            "payments",
            1,
            &[("payments", &payments)],
            &namespaces,
            Some(&alone),
            now() + jiff::SignedDuration::from_secs(60),
        );
        assert_eq!(again, alone);

        let both = [("payments", &payments), ("tier", &tier)];
        let clash = status_of("payments", 1, &both, &namespaces, Some(&alone), now());
        assert_eq!(clash.overlapping, ["pay-prod"]);
        assert_eq!(clash.conditions[0].status, "False");
        assert_eq!(clash.conditions[0].reason, "Overlapping");
        assert!(
            clash.conditions[0].message.contains("by tier too"),
            "{}",
            clash.conditions[0].message
        );
        let other_side = status_of("tier", 1, &both, &namespaces, None, now());
        assert_eq!(other_side.overlapping, ["pay-prod"]);
    }

    #[test]
    fn an_unreadable_selector_is_named_on_itself_and_on_every_other_mapping() {
        let good = mapping(
            &[("team", "payments")],
            "arn:aws:iam::111111111111:role/eac",
        );
        let mut broken = mapping(&[], "arn:aws:iam::222222222222:role/eac");
        broken.namespace_selector.match_expressions = Some(vec![LabelSelectorRequirement {
            key: "tier".into(),
            operator: "Near".into(),
            values: None,
        }]);
        let all = [("good", &good), ("broken", &broken)];
        let pay = labels(&[("team", "payments")]);
        let namespaces = [("pay", &pay)];
        assert_eq!(
            status_of("broken", 1, &all, &namespaces, None, now()).conditions[0].reason,
            "InvalidSelector"
        );
        let good_status = status_of("good", 1, &all, &namespaces, None, now());
        assert_eq!(good_status.conditions[0].reason, "OtherMappingInvalid");
        assert!(good_status.conditions[0].message.contains("broken"));
    }
}
