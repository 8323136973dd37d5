//! Polls of PENDING connections answered by one List of them all.
//!
//! A PENDING connection is polled every few seconds at first (see `decide::rules`). One Get per
//! poll makes the calls, the CPU and the budget they take grow with the number of connections
//! waiting, so thousands created at once cost thousands of Gets a second, and under the default
//! budget each connection is read only every few minutes. Instead, the connections an account
//! has PENDING in a region are listed together (`ListEnvironmentAccountConnections`, 100 a
//! page), and a poll is answered from the newest such list when that list began after the
//! connection was last seen: it shows the connection as of then. A connection the list does not
//! show as it was recorded (accepted, rejected, deleted, changed, or too new for the list) is
//! read with a Get, as before.
//!
//! One list serves every poll of the same credentials and region; polls that find it too old
//! wait for the one poll that lists again. A list that the call budget defers part-way is kept
//! and continued from its next page by whichever poll comes next, so a list longer than the
//! budget allows at once still ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::compact_id::CompactId;

/// A list under way is dropped once it has waited this long for its next page (as a slot
/// booked in the budget is).
const PARTIAL_STALE: Duration = Duration::from_secs(60);

/// After a list failed, the next is not tried for this long, doubling up to
/// [`MAX_FAILED_WAIT`] while lists keep failing: polls meanwhile read with a Get (or wait, if
/// the failure would meet a Get too) instead of each trying the list first. The end of an
/// outage ends the wait of a list that failed in it ([`Listing::answered_again`]).
const FAILED_WAIT: Duration = Duration::from_secs(2);
const MAX_FAILED_WAIT: Duration = Duration::from_secs(60);

/// Lists are spaced by this much per connection the last one showed (10 s for 10,000), so
/// however many wait, listing them takes at most about 10 pages a second; their polls stretch
/// instead. A poll due sooner waits for the next list.
const SPACING_PER_CONNECTION: Duration = Duration::from_millis(1);

/// The lists of each credentials-and-region key.
pub struct PendingLists<T> {
    lists: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Listing<T>>>>>,
    /// Connections seen PENDING outside a list (a Create's or a Get's answer) since a poll last
    /// looked, by key, and as of when. A list that began before then cannot speak for them: a
    /// connection created after the newest list began would otherwise be called gone by it and
    /// read with a Get (hundreds in a burst of thousands). Kept apart from the listings because
    /// a listing stays locked for a whole list, and a Create or a Get must not wait for one.
    seen: Mutex<HashMap<String, Vec<(CompactId, Instant)>>>,
}

impl<T> Default for PendingLists<T> {
    fn default() -> Self {
        PendingLists {
            lists: Mutex::default(),
            seen: Mutex::default(),
        }
    }
}

impl<T> PendingLists<T> {
    /// A connection was seen PENDING as of `at`, outside a list (created, or read with a Get).
    pub fn saw(&self, key: &str, id: &str, at: Instant) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.to_string())
            .or_default()
            .push((CompactId::of(id), at));
    }

    /// Notes in `listing` (of `key`) the connections seen outside a list since it last looked.
    pub fn note_seen(&self, key: &str, listing: &mut Listing<T>) {
        let seen = self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        for (id, at) in seen.into_iter().flatten() {
            listing.saw(&id, at);
        }
    }

    /// The listing of one key; lock it for the length of a poll.
    pub fn listing(&self, key: &str) -> Arc<tokio::sync::Mutex<Listing<T>>> {
        self.lists
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(Listing::default())))
            .clone()
    }
}

/// The PENDING connections of one key, as last listed.
pub struct Listing<T> {
    /// The last complete list: when it began, and what it showed by connection id.
    complete: Option<(Instant, HashMap<CompactId, T>)>,
    /// A list under way across a deferral.
    partial: Option<Partial<T>>,
    /// When each connection was last seen (listed or read), by id.
    seen: HashMap<CompactId, Instant>,
    /// The last list failed.
    failed: Option<Failed>,
}

/// A list that failed: why, when it was sent, and when the next may be tried.
struct Failed {
    error: crate::aws::error::ProtonError,
    sent: Instant,
    until: Instant,
    wait: Duration,
}

impl<T> Default for Listing<T> {
    fn default() -> Self {
        Listing {
            complete: None,
            partial: None,
            seen: HashMap::new(),
            failed: None,
        }
    }
}

/// A list part-way through: when it began, what it found so far, its next page's token, and
/// when it stopped.
pub struct Partial<T> {
    pub began: Instant,
    pub found: HashMap<CompactId, T>,
    pub next: String,
    pub paused: Instant,
}

/// What the newest complete list says of one connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Listed<'a, T> {
    /// No list began after the connection was last seen: list again.
    Stale,
    /// The list shows it (still PENDING).
    Shows(&'a T),
    /// The list does not show it: it is no longer PENDING, gone, or newer than the list.
    Absent,
}

impl<T> Listing<T> {
    /// What the newest complete list says of `id`.
    pub fn of(&self, id: &CompactId) -> Listed<'_, T> {
        match &self.complete {
            Some((began, found)) if self.seen.get(id).is_none_or(|seen| began > seen) => {
                match found.get(id) {
                    Some(c) => Listed::Shows(c),
                    None => Listed::Absent,
                }
            }
            _ => Listed::Stale,
        }
    }

    /// When the newest complete list began.
    pub fn began(&self) -> Option<Instant> {
        self.complete.as_ref().map(|(began, _)| *began)
    }

    /// The earliest a spaced list may begin: the newest one's start, plus its spacing.
    pub fn next_spaced(&self) -> Option<Instant> {
        self.complete.as_ref().map(|(began, found)| {
            *began + SPACING_PER_CONNECTION * u32::try_from(found.len()).unwrap_or(u32::MAX)
        })
    }

    /// The connection was seen as of `at` (listed, or read with a Get).
    pub fn saw(&mut self, id: &CompactId, at: Instant) {
        self.seen.insert(id.clone(), at);
    }

    /// The list to go on with, if one stopped part-way not too long ago.
    pub fn resume(&mut self, now: Instant) -> Option<Partial<T>> {
        self.partial
            .take()
            .filter(|p| now.saturating_duration_since(p.paused) < PARTIAL_STALE)
    }

    /// The list stopped part-way (its next page was deferred).
    pub fn pause(&mut self, partial: Partial<T>) {
        self.partial = Some(partial);
    }

    /// The list is complete. What is remembered of connections it does not show goes: they are
    /// read with a Get next, and their poll sees them again from there. Those seen after it
    /// began (created since) are too new for it, and wait for the next.
    pub fn finish(&mut self, began: Instant, found: HashMap<CompactId, T>) {
        self.seen
            .retain(|id, seen| found.contains_key(id) || *seen >= began);
        self.complete = Some((began, found));
        self.partial = None;
        self.failed = None;
    }

    /// The list begun at `sent` failed at `at` with `error` (not deferred: that is the
    /// budget's to space): the next is not tried before `at` plus the wait.
    pub fn failed(&mut self, error: crate::aws::error::ProtonError, sent: Instant, at: Instant) {
        let wait = match &self.failed {
            Some(f) => (f.wait * 2).min(MAX_FAILED_WAIT),
            None => FAILED_WAIT,
        };
        self.failed = Some(Failed {
            error,
            sent,
            until: at + wait,
            wait,
        });
    }

    /// The service the list goes to (Proton in its region, or STS for a role's credentials)
    /// answered again at `back` after an outage long enough to be told: a list begun before then
    /// that went unanswered failed in the outage, and the wait that grew through it (up to a
    /// minute) is not waited out. A refusal or throttling keeps its wait.
    pub fn answered_again(&mut self, back: Instant) {
        if self.failed.as_ref().is_some_and(|f| {
            f.sent < back && f.error.class == crate::aws::error::ErrorClass::Unanswered
        }) {
            self.failed = None;
        }
    }

    /// The last list's error, while the next may not be tried yet.
    pub fn failing(&self, now: Instant) -> Option<&crate::aws::error::ProtonError> {
        self.failed
            .as_ref()
            .filter(|f| now < f.until)
            .map(|f| &f.error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::error::{ErrorClass, ProtonError};

    fn id(id: &str) -> CompactId {
        CompactId::of(id)
    }

    fn found(ids: &[&str]) -> HashMap<CompactId, u32> {
        ids.iter().map(|id| (CompactId::of(id), 1)).collect()
    }

    #[test]
    fn a_list_answers_only_for_connections_last_seen_before_it_began() {
        let t0 = Instant::now();
        let mut l: Listing<u32> = Listing::default();
        assert_eq!(l.of(&id("a")), Listed::Stale, "nothing listed yet");
        l.finish(t0, found(&["a", "b"]));
        assert_eq!(
            l.of(&id("a")),
            Listed::Shows(&1),
            "never seen: any list is news"
        );
        assert_eq!(l.of(&id("c")), Listed::Absent);
        l.saw(&id("a"), t0);
        assert_eq!(l.of(&id("a")), Listed::Stale, "seen as of this very list");
        l.saw(&id("b"), t0 - Duration::from_secs(1));
        assert_eq!(l.of(&id("b")), Listed::Shows(&1), "seen before it began");
        l.finish(t0 + Duration::from_secs(2), found(&["a"]));
        assert_eq!(l.of(&id("a")), Listed::Shows(&1));
        assert_eq!(l.of(&id("b")), Listed::Absent, "no longer PENDING: read it");
        assert!(
            !l.seen.contains_key(&CompactId::of("b")),
            "forgotten once not listed"
        );
    }

    #[test]
    fn a_connection_created_after_a_list_began_waits_for_the_next_list() {
        let t0 = Instant::now();
        let lists: PendingLists<u32> = PendingLists::default();
        let mut l: Listing<u32> = Listing::default();
        l.finish(t0, found(&["a"]));
        assert_eq!(l.of(&id("new")), Listed::Absent, "unknown: as if gone");
        lists.saw("key", "new", t0 + Duration::from_secs(1));
        lists.note_seen("other key", &mut l);
        assert_eq!(l.of(&id("new")), Listed::Absent, "another key's creation");
        lists.note_seen("key", &mut l);
        assert_eq!(
            l.of(&id("new")),
            Listed::Stale,
            "created after the list began: not for it to say"
        );
        l.finish(t0 + Duration::from_millis(500), found(&["a"]));
        assert_eq!(
            l.of(&id("new")),
            Listed::Stale,
            "still too new, and still remembered"
        );
        l.finish(t0 + Duration::from_secs(2), found(&["a", "new"]));
        assert_eq!(l.of(&id("new")), Listed::Shows(&1));
        lists.note_seen("key", &mut l);
        assert_eq!(l.of(&id("new")), Listed::Shows(&1), "noted once");
    }

    #[test]
    fn a_list_paused_part_way_is_resumed_until_it_goes_stale() {
        let t0 = Instant::now();
        let mut l: Listing<u32> = Listing::default();
        l.pause(Partial {
            began: t0,
            found: found(&["a"]),
            next: "page-2".into(),
            paused: t0,
        });
        let p = l.resume(t0 + Duration::from_secs(5)).expect("kept");
        assert_eq!((p.next.as_str(), p.found.len()), ("page-2", 1));
        assert!(
            l.resume(t0).is_none(),
            "taken by the poll that goes on with it"
        );
        l.pause(p);
        assert!(
            l.resume(t0 + PARTIAL_STALE).is_none(),
            "too old to go on with"
        );
    }

    /// A list that failed with `class` (`code`).
    fn list_failure(class: ErrorClass, code: &str) -> ProtonError {
        ProtonError {
            operation: "ListEnvironmentAccountConnections",
            class,
            code: code.into(),
            message: "failed".into(),
            retry_in: None,
        }
    }

    #[test]
    fn a_failed_list_is_not_tried_again_for_a_wait_that_doubles_until_one_ends() {
        let t0 = Instant::now();
        let denied = list_failure(ErrorClass::AccessDenied, "AccessDeniedException");
        let mut l: Listing<u32> = Listing::default();
        assert!(l.failing(t0).is_none());
        l.failed(denied.clone(), t0, t0);
        assert_eq!(l.failing(t0), Some(&denied));
        assert!(
            l.failing(t0 + FAILED_WAIT).is_none(),
            "tried again after 2 s"
        );
        let t1 = t0 + FAILED_WAIT;
        l.failed(denied.clone(), t1, t1);
        assert!(l.failing(t1 + FAILED_WAIT).is_some(), "failed again: 4 s");
        assert!(l.failing(t1 + 2 * FAILED_WAIT).is_none());
        for _ in 0..10 {
            l.failed(denied.clone(), t1, t1);
        }
        assert!(
            l.failing(t1 + MAX_FAILED_WAIT).is_none(),
            "at most a minute"
        );
        l.finish(t1, found(&["a"]));
        assert!(l.failing(t1).is_none(), "a list that ends clears it");
        l.failed(denied, t1, t1);
        assert!(
            l.failing(t1 + FAILED_WAIT).is_none(),
            "and the wait starts again from 2 s"
        );
    }

    /// Lists that failed through an outage wait up to a minute; once Proton (or STS) answers
    /// again, a list sent before that is not waited out, one sent after it is.
    #[test]
    fn an_outage_s_end_ends_the_wait_of_a_list_sent_before_it() {
        let t0 = Instant::now();
        let unanswered = list_failure(ErrorClass::Unanswered, "DispatchFailure");
        let mut l: Listing<u32> = Listing::default();
        for _ in 0..10 {
            l.failed(unanswered.clone(), t0, t0);
        }
        let back = t0 + Duration::from_secs(5);
        assert!(l.failing(back).is_some(), "a minute's wait");
        l.answered_again(t0);
        assert!(l.failing(back).is_some(), "a return no later than the send");
        l.answered_again(back);
        assert!(l.failing(back).is_none(), "sent before the return");
        let sent = back + Duration::from_secs(1);
        l.failed(unanswered.clone(), sent, sent);
        l.answered_again(back);
        assert!(
            l.failing(sent + Duration::from_secs(1)).is_some(),
            "sent after the return: it waits"
        );
        assert!(l.failing(sent + FAILED_WAIT).is_none(), "from 2 s again");

        // The wait counts from the failure: a list that timed out after 30 s is not tried again
        // at once.
        let timed_out = sent + Duration::from_secs(30);
        l.failed(unanswered.clone(), sent, timed_out);
        assert!(l.failing(timed_out + Duration::from_secs(1)).is_some());

        // A refusal or throttling is an answer: no return ends its wait.
        let mut l: Listing<u32> = Listing::default();
        let denied = list_failure(ErrorClass::AccessDenied, "AccessDeniedException");
        l.failed(denied, t0, t0);
        l.answered_again(back);
        assert!(l.failing(t0 + Duration::from_secs(1)).is_some());
    }

    #[test]
    fn lists_of_many_are_spaced_by_how_many_they_showed() {
        let t0 = Instant::now();
        let mut l: Listing<u32> = Listing::default();
        assert_eq!(l.next_spaced(), None, "nothing listed: list now");
        let many: Vec<String> = (0..5_000).map(|i| format!("c{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        l.finish(t0, found(&refs));
        assert_eq!(l.next_spaced(), Some(t0 + Duration::from_secs(5)));
        l.finish(t0 + Duration::from_secs(5), found(&["a"]));
        assert_eq!(
            l.next_spaced(),
            Some(t0 + Duration::from_millis(5_001)),
            "one connection: next to no spacing"
        );
    }
}
