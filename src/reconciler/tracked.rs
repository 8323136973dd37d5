//! What a controller keeps about each object between reconciles, the same for every kind: when
//! the object is next due (its checkpoint), its consecutive failures for the backoff, the last
//! Kubernetes error announced, and whatever the kind itself keeps (`M`).
//!
//! A checkpoint names the generation and the triggers (`T`: the annotations and the like a kind
//! reacts to) it was taken for: until it is due, a reconcile of an object in which neither
//! changed costs nothing, so no trigger (a relist, the controller's own status write) gets
//! around a backoff or a requeue. Everything is dropped when the object leaves the watch cache,
//! and when the controller stops leading.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::after_outage::{Away, Look};
use super::retry::retry_after;
use crate::aws::error::{ErrorClass, Retry};
use crate::compact_id::CompactId;

/// When an object is due again, and for which generation and triggers.
#[derive(Clone, Debug)]
pub struct Checkpoint<T> {
    pub generation: i64,
    pub triggers: T,
    pub due: Instant,
}

/// What is kept about one object.
#[derive(Clone, Debug)]
pub struct Tracked<T, M> {
    /// What the kind keeps (the status it wrote, what it learned, ...).
    pub kind: M,
    pub checkpoint: Option<Checkpoint<T>>,
    /// Consecutive failed reconciles of `failed_generation`, for the backoff.
    failures: u32,
    failed_generation: i64,
    /// The last Kubernetes error announced in an Event, so the same one is announced once.
    last_kube_error: Option<String>,
    /// Made due by a nudge: what it waits for has happened (see [`Tracker::expire`]).
    nudged: bool,
    /// A nudge came while a reconcile was under way, after it read what it decides from: the
    /// time that reconcile holds the object to (see [`Tracked::hold`]) must not hide it.
    nudged_since_began: bool,
    /// The last failure was this service not answering: its return ends the backoff (see
    /// [`Tracker::due_after`]).
    waits_for: Option<Away>,
    /// How many returns of each service had been told when the object's last reconcile began
    /// (see [`Guard::began`]).
    returns_seen: Returns,
}

/// How many times each service's return has been told, by [`Away`], wrapping: only whether it
/// changed during one reconcile matters (and a byte fits in the entry's padding).
type Returns = [u8; 2];

fn index(away: Away) -> usize {
    match away {
        Away::ApiServer => 0,
        Away::Aws => 1,
    }
}

impl<T, M: Default> Default for Tracked<T, M> {
    fn default() -> Self {
        Tracked {
            kind: M::default(),
            checkpoint: None,
            failures: 0,
            failed_generation: 0,
            last_kube_error: None,
            nudged: false,
            nudged_since_began: false,
            waits_for: None,
            returns_seen: Returns::default(),
        }
    }
}

impl<T: PartialEq, M> Tracked<T, M> {
    /// How long until the object is due, if nothing changed since its checkpoint.
    pub fn quiet(&self, generation: i64, triggers: &T, now: Instant) -> Option<Duration> {
        self.checkpoint
            .as_ref()
            .filter(|c| c.generation == generation && c.triggers == *triggers && c.due > now)
            .map(|c| c.due - now)
    }

    /// Consecutive failures so far of this generation (a new one starts the count again).
    pub fn failures(&self, generation: i64) -> u32 {
        if self.failed_generation == generation {
            self.failures
        } else {
            0
        }
    }

    /// Counts a failure of `generation`; returns the count, this one included.
    pub fn fail(&mut self, generation: i64) -> u32 {
        if self.failed_generation != generation {
            self.failures = 0;
            self.failed_generation = generation;
        }
        self.failures = self.failures.saturating_add(1);
        self.failures
    }

    /// Whether a nudge made the object due since this was last asked.
    pub fn take_nudged(&mut self) -> bool {
        std::mem::take(&mut self.nudged)
    }

    /// Whether a nudge came since the object's reconcile began (see [`Guard::began`]).
    pub fn nudged_since_began(&self) -> bool {
        self.nudged_since_began
    }

    /// A nudged reconcile did not get to its read (deferred): the next one makes it.
    pub fn keep_nudged(&mut self) {
        self.nudged = true;
    }

    /// A reconcile settled: the backoff and the last error are over.
    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.last_kube_error = None;
        self.waits_for = None;
    }

    /// Nothing for this object before `due`, unless its generation or triggers change. What
    /// its last try waits for stands: a reconcile that was quiet or deferred tried nothing.
    /// Due now instead if a nudge came since the reconcile began: the reconcile the nudge
    /// queued runs next and must not find itself not due.
    pub fn hold(&mut self, generation: i64, triggers: T, due: Instant) {
        let due = if self.nudged_since_began {
            Instant::now()
        } else {
            due
        };
        self.checkpoint = Some(Checkpoint {
            generation,
            triggers,
            due,
        });
    }
}

/// How the service met a call of a reconcile that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Met {
    /// No answer: the service was away.
    Unanswered,
    /// An answer: a refusal, or any other error.
    Refused,
    /// A refusal a server still starting makes of everyone (the API server's 401 or 403: see
    /// [`crate::api_answers`]).
    RefusedAsStarting,
}

/// A reconcile that failed on Kubernetes (AWS errors end in a reported status instead).
#[derive(Clone, Debug, PartialEq)]
pub struct KubeFailure {
    /// Consecutive failures, this one included.
    pub failures: u32,
    /// How long the object waits before its next try.
    pub wait: Duration,
    /// The error differs from the last one announced: worth an Event.
    pub news: bool,
}

/// What a controller keeps about every object, by uid, and how many (for whoever watches).
pub struct Tracker<T, M> {
    /// Boxed entries: the table keeps up to twice the slots it uses, and briefly both tables
    /// while it grows, so a slot the size of a pointer is cheaper than one the size of an entry.
    /// Keyed by the uid's bytes (see [`CompactId`]).
    map: Mutex<HashMap<CompactId, Box<Tracked<T, M>>>>,
    count: tokio::sync::watch::Sender<usize>,
    /// How many times each service's return has been told ([`Tracker::due_after`]);
    /// changed only under the map's lock.
    returns: [AtomicU8; 2],
}

impl<T, M> Default for Tracker<T, M> {
    fn default() -> Self {
        Tracker {
            map: Mutex::default(),
            count: tokio::sync::watch::channel(0).0,
            returns: Default::default(),
        }
    }
}

/// How a failed reconcile left its object.
#[derive(Clone, Copy, Debug)]
pub struct Held {
    /// Consecutive failures counted (0 when the failure was an outage's that has ended).
    pub failures: u32,
    pub due: Instant,
    /// The service's return was told while the reconcile ran: due now.
    pub passed_by: bool,
}

/// The locked map, by uid; publishes its size when released.
pub struct Guard<'a, T, M> {
    map: MutexGuard<'a, HashMap<CompactId, Box<Tracked<T, M>>>>,
    count: &'a tokio::sync::watch::Sender<usize>,
    returns: &'a [AtomicU8; 2],
}

impl<T, M: Default> Guard<'_, T, M> {
    pub fn get(&self, uid: &str) -> Option<&Tracked<T, M>> {
        self.map.get(&CompactId::of(uid)).map(|t| &**t)
    }

    pub fn get_mut(&mut self, uid: &str) -> Option<&mut Tracked<T, M>> {
        self.map.get_mut(&CompactId::of(uid)).map(|t| &mut **t)
    }

    /// What is kept about `uid`, made up (empty, as if its reconcile began now) if nothing was.
    pub fn entry(&mut self, uid: &str) -> &mut Tracked<T, M> {
        let returns = self.returns_told();
        self.map.entry(CompactId::of(uid)).or_insert_with(|| {
            Box::new(Tracked {
                returns_seen: returns,
                ..Tracked::default()
            })
        })
    }

    fn returns_told(&self) -> Returns {
        // Changed only under the lock this guard holds.
        self.returns.each_ref().map(|r| r.load(Ordering::Relaxed))
    }

    /// A reconcile of `uid` begins: notes which returns it began after (see [`Guard::failed`]).
    pub fn began(&mut self, uid: &str) {
        let returns = self.returns_told();
        let t = self.entry(uid);
        t.returns_seen = returns;
        t.nudged_since_began = false;
    }

    pub fn contains_key(&self, uid: &str) -> bool {
        self.map.contains_key(&CompactId::of(uid))
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl<T: PartialEq, M: Default> Guard<'_, T, M> {
    /// A reconcile of `uid` ended on the problem `reason` and would wait until `due`: counts the
    /// failure and holds the object. If AWS did not answer it (`AwsUnavailable`), AWS's return
    /// makes the object due ([`Tracker::due_after`]), and one told while the reconcile ran makes
    /// it due now ([`Held::passed_by`]).
    pub fn failed(
        &mut self,
        uid: &str,
        generation: i64,
        triggers: T,
        reason: &str,
        due: Instant,
    ) -> Held {
        let met = if reason == ErrorClass::Unanswered.reason() {
            Met::Unanswered
        } else {
            Met::Refused
        };
        self.fail_and_hold(uid, generation, triggers, Away::Aws, met, |_| due)
    }

    /// Counts a reconcile of `uid` that failed on `service`, which `met` its call so, and holds
    /// the object until `due(failures)`; or until now if the service's return was told while the
    /// reconcile ran. Such a return has passed the object by (its try failed before the return
    /// was told, or was sent before it and failed after), and the failures were the outage's.
    fn fail_and_hold(
        &mut self,
        uid: &str,
        generation: i64,
        triggers: T,
        service: Away,
        met: Met,
        due: impl FnOnce(u32) -> Instant,
    ) -> Held {
        let unanswered = met == Met::Unanswered;
        let told = self.returns_told();
        let t = self.entry(uid);
        let failures = t.fail(generation);
        let passed_by = unanswered && told[index(service)] != t.returns_seen[index(service)];
        let due = if passed_by {
            t.failures = 0;
            t.waits_for = None;
            Instant::now()
        } else {
            t.waits_for = match (met, service) {
                (Met::Unanswered, _) => Some(service),
                // A refusal (a 403, a 409) says nothing of AWS: an object whose last AWS call
                // went unanswered still waits for AWS's return, its failures (the count is
                // shared) the outage's.
                (Met::Refused, Away::ApiServer) => t.waits_for.filter(|w| *w == Away::Aws),
                // A 401 or 403 to an object waiting for the API server's return, which is not
                // told yet: most likely the server's own, made while it starts (its RBAC caches
                // not filled; the return is told at a watch's first list, after them). Still
                // waiting: the return makes it due, not the end of the backoff the outage grew
                // (24 to 40 s after a 30 s outage). A refusal that stands is met again then, and
                // backs off as any refusal from there. A wait for AWS stands, as above.
                (Met::RefusedAsStarting, Away::ApiServer) => t.waits_for,
                // AWS answered. The status write (before this for a connection, after it for a
                // policy) tells of the API server itself.
                (_, Away::Aws) => None,
            };
            due(failures)
        };
        t.hold(generation, triggers, due);
        Held {
            failures: t.failures,
            due,
            passed_by,
        }
    }
}

impl<T, M> Drop for Guard<'_, T, M> {
    fn drop(&mut self) {
        let n = self.map.len();
        self.count
            .send_if_modified(|c| std::mem::replace(c, n) != n);
    }
}

impl<T: PartialEq, M: Default> Tracker<T, M> {
    pub fn lock(&self) -> Guard<'_, T, M> {
        Guard {
            map: self.map.lock().unwrap_or_else(|p| p.into_inner()),
            count: &self.count,
            returns: &self.returns,
        }
    }

    /// Sees the number of tracked objects change.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<usize> {
        self.count.subscribe()
    }

    /// The object is gone.
    pub fn remove(&self, uid: &str) {
        self.lock().map.remove(&CompactId::of(uid));
    }

    /// Keeps only the objects still in the watch cache.
    pub fn retain_only(&self, live: &HashSet<CompactId>) {
        self.lock().map.retain(|uid, _| live.contains(uid));
    }

    /// Forgets everything (a new term of leadership: another leader may have written since).
    pub fn clear(&self) {
        self.lock().map.clear();
    }

    /// Moves one object's due time out to `due` (not in): what it is due for was done at
    /// another's hands, whose next is then (see `connection::polls`).
    pub fn postpone(&self, uid: &str, due: Instant) {
        let mut tracker = self.lock();
        // Not past a nudge not yet taken: the reconcile it queued must find the object due.
        let Some(t) = tracker.get_mut(uid).filter(|t| !t.nudged) else {
            return;
        };
        if let Some(c) = t.checkpoint.as_mut()
            && c.due < due
        {
            c.due = due;
        }
    }

    /// Makes one object due now: something it waits for has happened (see `nudge`).
    pub fn expire(&self, uid: &str) {
        if let Some(t) = self.lock().get_mut(uid) {
            t.nudged = true;
            t.nudged_since_began = true;
            if let Some(c) = t.checkpoint.as_mut() {
                c.due = Instant::now();
            }
        }
    }

    /// Makes every object due now, as if its requeue time had come (tests, a forced resync).
    pub fn expire_checkpoints(&self) {
        let now = Instant::now();
        for t in self.lock().map.values_mut() {
            if let Some(c) = &mut t.checkpoint {
                c.due = now;
            }
        }
    }

    /// `away` answers again after an outage: every object whose last reconcile failed because
    /// it did not answer is due now, not at the end of a backoff that grew through the outage,
    /// and its failures (the outage's) are forgotten. Returns them. The look when the return is
    /// told also counts it, for the reconciles under way (see [`Guard::failed`]); the second
    /// look is no new return.
    pub fn due_after(&self, away: Away, look: Look) -> HashSet<CompactId> {
        let now = Instant::now();
        let mut due = HashSet::new();
        let mut tracked = self.lock();
        if look == Look::Told {
            // Under the lock: a reconcile that begins now sees the return as told.
            self.returns[index(away)].fetch_add(1, Ordering::Relaxed);
        }
        for (uid, t) in tracked.map.iter_mut() {
            if t.waits_for != Some(away) {
                continue;
            }
            t.waits_for = None;
            t.failures = 0;
            if let Some(c) = t.checkpoint.as_mut() {
                c.due = c.due.min(now);
            }
            due.insert(uid.clone());
        }
        due
    }

    /// A reconcile of `uid` failed on Kubernetes with `message`, the API server having `met` its
    /// call so: counts the failure, holds the object for its backoff (exponential, jittered,
    /// capped: see [`retry_after`]), and says whether the error is news.
    pub fn kube_failure(
        &self,
        uid: &str,
        generation: i64,
        triggers: T,
        message: &str,
        met: Met,
        resync: Duration,
    ) -> KubeFailure {
        let mut tracked = self.lock();
        let now = Instant::now();
        let Held { failures, due, .. } = tracked.fail_and_hold(
            uid,
            generation,
            triggers,
            Away::ApiServer,
            met,
            |failures| now + retry_after(Retry::Backoff, failures, resync, rand::random()),
        );
        let wait = due.saturating_duration_since(Instant::now());
        let t = tracked.entry(uid);
        let news = t.last_kube_error.as_deref() != Some(message);
        t.last_kube_error = Some(message.to_string());
        KubeFailure {
            failures,
            wait,
            news,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_holds_until_due_unless_generation_or_triggers_change() {
        let mut t: Tracked<&str, ()> = Tracked::default();
        let now = Instant::now();
        t.hold(1, "a", now + Duration::from_secs(5));
        assert_eq!(t.quiet(1, &"a", now), Some(Duration::from_secs(5)));
        assert_eq!(t.quiet(2, &"a", now), None, "a new generation");
        assert_eq!(t.quiet(1, &"b", now), None, "other triggers");
        assert_eq!(t.quiet(1, &"a", now + Duration::from_secs(5)), None, "due");
    }

    #[test]
    fn a_nudge_during_a_reconcile_outlasts_the_time_it_holds_the_object_to() {
        let tracker: Tracker<&str, ()> = Tracker::default();
        let later = || Instant::now() + Duration::from_secs(30);
        let quiet = |uid: &str| {
            tracker
                .lock()
                .get(uid)
                .unwrap()
                .quiet(1, &"a", Instant::now())
        };
        // Nudged before its reconcile began: that reconcile saw it, its hold stands.
        tracker.lock().entry("before").hold(1, "a", later());
        tracker.expire("before");
        tracker.lock().began("before");
        tracker.lock().entry("before").hold(1, "a", later());
        assert!(quiet("before").is_some());
        // Nudged while it ran: the reconcile the nudge queued finds it due.
        tracker.lock().began("during");
        tracker.expire("during");
        tracker.lock().entry("during").hold(1, "a", later());
        assert_eq!(quiet("during"), None);
        // That one's own hold stands again.
        tracker.lock().began("during");
        tracker.lock().entry("during").hold(1, "a", later());
        assert!(quiet("during").is_some());
    }

    #[test]
    fn a_checkpoint_is_postponed_but_never_brought_forward() {
        let tracker: Tracker<&str, ()> = Tracker::default();
        let now = Instant::now();
        tracker.postpone("u", now + Duration::from_secs(9));
        assert!(
            tracker.lock().is_empty(),
            "nothing made up for an unknown object"
        );
        tracker
            .lock()
            .entry("u")
            .hold(1, "a", now + Duration::from_secs(5));
        tracker.postpone("u", now + Duration::from_secs(3));
        assert_eq!(
            tracker.lock().get("u").unwrap().quiet(1, &"a", now),
            Some(Duration::from_secs(5))
        );
        tracker.postpone("u", now + Duration::from_secs(8));
        assert_eq!(
            tracker.lock().get("u").unwrap().quiet(1, &"a", now),
            Some(Duration::from_secs(8))
        );
        // Nudged: due now until the reconcile the nudge queued takes it.
        tracker.expire("u");
        tracker.postpone("u", now + Duration::from_secs(20));
        let quiet = |tracker: &Tracker<&str, ()>| {
            tracker
                .lock()
                .get("u")
                .unwrap()
                .quiet(1, &"a", Instant::now())
        };
        assert_eq!(quiet(&tracker), None);
        assert!(tracker.lock().get_mut("u").unwrap().take_nudged());
        tracker.postpone("u", now + Duration::from_secs(20));
        assert!(quiet(&tracker).is_some());
    }

    #[test]
    fn failures_count_per_generation_and_reset_on_success() {
        let mut t: Tracked<(), ()> = Tracked::default();
        assert_eq!(t.fail(1), 1);
        assert_eq!(t.fail(1), 2);
        assert_eq!(t.failures(1), 2);
        assert_eq!(t.failures(2), 0);
        assert_eq!(t.fail(2), 1, "a new generation starts again");
        t.succeeded();
        assert_eq!(t.failures(2), 0);
    }

    #[test]
    fn a_kube_failure_backs_off_and_is_news_once() {
        let tracker: Tracker<(), ()> = Tracker::default();
        let resync = Duration::from_secs(600);
        let first = tracker.kube_failure("u", 1, (), "403 forbidden", Met::Refused, resync);
        let second = tracker.kube_failure("u", 1, (), "403 forbidden", Met::Refused, resync);
        let third = tracker.kube_failure("u", 1, (), "500 internal", Met::Unanswered, resync);
        assert_eq!((first.failures, second.failures), (1, 2));
        assert!(second.wait > first.wait, "{first:?} {second:?}");
        assert_eq!((first.news, second.news, third.news), (true, false, true));
        let held = tracker
            .lock()
            .get("u")
            .unwrap()
            .quiet(1, &(), Instant::now());
        assert!(held.is_some(), "held for its backoff");
    }

    #[test]
    fn a_return_makes_due_only_what_that_service_left_unanswered_and_once() {
        let tracker: Tracker<(), ()> = Tracker::default();
        let resync = Duration::from_secs(600);
        for _ in 0..5 {
            tracker.kube_failure("outage", 1, (), "503", Met::Unanswered, resync);
            // A 403 as a starting server makes one, but with no outage before: a refusal.
            tracker.kube_failure(
                "refused",
                1,
                (),
                "403 forbidden",
                Met::RefusedAsStarting,
                resync,
            );
        }
        tracker.kube_failure("recovered", 1, (), "503", Met::Unanswered, resync);
        tracker.lock().get_mut("recovered").unwrap().succeeded();
        // Failed during the outage, then refused: the refusal's backoff stands.
        tracker.kube_failure("then-refused", 1, (), "503", Met::Unanswered, resync);
        tracker.kube_failure("then-refused", 1, (), "409 conflict", Met::Refused, resync);
        // Failed during the outage, then refused as a server still starting refuses (its RBAC
        // caches not filled) before the return is told: still waits for the return.
        tracker.kube_failure("starting", 1, (), "503", Met::Unanswered, resync);
        tracker.kube_failure(
            "starting",
            1,
            (),
            "403 forbidden",
            Met::RefusedAsStarting,
            resync,
        );
        // An AWS call that Proton left unanswered, as a reconcile reports it.
        for _ in 0..5 {
            ended_on(&tracker, "aws", ErrorClass::Unanswered.reason());
        }
        // An AWS problem that is an answer: its backoff stands at AWS's return.
        ended_on(&tracker, "denied", ErrorClass::AccessDenied.reason());
        // Left unanswered by Proton, then a write the API server refused: still waits for AWS.
        for _ in 0..5 {
            ended_on(
                &tracker,
                "aws-then-refused",
                ErrorClass::Unanswered.reason(),
            );
        }
        tracker.kube_failure(
            "aws-then-refused",
            1,
            (),
            "409 conflict",
            Met::Refused,
            resync,
        );
        let held = |uid: &str| {
            tracker
                .lock()
                .get(uid)
                .unwrap()
                .quiet(1, &(), Instant::now())
        };
        assert!(held("outage").is_some(), "held for its backoff");

        assert!(held("starting").is_some(), "held for its backoff");
        let due = tracker.due_after_return(Away::ApiServer);
        assert_eq!(
            due,
            HashSet::from([CompactId::of("outage"), CompactId::of("starting")])
        );
        assert_eq!(held("outage"), None, "due now");
        assert!(held("refused").is_some() && held("then-refused").is_some());
        assert!(
            held("aws").is_some(),
            "waits for Proton, not the API server"
        );
        assert_eq!(
            tracker.lock().get("outage").unwrap().failures(1),
            0,
            "the outage's failures are forgotten: one after the return backs off from the start"
        );
        assert!(
            tracker.due_after_return(Away::ApiServer).is_empty(),
            "made due once: another return finds nothing until it fails unanswered again"
        );
        assert_eq!(
            tracker.due_after_return(Away::Aws),
            HashSet::from([CompactId::of("aws"), CompactId::of("aws-then-refused")])
        );
        assert_eq!(
            held("aws-then-refused"),
            None,
            "a refusal is no news of AWS"
        );
        assert_eq!(held("aws"), None, "due at Proton's return");
        assert!(held("denied").is_some(), "AccessDenied is an answer");
        assert_eq!(tracker.lock().get("aws").unwrap().failures(1), 0);
        assert!(tracker.due_after_return(Away::Aws).is_empty(), "once");

        // An outcome past the API server (a status written, then an AWS problem) is not the
        // outage's: its requeue stands.
        tracker.kube_failure("outage", 1, (), "503", Met::Unanswered, resync);
        ended_on(&tracker, "outage", ErrorClass::Throttled.reason());
        assert!(tracker.due_after_return(Away::ApiServer).is_empty());
        assert!(held("outage").is_some());
    }

    impl<T: PartialEq, M: Default> Tracker<T, M> {
        fn due_after_return(&self, away: Away) -> HashSet<CompactId> {
            self.due_after(away, Look::Told)
        }
    }

    /// A reconcile of `uid` (generation 1) as the kinds run one: it begins, and ends on the
    /// problem `reason`, wanting to come back in two minutes. Returns when it is due.
    fn ended_on(tracker: &Tracker<(), ()>, uid: &str, reason: &str) -> Instant {
        tracker.lock().began(uid);
        ended_on_after_begun(tracker, uid, reason)
    }

    fn ended_on_after_begun(tracker: &Tracker<(), ()>, uid: &str, reason: &str) -> Instant {
        let wanted = Instant::now() + Duration::from_secs(120);
        tracker.lock().failed(uid, 1, (), reason, wanted).due
    }

    fn is_held(tracker: &Tracker<(), ()>, uid: &str) -> bool {
        tracker
            .lock()
            .get(uid)
            .unwrap()
            .quiet(1, &(), Instant::now())
            .is_some()
    }

    /// The return is told while a reconcile runs: before its try fails (the try was under way),
    /// or after it failed but before the reconcile recorded it (writing its status). Either
    /// way the return found the object without its last failure, so the reconcile's own end
    /// makes it due now, with the outage's failures forgotten; a reconcile begun after the
    /// return backs off as usual.
    #[test]
    fn a_return_told_while_a_reconcile_runs_makes_it_due_when_it_ends_unanswered() {
        let unanswered = ErrorClass::Unanswered.reason();
        let tracker: Tracker<(), ()> = Tracker::default();
        for _ in 0..4 {
            ended_on(&tracker, "during", unanswered);
        }
        tracker.lock().began("during");
        // The fifth try has failed; the return is told before its reconcile records it.
        assert_eq!(
            tracker.due_after_return(Away::Aws),
            HashSet::from([CompactId::of("during")]),
            "the fourth failure's wait for AWS"
        );
        let before = Instant::now();
        let due = ended_on_after_begun(&tracker, "during", unanswered);
        assert!(due <= Instant::now() && due >= before, "due now");
        assert!(!is_held(&tracker, "during"));
        assert_eq!(tracker.lock().get("during").unwrap().failures(1), 0);

        // Begun after the return: a new outage's failure, backed off and waiting for AWS.
        let due = ended_on(&tracker, "during", unanswered);
        assert!(due > Instant::now() + Duration::from_secs(60));
        assert_eq!(
            tracker.due_after_return(Away::Aws),
            HashSet::from([CompactId::of("during")])
        );

        // An answer (throttling) is no outage's: its backoff stands whatever was told.
        tracker.lock().began("throttled");
        ended_on(&tracker, "throttled", ErrorClass::Throttled.reason());
        tracker.lock().began("throttled");
        tracker.due_after_return(Away::Aws);
        ended_on_after_begun(&tracker, "throttled", ErrorClass::Throttled.reason());
        assert!(is_held(&tracker, "throttled"));
        // So is a 500 the service answered: it was there.
        let server_error = ErrorClass::Transient.reason();
        ended_on(&tracker, "500", server_error);
        assert!(
            !tracker
                .due_after_return(Away::Aws)
                .contains(&CompactId::of("500")),
            "an answer waits for no return"
        );
        tracker.lock().began("500");
        tracker.due_after_return(Away::Aws);
        ended_on_after_begun(&tracker, "500", server_error);
        assert!(is_held(&tracker, "500"));

        // The API server's return does not pass by what waits for AWS.
        tracker.lock().began("aws-only");
        ended_on(&tracker, "aws-only", unanswered);
        tracker.lock().began("aws-only");
        tracker.due_after_return(Away::ApiServer);
        ended_on_after_begun(&tracker, "aws-only", unanswered);
        assert!(is_held(&tracker, "aws-only"));

        // The second look at a return is no new return.
        tracker.lock().began("again");
        tracker.due_after(Away::Aws, Look::Again);
        ended_on_after_begun(&tracker, "again", unanswered);
        assert!(is_held(&tracker, "again"));

        // First seen by a reconcile that fails without having begun (nothing kept yet): no
        // return to have missed.
        tracker.due_after_return(Away::Aws);
        ended_on_after_begun(&tracker, "new", unanswered);
        assert!(is_held(&tracker, "new"));

        // A first reconcile, under way at a return: begun, it is kept from its start.
        tracker.lock().began("first");
        tracker.due_after_return(Away::Aws);
        ended_on_after_begun(&tracker, "first", unanswered);
        assert!(!is_held(&tracker, "first"));
    }

    /// The same for the API server: a write under way when its return is told.
    #[test]
    fn a_return_of_the_api_server_told_while_a_write_was_under_way_makes_it_due_at_once() {
        let tracker: Tracker<(), ()> = Tracker::default();
        let resync = Duration::from_secs(600);
        for _ in 0..3 {
            tracker.lock().began("u");
            tracker.kube_failure("u", 1, (), "503", Met::Unanswered, resync);
        }
        tracker.lock().began("u");
        tracker.due_after_return(Away::ApiServer);
        let failure = tracker.kube_failure("u", 1, (), "503", Met::Unanswered, resync);
        assert_eq!(failure.wait, Duration::ZERO, "{failure:?}");
        assert!(!is_held(&tracker, "u"));
        // A refusal is an answer: backed off.
        tracker.lock().began("u");
        tracker.due_after_return(Away::ApiServer);
        let refused = tracker.kube_failure("u", 1, (), "403 forbidden", Met::Refused, resync);
        assert!(refused.wait > Duration::ZERO);
    }

    /// A reconcile that tried nothing (quiet, or deferred by the budget) leaves what the last
    /// try waits for: the return still makes the object due.
    #[test]
    fn a_quiet_reconcile_keeps_what_the_last_try_waits_for() {
        let tracker: Tracker<(), ()> = Tracker::default();
        ended_on(&tracker, "u", ErrorClass::Unanswered.reason());
        tracker
            .lock()
            .entry("u")
            .hold(1, (), Instant::now() + Duration::from_secs(30));
        assert_eq!(
            tracker.due_after_return(Away::Aws),
            HashSet::from([CompactId::of("u")])
        );
    }
}
