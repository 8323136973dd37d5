//! Which credentials a namespace's resources act with, decided purely from the namespace's labels
//! and the mappings; fails closed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};
use kube::runtime::reflector::{ObjectRef, Store};

use super::api::{AccountMapping, AccountMappingSpec};

/// What a namespace that no mapping selects acts with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum UnmappedNamespaces {
    /// The controller's own credentials (as without any mapping).
    #[default]
    OwnCredentials,
    /// None: its resources are refused (`NoAccountMapping`), so nothing is ever made in the
    /// controller's own account by a namespace the admin forgot to map.
    Refuse,
}

use crate::aws::credentials::{AwsIdentity, RoleIdentity};
use crate::aws::error::Retry;
use crate::reconciler::retry::Problem;

/// What a namespace's resources act with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Resolved {
    pub identity: AwsIdentity,
    /// The mapping's name, when one applies (for messages).
    pub mapping: Option<String>,
    /// Region of new connections whose spec names none, instead of the controller's.
    pub default_region: Option<String>,
}

/// Why a namespace's resources get no credentials.
#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum MappingError {
    #[error(
        "namespace {namespace} is matched by more than one AccountMapping ({}); a cluster admin must make their namespace selectors disjoint, and until then nothing is done in AWS",
        mappings.join(", ")
    )]
    Ambiguous {
        namespace: String,
        mappings: Vec<String>,
    },
    #[error(
        "AccountMapping {mapping} has a namespace selector that cannot be read ({reason}); until it is fixed no namespace is given credentials"
    )]
    InvalidSelector { mapping: String, reason: String },
    #[error("the Namespace {0} is not known (yet) to the controller")]
    UnknownNamespace(String),
    #[error("the controller has not read the AccountMappings yet")]
    NotRead,
    #[error(
        "no AccountMapping selects namespace {0}, and the controller refuses unmapped namespaces (--unmapped-namespaces refuse); nothing is done in AWS"
    )]
    Unmapped(String),
}

impl MappingError {
    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            MappingError::Ambiguous { .. } => "AmbiguousAccountMapping",
            MappingError::InvalidSelector { .. } => "InvalidAccountMapping",
            MappingError::UnknownNamespace(_) => "NamespaceNotFound",
            MappingError::NotRead => "AccountMappingsNotRead",
            MappingError::Unmapped(_) => "NoAccountMapping",
        }
    }

    /// What a resource of the namespace reports (both kinds alike).
    pub fn problem(&self) -> Problem {
        Problem {
            reason: self.reason(),
            message: self.to_string(),
            // The namespace may just not be in the watch yet; the rest needs an admin.
            retry: match self {
                MappingError::UnknownNamespace(_) | MappingError::NotRead => Retry::Backoff,
                _ => Retry::Terminal,
            },
        }
    }
}

/// Which mapping applies to a namespace with these labels. `mappings`: name and spec of every
/// mapping.
pub fn resolve<'a>(
    namespace: &str,
    labels: &BTreeMap<String, String>,
    mappings: impl IntoIterator<Item = (&'a str, &'a AccountMappingSpec)>,
) -> Result<Resolved, MappingError> {
    matching(namespace, labels, &read(mappings)?)
}

/// A mapping with its selector read and its identity made: read once for many namespaces.
struct Read<'a> {
    name: &'a str,
    spec: &'a AccountMappingSpec,
    selector: Selector,
    identity: AwsIdentity,
}

/// The mappings read; the first whose selector cannot be read fails them all (fail closed).
fn read<'a>(
    mappings: impl IntoIterator<Item = (&'a str, &'a AccountMappingSpec)>,
) -> Result<Vec<Read<'a>>, MappingError> {
    mappings
        .into_iter()
        .map(|(name, spec)| {
            let selector = Selector::try_from(spec.namespace_selector.clone()).map_err(|e| {
                MappingError::InvalidSelector {
                    mapping: name.to_string(),
                    reason: e.to_string(),
                }
            })?;
            let identity = AwsIdentity::Role(Arc::new(RoleIdentity {
                role_arn: spec.role_arn.clone(),
                external_id: spec.external_id.clone(),
            }));
            Ok(Read {
                name,
                spec,
                selector,
                identity,
            })
        })
        .collect()
}

fn matching(
    namespace: &str,
    labels: &BTreeMap<String, String>,
    mappings: &[Read<'_>],
) -> Result<Resolved, MappingError> {
    let mut matched: Vec<&Read<'_>> = mappings
        .iter()
        .filter(|m| m.selector.matches(labels))
        .collect();
    matched.sort_by_key(|m| m.name);
    match matched.as_slice() {
        [] => Ok(Resolved::default()),
        [m] => Ok(Resolved {
            identity: m.identity.clone(),
            mapping: Some(m.name.to_string()),
            default_region: m.spec.region.clone(),
        }),
        many => Err(MappingError::Ambiguous {
            namespace: namespace.to_string(),
            mappings: many.iter().map(|m| m.name.to_string()).collect(),
        }),
    }
}

/// The mappings and namespaces as the controller's watches see them.
#[derive(Clone, Default)]
pub struct Accounts {
    stores: Option<(Store<AccountMapping>, Store<Namespace>)>,
    /// Mappings are on, but not read yet: no namespace gets credentials.
    waiting: bool,
    unmapped: UnmappedNamespaces,
}

impl Accounts {
    /// Mappings off: every resource acts with the controller's own credentials.
    pub fn disabled() -> Accounts {
        Accounts::default()
    }

    /// Mappings on, not read yet: every namespace waits (never the controller's own credentials
    /// by default).
    pub fn waiting() -> Accounts {
        Accounts {
            stores: None,
            waiting: true,
            unmapped: UnmappedNamespaces::default(),
        }
    }

    /// From the reflector stores of the two watches.
    pub fn from_stores(mappings: Store<AccountMapping>, namespaces: Store<Namespace>) -> Accounts {
        Accounts {
            stores: Some((mappings, namespaces)),
            waiting: false,
            unmapped: UnmappedNamespaces::default(),
        }
    }

    /// What a namespace no mapping selects acts with.
    pub fn with_unmapped(mut self, unmapped: UnmappedNamespaces) -> Accounts {
        self.unmapped = unmapped;
        self
    }

    pub fn enabled(&self) -> bool {
        self.stores.is_some() || self.waiting
    }

    /// Mappings on, not read yet.
    pub fn is_waiting(&self) -> bool {
        self.waiting
    }

    /// What the resources of `namespace` act with.
    pub fn resolve(&self, namespace: &str) -> Result<Resolved, MappingError> {
        let Some((mappings, namespaces)) = &self.stores else {
            if self.waiting {
                return Err(MappingError::NotRead);
            }
            return Ok(Resolved::default());
        };
        let mappings = mappings.state();
        let named = named(&mappings);
        let ns = namespaces.get(&ObjectRef::new(namespace));
        self.resolve_in(namespace, ns.as_deref(), &read(by_name(&named)))
    }

    /// What the resources of every namespace the watch knows act with, by namespace: compared
    /// before and after a change of the mappings or namespaces ([`moved`]), so that only the
    /// resources whose credentials changed are reconciled.
    pub fn resolve_all(&self) -> Credentials {
        let Some((mappings, namespaces)) = &self.stores else {
            return Credentials::new();
        };
        let mappings = mappings.state();
        let named = named(&mappings);
        // Each selector read, each identity made, once for all namespaces.
        let read = read(by_name(&named));
        namespaces
            .state()
            .iter()
            .map(|ns| {
                let name = ns.name_any();
                let resolved = self.resolve_in(&name, Some(ns), &read);
                (name, resolved)
            })
            .collect()
    }

    fn resolve_in(
        &self,
        namespace: &str,
        ns: Option<&Namespace>,
        read: &Result<Vec<Read<'_>>, MappingError>,
    ) -> Result<Resolved, MappingError> {
        let refuse = |resolved: Resolved| match (&resolved.mapping, self.unmapped) {
            (None, UnmappedNamespaces::Refuse) => {
                Err(MappingError::Unmapped(namespace.to_string()))
            }
            _ => Ok(resolved),
        };
        if read.as_ref().is_ok_and(Vec::is_empty) {
            return refuse(Resolved::default());
        }
        let Some(ns) = ns else {
            return Err(MappingError::UnknownNamespace(namespace.to_string()));
        };
        let read = read.as_ref().map_err(Clone::clone)?;
        matching(namespace, ns.labels(), read).and_then(refuse)
    }
}

fn named(mappings: &[Arc<AccountMapping>]) -> Vec<(String, &AccountMappingSpec)> {
    mappings.iter().map(|m| (m.name_any(), &m.spec)).collect()
}

fn by_name<'a>(
    named: &'a [(String, &'a AccountMappingSpec)],
) -> impl Iterator<Item = (&'a str, &'a AccountMappingSpec)> {
    named.iter().map(|(name, spec)| (name.as_str(), *spec))
}

/// What each namespace's resources act with (see [`Accounts::resolve_all`]).
pub type Credentials = BTreeMap<String, Result<Resolved, MappingError>>;

/// The namespaces whose resources act with other credentials in `after` than in `before`
/// (including a namespace only one of them knows).
pub fn moved(before: &Credentials, after: &Credentials) -> BTreeSet<String> {
    let changed = after
        .iter()
        .filter(|(ns, now)| before.get(*ns) != Some(*now))
        .map(|(ns, _)| ns);
    let gone = before.keys().filter(|ns| !after.contains_key(*ns));
    changed.chain(gone).cloned().collect()
}

/// Test fixtures of the unit tests that need mappings.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::Namespace;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    use super::{AccountMapping, AccountMappingSpec, Accounts, UnmappedNamespaces};

    /// Accounts from the watches' stores, filled by hand with these mappings and namespaces.
    pub fn accounts(
        mappings: &[(&str, &AccountMappingSpec)],
        namespaces: &[(&str, &[(&str, &str)])],
        unmapped: UnmappedNamespaces,
    ) -> Accounts {
        use kube::runtime::{reflector, watcher::Event};
        let (mapping_store, mut mapping_writer) = reflector::store::<AccountMapping>();
        mapping_writer.apply_watcher_event(&Event::Init);
        for (name, spec) in mappings {
            let mapping = AccountMapping::new(name, (*spec).clone());
            mapping_writer.apply_watcher_event(&Event::InitApply(mapping));
        }
        mapping_writer.apply_watcher_event(&Event::InitDone);
        let (namespace_store, mut namespace_writer) = reflector::store::<Namespace>();
        namespace_writer.apply_watcher_event(&Event::Init);
        for (name, pairs) in namespaces {
            let mut ns = Namespace::default();
            ns.metadata.name = Some(name.to_string());
            ns.metadata.labels = Some(labels(pairs));
            namespace_writer.apply_watcher_event(&Event::InitApply(ns));
        }
        namespace_writer.apply_watcher_event(&Event::InitDone);
        Accounts::from_stores(mapping_store, namespace_store).with_unmapped(unmapped)
    }

    /// A mapping of the namespaces with these labels to `role`.
    pub fn mapping(labels: &[(&str, &str)], role: &str) -> AccountMappingSpec {
        AccountMappingSpec {
            namespace_selector: LabelSelector {
                match_labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                match_expressions: None,
            },
            role_arn: role.into(),
            external_id: None,
            region: None,
        }
    }

    pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

    use super::fixtures::{labels, mapping};

    const PAYMENTS: &str = "arn:aws:iam::111111111111:role/eac";
    const SEARCH: &str = "arn:aws:iam::222222222222:role/eac";

    #[test]
    fn a_namespace_gets_the_one_mapping_that_selects_it_or_the_controllers_own_credentials() {
        let payments = mapping(&[("team", "payments")], PAYMENTS);
        let search = AccountMappingSpec {
            region: Some("eu-west-1".into()),
            external_id: Some("ext-123".into()),
            ..mapping(&[("team", "search")], SEARCH)
        };
        let all = [("payments", &payments), ("search", &search)];

        let got = resolve("pay", &labels(&[("team", "payments")]), all).unwrap();
        assert_eq!(got.mapping.as_deref(), Some("payments"));
        let AwsIdentity::Role(role) = &got.identity else {
            panic!("{got:?}")
        };
        assert_eq!(role.role_arn, PAYMENTS);
        assert_eq!(role.account(), Some("111111111111"));
        assert_eq!(got.default_region, None);

        let got = resolve("search", &labels(&[("team", "search")]), all).unwrap();
        let AwsIdentity::Role(role) = &got.identity else {
            panic!("{got:?}")
        };
        assert_eq!(role.external_id.as_deref(), Some("ext-123"));
        assert_eq!(got.default_region.as_deref(), Some("eu-west-1"));

        let got = resolve("other", &labels(&[("team", "other")]), all).unwrap();
        assert_eq!(got, Resolved::default(), "unmapped: the controller's own");
    }

    #[test]
    fn two_mappings_for_one_namespace_give_no_credentials_and_name_both() {
        let a = mapping(&[("team", "payments")], PAYMENTS);
        let b = mapping(&[], SEARCH); // {} selects every namespace
        let err = resolve(
            "pay",
            &labels(&[("team", "payments")]),
            [("b-everything", &b), ("a-payments", &a)],
        )
        .unwrap_err();
        assert_eq!(err.reason(), "AmbiguousAccountMapping");
        assert_eq!(
            err,
            MappingError::Ambiguous {
                namespace: "pay".into(),
                mappings: vec!["a-payments".into(), "b-everything".into()],
            }
        );
        assert!(err.to_string().contains("a-payments, b-everything"));
    }

    #[test]
    fn match_expressions_select_as_in_kubernetes_and_an_unreadable_selector_fails_closed() {
        let by_expression = AccountMappingSpec {
            namespace_selector: LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "In".into(),
                    values: Some(vec!["prod".into(), "staging".into()]),
                }]),
            },
            ..mapping(&[], PAYMENTS)
        };
        let all = [("tiers", &by_expression)];
        assert!(matches!(
            resolve("a", &labels(&[("tier", "prod")]), all)
                .unwrap()
                .identity,
            AwsIdentity::Role(_)
        ));
        assert_eq!(
            resolve("b", &labels(&[("tier", "dev")]), all)
                .unwrap()
                .identity,
            AwsIdentity::Own
        );

        let broken = AccountMappingSpec {
            namespace_selector: LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "Near".into(),
                    values: None,
                }]),
            },
            ..mapping(&[], SEARCH)
        };
        let err = resolve(
            "c",
            &labels(&[]),
            [("tiers", &by_expression), ("broken", &broken)],
        )
        .unwrap_err();
        assert_eq!(err.reason(), "InvalidAccountMapping");
    }

    /// The credentials of every namespace, with the watches' stores filled by hand.
    fn credentials(
        mappings: &[(&str, &AccountMappingSpec)],
        namespaces: &[(&str, &[(&str, &str)])],
        unmapped: UnmappedNamespaces,
    ) -> Credentials {
        super::fixtures::accounts(mappings, namespaces, unmapped).resolve_all()
    }

    #[test]
    fn only_the_namespaces_whose_credentials_changed_have_moved() {
        let payments = mapping(&[("team", "payments")], PAYMENTS);
        let search = mapping(&[("team", "search")], SEARCH);
        let to_search = mapping(&[("team", "payments")], SEARCH);
        let both = [("payments", &payments), ("search", &search)];
        let a: &[(&str, &str)] = &[("team", "payments")];
        let b: &[(&str, &str)] = &[("team", "search")];
        let c: &[(&str, &str)] = &[("team", "other")];
        let all = [("a", a), ("b", b), ("c", c)];
        let names =
            |list: &[&str]| -> BTreeSet<String> { list.iter().map(|s| s.to_string()).collect() };

        for unmapped in [
            UnmappedNamespaces::OwnCredentials,
            UnmappedNamespaces::Refuse,
        ] {
            let before = credentials(&both, &all, unmapped);
            assert_eq!(before.len(), 3);
            let moved_by = |mappings: &[(&str, &AccountMappingSpec)],
                            namespaces: &[(&str, &[(&str, &str)])]| {
                moved(&before, &credentials(mappings, namespaces, unmapped))
            };
            assert_eq!(moved_by(&both, &all), names(&[]), "nothing changed");
            // Labels no mapping reads, on a mapped and an unmapped namespace.
            let relabelled: [(&str, &[(&str, &str)]); 3] = [
                ("a", &[("team", "payments"), ("owner", "x")]),
                ("b", b),
                ("c", &[("team", "other"), ("cost", "42")]),
            ];
            assert_eq!(moved_by(&both, &relabelled), names(&[]));
            // A mapping deleted: its namespace now acts as an unmapped one.
            assert_eq!(moved_by(&[("payments", &payments)], &all), names(&["b"]));
            // A mapping's role changed: its namespaces.
            assert_eq!(
                moved_by(&[("payments", &to_search), ("search", &search)], &all),
                names(&["a"])
            );
            // A namespace moved from one mapping to the other, one new, one deleted.
            assert_eq!(
                moved_by(&both, &[("a", b), ("b", b), ("d", c)]),
                names(&["a", "c", "d"])
            );
            // No mapping at all: the mapped namespaces move, the unmapped one stays as it was.
            assert_eq!(moved_by(&[], &all), names(&["a", "b"]));
        }
    }
}
