//! The cached resources whose connection a management account may still accept or reject, by
//! connection id: the management side here finds the resource that holds a connection it just
//! decided without scanning the watch cache. A scan per decision is O(N): measured 133 us at
//! 10,000 cached resources (58 us at 5,000), so a cluster that both requests and accepts 10,000
//! connections spent about 1.3 s of CPU on scans alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

use crate::compact_id::CompactId;
use crate::connection::api::{ConnectionState, EnvironmentAccountConnection};

type Eac = EnvironmentAccountConnection;

/// The cached copies of the resources whose connection is not decided yet (PENDING, or no state
/// recorded), by connection id.
#[derive(Default)]
pub struct Undecided(Mutex<Known>);

#[derive(Default)]
struct Known {
    /// As the watch shows them.
    watched: HashMap<CompactId, Arc<Eac>>,
    /// Just created here, before the watch shows the status naming the connection (see
    /// [`Undecided::created`]), and when.
    created: HashMap<CompactId, (Arc<Eac>, Instant)>,
}

/// How long a connection created here is found without the watch: its status write reaches
/// the watch within milliseconds, or failed (a status that may not be written, the resource
/// deleted first), and then the copy kept would outlive the store's.
const CREATED_FOR: Duration = Duration::from_secs(30);

/// The id of a resource's connection, if it has one.
fn connection_id(obj: &Eac) -> Option<&str> {
    obj.status.as_ref()?.id.as_deref()
}

/// The connection id of a resource whose connection is not decided yet.
fn undecided_id(obj: &Eac) -> Option<&str> {
    match obj.status.as_ref()?.status {
        None | Some(ConnectionState::Pending) => connection_id(obj),
        Some(ConnectionState::Connected | ConnectionState::Rejected) => None,
    }
}

impl Undecided {
    fn lock(&self) -> std::sync::MutexGuard<'_, Known> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follows one event of the watch, once `cache` holds what it shows.
    pub fn follow(&self, cache: &Store<Eac>, event: &watcher::Event<Eac>) {
        match event {
            watcher::Event::Apply(obj) => {
                if let Some(id) = undecided_id(obj) {
                    if let Some(cached) = cache.get(&ObjectRef::from_obj(obj)) {
                        let mut known = self.lock();
                        known.created.remove(&CompactId::of(id));
                        known.watched.insert(CompactId::of(id), cached);
                    }
                } else if let Some(id) = connection_id(obj) {
                    let mut known = self.lock();
                    known.created.remove(&CompactId::of(id));
                    known.watched.remove(&CompactId::of(id));
                }
            }
            watcher::Event::Delete(obj) => {
                let mut known = self.lock();
                if let Some(id) = connection_id(obj) {
                    known.watched.remove(&CompactId::of(id));
                }
                // Deleted before its status named the connection.
                let uid = obj.metadata.uid.as_deref();
                known
                    .created
                    .retain(|_, (created, _)| created.metadata.uid.as_deref() != uid);
            }
            // The cache now holds what the relist found, whole.
            watcher::Event::InitDone => {
                let now: HashMap<CompactId, Arc<Eac>> = cache
                    .state()
                    .into_iter()
                    .filter_map(|obj| Some((CompactId::of(undecided_id(&obj)?), obj)))
                    .collect();
                let mut known = self.lock();
                known.watched = now;
                // The relist may have been taken before a status write a Create just made.
                let Known { watched, created } = &mut *known;
                created
                    .retain(|id, (_, at)| !watched.contains_key(id) && at.elapsed() < CREATED_FOR);
            }
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
        }
    }

    /// A Create just made connection `id` for `resource` (its cached copy): findable at once,
    /// before the watch shows the status that names it. The management side here may accept it
    /// within milliseconds, sooner than the status write reaches the watch (on a real API server
    /// 5 to 20 ms); not found, the resource would learn of it only at its next poll. The watch's
    /// next copy naming it takes the place of this one, which is forgotten after
    /// [`CREATED_FOR`] in any case.
    pub fn created(&self, id: &str, resource: Arc<Eac>) {
        let mut known = self.lock();
        known
            .created
            .retain(|_, (_, at)| at.elapsed() < CREATED_FOR);
        known
            .created
            .insert(CompactId::of(id), (resource, Instant::now()));
    }

    /// The cached resource holding connection `id`, if it is not decided yet.
    pub fn find(&self, id: &str) -> Option<Arc<Eac>> {
        let known = self.lock();
        let id = CompactId::of(id);
        known.watched.get(&id).cloned().or_else(|| {
            known
                .created
                .get(&id)
                .filter(|(_, at)| at.elapsed() < CREATED_FOR)
                .map(|(resource, _)| resource.clone())
        })
    }

    /// Forgets every resource (the controller stopped).
    pub fn clear(&self) {
        *self.lock() = Known::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::api::{
        EnvironmentAccountConnectionSpec, EnvironmentAccountConnectionStatus,
    };
    use kube::runtime::reflector;

    const ID: &str = "6f1e0b9c-7d2a-4c55-9f0e-1a2b3c4d5e6f";

    fn resource(name: &str, state: Option<ConnectionState>, id: Option<&str>) -> Eac {
        let mut obj = Eac::new(name, EnvironmentAccountConnectionSpec::default());
        obj.metadata.namespace = Some("platform".into());
        obj.status = Some(EnvironmentAccountConnectionStatus {
            id: id.map(str::to_string),
            status: state,
            ..Default::default()
        });
        obj
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_created_here_is_found_before_the_watch_names_it_and_not_for_long() {
        let (cache, mut writer) = reflector::store::<Eac>();
        let undecided = Undecided::default();
        let mut apply = |event: watcher::Event<Eac>| {
            writer.apply_watcher_event(&event);
            undecided.follow(&cache, &event);
        };
        let mut before = resource("new", None, None);
        before.metadata.uid = Some("uid-new".into());
        apply(watcher::Event::Apply(before.clone()));
        undecided.created(ID, Arc::new(before.clone()));
        assert!(
            undecided.find(ID).is_some(),
            "found before the watch names it"
        );
        // The watch's copy naming it takes its place.
        let mut named = resource("new", Some(ConnectionState::Pending), Some(ID));
        named.metadata.uid = Some("uid-new".into());
        apply(watcher::Event::Apply(named));
        assert_eq!(undecided.lock().created.len(), 0);
        assert!(undecided.find(ID).is_some());

        // Deleted before its status named the connection: forgotten.
        undecided.created("other-id", Arc::new(before.clone()));
        apply(watcher::Event::Delete(before.clone()));
        assert!(undecided.find("other-id").is_none());
        // Its status never written: not found after a while, and dropped at the next.
        undecided.created("late-id", Arc::new(before.clone()));
        tokio::time::advance(CREATED_FOR).await;
        assert!(undecided.find("late-id").is_none());
        undecided.created("next-id", Arc::new(before));
        assert_eq!(undecided.lock().created.len(), 1, "the old one dropped");
    }

    #[test]
    fn a_pending_connection_is_found_by_its_id_until_decided_or_gone() {
        let (cache, mut writer) = reflector::store::<Eac>();
        let undecided = Undecided::default();
        let mut apply = |event: watcher::Event<Eac>| {
            writer.apply_watcher_event(&event);
            undecided.follow(&cache, &event);
        };
        apply(watcher::Event::Init);
        apply(watcher::Event::InitApply(resource(
            "listed",
            Some(ConnectionState::Pending),
            Some(ID),
        )));
        apply(watcher::Event::InitApply(resource(
            "done",
            Some(ConnectionState::Connected),
            Some("done-id"),
        )));
        apply(watcher::Event::InitDone);
        assert_eq!(
            undecided.find(ID).and_then(|o| o.metadata.name.clone()),
            Some("listed".into()),
            "found after a relist"
        );
        assert!(undecided.find("done-id").is_none(), "decided already");

        apply(watcher::Event::Apply(resource(
            "listed",
            Some(ConnectionState::Connected),
            Some(ID),
        )));
        assert!(undecided.find(ID).is_none(), "accepted");

        // Recorded before its state is known (the Create answered, the status not read yet).
        apply(watcher::Event::Apply(resource("new", None, Some("new-id"))));
        assert_eq!(
            undecided
                .find("new-id")
                .and_then(|o| o.metadata.name.clone()),
            Some("new".into()),
            "the cache's own copy"
        );
        apply(watcher::Event::Delete(resource(
            "new",
            None,
            Some("new-id"),
        )));
        assert!(undecided.find("new-id").is_none(), "deleted");
        apply(watcher::Event::Apply(resource(
            "no-id",
            Some(ConnectionState::Pending),
            None,
        )));
        let known = undecided.lock();
        assert!(known.watched.is_empty() && known.created.is_empty());
    }
}
