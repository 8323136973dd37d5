//! After an outage of the API server or of Proton, what it stopped is tried again as soon as
//! the service answers, not at the end of a backoff that grew through the outage.
//!
//! A reconcile the API server did not answer backs off like any failure (a second, doubling, up to
//! five minutes: see `retry`): through a 30 s outage an object caught mid-reconcile (its intent or
//! status write refused, say) fails four or five times, and would wait up to 20 s after the
//! return; through a longer one, up to five minutes. At the return (an outage of
//! `http::OUTAGE` or longer: see `http::Readiness::returns`) each such object is due at once and
//! its failures are forgotten; a few seconds later the same is done again for those whose call
//! was still being retried inside the client at the return and failed after it. Without leader
//! election a long outage during a mass apply can leave thousands of them: they go as the
//! controller's concurrency allows, as at the apply itself.
//!
//! The same holds for a Proton that did not answer (`aws::reach`): an object whose last reconcile
//! ended on it is due at once when Proton answers again in any region (an outage of
//! `aws::reach::OUTAGE` or longer), its calls then paced by the call budget as any others.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::watch;
use tracing::info;

use crate::compact_id::CompactId;

/// Whose return an object waits for: the service its last reconcile found away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Away {
    /// The Kubernetes API server (see [`unanswered`]).
    ApiServer,
    /// Proton in some region, or STS (see `aws::reach`).
    Aws,
}

impl Away {
    fn answers_again(self) -> &'static str {
        match self {
            Away::ApiServer => {
                "the Kubernetes API server answers again: trying again at once what its outage stopped"
            }
            Away::Aws => {
                "AWS (Proton or STS) answers again: trying again at once what its outage stopped"
            }
        }
    }
}

/// The returns of each service, as its watcher sees them (a counter that moves at each).
pub struct Returns {
    /// `http::Readiness::returns`.
    pub api_server: watch::Receiver<u64>,
    /// `aws::proton::Proton::returns`.
    pub proton: watch::Receiver<u64>,
}

impl Returns {
    /// Those the readiness (the API server's) and the Proton port see.
    pub fn of(readiness: &crate::http::Readiness, proton: &crate::aws::proton::Proton) -> Self {
        Returns {
            api_server: readiness.returns(),
            proton: proton.returns(),
        }
    }
}

pub use crate::api_answers::unanswered;

/// When the objects a return made due are looked for again: a call the API server's return found
/// still being retried inside the client (5 retries, about 3 s at most) fails after it, and its
/// failure is recorded after the first look.
const LOOK_AGAIN: Duration = Duration::from_secs(5);

/// Which look at a return: the one when it is told, or the one [`LOOK_AGAIN`] after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Look {
    Told,
    Again,
}

/// The cached objects to reconcile at each return of a service: those `due` makes due again
/// (the tracker's `due_after`).
pub fn retried<K>(
    returns: Returns,
    store: Store<K>,
    due: impl Fn(Away, Look) -> HashSet<CompactId> + Send + Sync + 'static,
) -> impl Stream<Item = ObjectRef<K>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let due = Arc::new(due);
    // One stream each, so the second look after one service's return does not hold up the
    // other's.
    futures::stream::select(
        retried_after(
            returns.api_server,
            Away::ApiServer,
            store.clone(),
            due.clone(),
        ),
        retried_after(returns.proton, Away::Aws, store, due),
    )
}

/// The cached objects to reconcile at each of `away`'s `returns`.
fn retried_after<K>(
    returns: watch::Receiver<u64>,
    away: Away,
    store: Store<K>,
    due: Arc<impl Fn(Away, Look) -> HashSet<CompactId> + Send + Sync + 'static>,
) -> impl Stream<Item = ObjectRef<K>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    futures::stream::unfold(returns, |mut returns| async move {
        returns.changed().await.ok()?;
        Some(((), returns))
    })
    .flat_map(|()| futures::stream::iter([(Duration::ZERO, Look::Told), (LOOK_AGAIN, Look::Again)]))
    .then(|(wait, look)| async move {
        tokio::time::sleep(wait).await;
        look
    })
    .flat_map(move |look| futures::stream::iter(cached(&store, &due(away, look), away)))
}

/// The cached objects among `due`, by reference.
fn cached<K>(store: &Store<K>, due: &HashSet<CompactId>, away: Away) -> Vec<ObjectRef<K>>
where
    K: Resource<DynamicType = ()> + Clone,
{
    if due.is_empty() {
        return Vec::new();
    }
    let objects = super::watch::refs_where(store, |o| {
        o.meta()
            .uid
            .as_deref()
            .is_some_and(|uid| due.contains(&CompactId::of(uid)))
    });
    if objects.is_empty() {
        return objects;
    }
    info!(
        kind = K::kind(&()).as_ref(),
        objects = objects.len(),
        "{}",
        away.answers_again()
    );
    objects
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::{reflector, watcher};

    use super::*;

    fn config_map(uid: &str) -> ConfigMap {
        let mut o = ConfigMap::default();
        o.metadata.name = Some(format!("cm-{uid}"));
        o.metadata.namespace = Some("ns".into());
        o.metadata.uid = Some(uid.into());
        o
    }

    /// A call still being retried inside the client at the return fails after the first look:
    /// the second, [`LOOK_AGAIN`] later, finds it. Each service's return makes due what that
    /// service stopped, and waits on the other's second look.
    #[tokio::test(start_paused = true)]
    async fn each_return_is_looked_at_twice_for_what_its_service_stopped() {
        let (store, mut writer) = reflector::store::<ConfigMap>();
        for uid in ["first", "late", "gone", "aws"] {
            writer.apply_watcher_event(&watcher::Event::Apply(config_map(uid)));
        }
        writer.apply_watcher_event(&watcher::Event::Delete(config_map("gone")));
        let looks = Arc::new(Mutex::new(VecDeque::from([
            (
                (Away::ApiServer, Look::Told),
                HashSet::from([CompactId::of("first"), CompactId::of("gone")]),
            ),
            (
                (Away::Aws, Look::Told),
                HashSet::from([CompactId::of("aws")]),
            ),
            (
                (Away::ApiServer, Look::Again),
                HashSet::from([CompactId::of("late")]),
            ),
            ((Away::Aws, Look::Again), HashSet::new()),
        ])));
        let due = {
            let looks = looks.clone();
            move |away, look| {
                let (expected, due) = looks.lock().unwrap().pop_front().expect("a look");
                assert_eq!((away, look), expected);
                due
            }
        };
        let (api_server, api_server_seen) = tokio::sync::watch::channel(0u64);
        let (proton, proton_seen) = tokio::sync::watch::channel(0u64);
        let returns = Returns {
            api_server: api_server_seen,
            proton: proton_seen,
        };
        let objects = retried(returns, store, due);
        futures::pin_mut!(objects);

        api_server.send_modify(|n| *n += 1);
        let returned = tokio::time::Instant::now();
        let first = objects.next().await.expect("the first look");
        assert_eq!(first.name, "cm-first", "only what is still cached");
        assert!(
            tokio::time::timeout(Duration::from_secs(1), objects.next())
                .await
                .is_err(),
            "nothing more until the second look"
        );
        proton.send_modify(|n| *n += 1);
        let aws = objects.next().await.expect("Proton's first look");
        assert_eq!(aws.name, "cm-aws");
        assert!(
            returned.elapsed() < LOOK_AGAIN,
            "not held up by the API server's second look"
        );
        let late = objects.next().await.expect("the second look");
        assert_eq!(late.name, "cm-late");
        assert!(returned.elapsed() >= LOOK_AGAIN);

        drop(api_server);
        drop(proton);
        assert!(
            objects.next().await.is_none(),
            "ends with both services' watchers"
        );
        assert!(looks.lock().unwrap().is_empty(), "each return looked twice");
    }

    fn answered(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(
            kube::core::Status::failure("refused", "Refused").with_code(code),
        ))
    }

    #[test]
    fn only_an_api_server_that_was_away_left_a_call_unanswered() {
        for code in [502, 503, 504] {
            assert!(unanswered(&answered(code)), "{code}");
        }
        for code in [400, 403, 404, 409, 422, 429, 500, 501] {
            assert!(!unanswered(&answered(code)), "{code}: answered");
        }
        assert!(unanswered(&kube::Error::Service(
            "connection refused".into()
        )));
        assert!(unanswered(&kube::Error::ReadEvents(std::io::Error::other(
            "reset"
        ))));
        let unreadable = serde_json::from_str::<u8>("x").unwrap_err();
        assert!(!unanswered(&kube::Error::SerdeError(unreadable)), "local");
    }
}
