//! When each object's reconcile comes back: the controller's own timetable, in place of
//! kube-runtime's requeues.
//!
//! kube-runtime keeps a requeued object in its scheduler: a request naming it (four strings) in a
//! map and again in a delay queue, both of a power-of-two capacity. With every resource requeued
//! for its resync, that was 6.4 MiB of the controller's peak RSS at 10,000 resources (0.65 KiB a
//! resource, measured by leaving the requeues out). This keeps per object its uid (as bytes), its
//! name, its namespace (one copy per namespace) and its due time, and queues the object on the
//! controller's own stream (`reconcile_on`, see [`Nudge::requeue`]) when it is due.
//!
//! A reconcile sets when it comes back, and a later one replaces it: the last reconcile's
//! decision holds, as its checkpoint does (see [`super::tracked`]). A reconcile that comes back
//! early finds itself not due and sets the rest of its wait again, as it did with kube-runtime's
//! requeues. The error policy's backoff stays with kube-runtime: it is for few objects at once,
//! and short.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kube::Resource;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::nudge::Nudge;
use crate::compact_id::CompactId;
use crate::interned::Interned;

/// The shortest time between two wakes of the timetable: with thousands of objects, a wake (a
/// task switch) for each millisecond with something due costs more than this lateness.
pub const SPACING: Duration = Duration::from_millis(20);

/// When one object comes back, and what names it to kube-runtime (its name and namespace).
struct Entry {
    due: Instant,
    name: Box<str>,
    namespace: Arc<str>,
}

#[derive(Default)]
struct State {
    by_uid: HashMap<CompactId, Entry>,
    /// (due, uid), the next first.
    due: BTreeSet<(Instant, CompactId)>,
    /// The namespaces of the objects kept, each once.
    namespaces: Interned,
}

/// When each object of one controller comes back, by uid.
#[derive(Default)]
pub struct Timetable {
    state: Mutex<State>,
    changed: Notify,
}

impl Timetable {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The object (`uid`, named `name` in `namespace`) comes back at `due`, and not before
    /// unless something else queues it; replaces when it came back before.
    pub fn set(&self, uid: &str, name: &str, namespace: &str, due: Instant) {
        let key = CompactId::of(uid);
        let mut state = self.lock();
        let first = state.due.first().map(|(at, _)| *at);
        let state = &mut *state;
        match state.by_uid.get_mut(&key) {
            Some(entry) => {
                state.due.remove(&(entry.due, key.clone()));
                entry.due = due;
                if *entry.name != *name {
                    entry.name = name.into();
                }
                if *entry.namespace != *namespace {
                    entry.namespace = state.namespaces.share(namespace);
                }
            }
            None => {
                let namespace = state.namespaces.share(namespace);
                state.by_uid.insert(
                    key.clone(),
                    Entry {
                        due,
                        name: name.into(),
                        namespace,
                    },
                );
            }
        }
        state.due.insert((due, key));
        if first.is_none_or(|first| due < first) {
            self.changed.notify_one();
        }
    }

    /// How long until the object comes back, if it is in the timetable.
    pub fn comes_back_in(&self, uid: &str, now: Instant) -> Option<Duration> {
        self.lock()
            .by_uid
            .get(&CompactId::of(uid))
            .map(|e| e.due.saturating_duration_since(now))
    }

    /// The object is gone.
    pub fn remove(&self, uid: &str) {
        let mut state = self.lock();
        let key = CompactId::of(uid);
        if let Some(entry) = state.by_uid.remove(&key) {
            state.due.remove(&(entry.due, key));
        }
    }

    /// Keeps only the objects whose uid `live` holds.
    pub fn retain(&self, live: impl Fn(&CompactId) -> bool) {
        let mut state = self.lock();
        let state = &mut *state;
        state.by_uid.retain(|uid, _| live(uid));
        let by_uid = &state.by_uid;
        state.due.retain(|(_, uid)| by_uid.contains_key(uid));
        state
            .namespaces
            .retain_used(by_uid.values().map(|e| &*e.namespace));
    }

    /// Forgets everything (the controller stops, or starts a new term).
    pub fn clear(&self) {
        *self.lock() = State::default();
    }

    pub fn len(&self) -> usize {
        self.lock().by_uid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn next_due(&self) -> Option<Instant> {
        self.lock().due.first().map(|(at, _)| *at)
    }

    /// Takes out every object due at `now`: its name and namespace.
    fn take_due(&self, now: Instant) -> Vec<(Box<str>, Arc<str>)> {
        let mut state = self.lock();
        let mut taken = Vec::new();
        while let Some((at, _)) = state.due.first()
            && *at <= now
        {
            let Some((_, uid)) = state.due.pop_first() else {
                break;
            };
            if let Some(entry) = state.by_uid.remove(&uid) {
                taken.push((entry.name, entry.namespace));
            }
        }
        taken
    }

    /// Queues each object on `nudge`'s stream when it is due, until aborted; wakes at most
    /// once every [`SPACING`], so objects due close together are queued together.
    pub async fn run<K>(self: Arc<Self>, nudge: Nudge<K>)
    where
        K: Resource<DynamicType = ()> + Clone + 'static,
    {
        let mut woke: Option<Instant> = None;
        loop {
            let changed = self.changed.notified();
            match self.next_due() {
                Some(due) if due <= Instant::now() => {
                    let now = Instant::now();
                    woke = Some(now);
                    for (name, namespace) in self.take_due(now) {
                        nudge.requeue(ObjectRef::new(&name).within(&namespace));
                    }
                }
                Some(due) => {
                    let at = woke.map_or(due, |woke| due.max(woke + SPACING));
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn names(taken: &[(Box<str>, Arc<str>)]) -> Vec<String> {
        taken
            .iter()
            .map(|(name, ns)| format!("{ns}/{name}"))
            .collect()
    }

    #[test]
    fn objects_come_back_in_the_order_of_their_due_times_and_a_later_set_replaces() {
        let t = Timetable::default();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        t.set("u1", "a", "ns1", t0 + s(3));
        t.set("u2", "b", "ns2", t0 + s(1));
        t.set("u3", "c", "ns1", t0 + s(2));
        t.set("u1", "a", "ns1", t0 + s(10));
        assert_eq!(t.len(), 3);
        assert_eq!(t.comes_back_in("u1", t0), Some(s(10)));
        assert_eq!(t.comes_back_in("u9", t0), None);
        assert_eq!(t.next_due(), Some(t0 + s(1)));
        assert!(t.take_due(t0).is_empty(), "nothing is due yet");
        assert_eq!(names(&t.take_due(t0 + s(3))), ["ns2/b", "ns1/c"]);
        assert_eq!(t.len(), 1, "what was taken is no longer kept");
        assert_eq!(names(&t.take_due(t0 + s(10))), ["ns1/a"]);
        assert!(t.is_empty() && t.next_due().is_none());
    }

    #[test]
    fn a_set_may_bring_an_object_forward_and_removed_objects_never_come_back() {
        let t = Timetable::default();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        t.set("u1", "a", "ns", t0 + s(600));
        t.set("u1", "a", "ns", t0 + s(1));
        t.set("u2", "b", "ns", t0 + s(1));
        t.remove("u2");
        t.remove("unknown");
        assert_eq!(names(&t.take_due(t0 + s(1))), ["ns/a"]);
        assert!(
            t.take_due(t0 + s(600)).is_empty(),
            "the replaced time is gone"
        );
    }

    #[test]
    fn namespaces_are_kept_once_and_dropped_with_their_last_object() {
        let t = Timetable::default();
        let t0 = Instant::now();
        t.set("u1", "a", "team", t0);
        t.set("u2", "b", "team", t0);
        t.set("u3", "c", "other", t0);
        {
            let state = t.lock();
            let a = &state.by_uid[&CompactId::of("u1")].namespace;
            let b = &state.by_uid[&CompactId::of("u2")].namespace;
            assert!(Arc::ptr_eq(a, b), "one copy per namespace");
            assert_eq!(state.namespaces.len(), 2);
        }
        t.retain(|uid| *uid != CompactId::of("u3"));
        assert_eq!(t.len(), 2);
        assert_eq!(t.lock().namespaces.len(), 1);
        assert_eq!(t.lock().due.len(), 2, "the due times follow the objects");
        t.clear();
        assert!(t.is_empty() && t.lock().namespaces.is_empty());
    }

    #[test]
    fn a_moved_object_is_named_as_it_is_now() {
        let t = Timetable::default();
        let t0 = Instant::now();
        t.set("u1", "a", "ns", t0);
        t.set("u1", "a2", "ns2", t0);
        assert_eq!(names(&t.take_due(t0)), ["ns2/a2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_queues_each_object_when_it_is_due_and_wakes_for_an_earlier_one() {
        let table = Arc::new(Timetable::default());
        let nudge: Nudge<ConfigMap> = Nudge::default();
        let (_store, writer) = kube::runtime::reflector::store::<ConfigMap>();
        let mut queued = nudge.attach(writer.as_reader(), Arc::new(|_: &str, _| {}), None);
        let t0 = Instant::now();
        table.set("u1", "late", "ns", t0 + Duration::from_secs(600));
        let running = tokio::spawn(table.clone().run(nudge.clone()));
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Set while the loop sleeps until the later one: it must wake for this one.
        table.set("u2", "soon", "ns", t0 + Duration::from_secs(5));
        let hour = Duration::from_secs(3600);
        let first = tokio::time::timeout(hour, queued.next()).await;
        assert_eq!(
            first.ok().flatten().map(|o| o.name).as_deref(),
            Some("soon")
        );
        assert_eq!(
            Instant::now() - t0,
            Duration::from_secs(5),
            "queued when due"
        );
        let second = tokio::time::timeout(hour, queued.next()).await;
        assert_eq!(
            second.ok().flatten().map(|o| o.name).as_deref(),
            Some("late")
        );
        assert_eq!(Instant::now() - t0, Duration::from_secs(600));

        // Due a millisecond after the last wake: queued SPACING after that wake, not sooner.
        let t1 = Instant::now();
        table.set("u3", "x", "ns", t1 + Duration::from_secs(1));
        table.set("u4", "y", "ns", t1 + Duration::from_millis(1_001));
        for expected in ["x", "y"] {
            let next = tokio::time::timeout(hour, queued.next()).await;
            assert_eq!(
                next.ok().flatten().map(|o| o.name).as_deref(),
                Some(expected)
            );
        }
        assert_eq!(Instant::now() - t1, Duration::from_secs(1) + SPACING);
        running.abort();
    }
}
