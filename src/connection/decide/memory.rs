//! What the controller keeps about a resource between reconciles, and the status it reconciles
//! from.
//!
//! The resource's status in the watch cache can be behind: the controller's own last write may
//! not have come back through the watch yet, or the write failed. Reconciling from it would
//! repeat work or, worse, Create a connection that is already known. So the controller notes its
//! last successful write until the cache shows it (a reconcile meanwhile waits for the watch
//! instead of acting on the older copy), and keeps the status of a reconcile whose write failed
//! (the connection it learned about must not be forgotten) and reconciles from it. A failed
//! write is never taken as durable: the record that a Create may be in flight (`createSentAt`)
//! counts only once it is really written.
//!
//! Of a successful write only its resourceVersion and a hash are kept, not the status: under
//! load the watch falls behind the writes by thousands of resources, and a copy of each status
//! was the largest part of the controller's memory at 10,000 resources.

use std::hash::{DefaultHasher, Hash, Hasher};

use serde::{Deserialize, Serialize};

use crate::aws::proton::Retry;
use crate::connection::api::EnvironmentAccountConnectionStatus as Status;
use crate::connection::api::{INTENT_ANNOTATION, patterns};
use crate::reconciler::retry::Problem;

/// The reason a resource reports an intent annotation not taken (see [`Intent::distrust`]).
pub const INTENT_NOT_TRUSTED: &str = "IntentNotTrusted";

/// How far ahead of the reading controller's clock an intent's time may be: the clocks of the
/// replica that wrote it and of the one that reads it differ by far less.
const CLOCK_SKEW: jiff::SignedDuration = jiff::SignedDuration::from_secs(300);

/// The intent to create written with the finalizer (annotation `proton.eac.dev/create-intent`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Intent {
    pub region: String,
    pub account: String,
    /// RFC 3339.
    pub sent_at: String,
}

impl Intent {
    /// Parses the annotation; anything unreadable is ignored (the status still counts).
    pub fn parse(annotation: &str) -> Option<Intent> {
        serde_json::from_str(annotation).ok()
    }

    /// Why the annotation cannot be the controller's own record, if it cannot. A tenant may
    /// write annotations (the `edit` role) but not the status, and this is the one record the
    /// controller acts on that is not in the status: its time bounds how long a deletion keeps
    /// searching AWS for a Create in flight (every few seconds; a time years ahead would keep it
    /// searching for years), its region is where calls go. So it is taken only as the controller
    /// writes it: a time not ahead of now, the spec's region when the spec names one (the spec's
    /// region cannot change), a region and an account of the form AWS gives them.
    pub fn distrust(&self, spec_region: Option<&str>, now: jiff::Timestamp) -> Option<Problem> {
        let refused = |why: String, retry: Retry| Problem {
            reason: INTENT_NOT_TRUSTED,
            message: format!(
                "annotation {INTENT_ANNOTATION} is not as the controller writes it ({why}); nothing is created, changed or deleted until it is removed (kubectl annotate ... {INTENT_ANNOTATION}-) or corrected"
            ),
            retry,
        };
        match self.sent_at.parse::<jiff::Timestamp>() {
            Ok(at) if at.duration_since(now) > CLOCK_SKEW => {
                // Backoff, not terminal: a clock that was ahead when it wrote is behind now.
                return Some(refused(
                    // Not naming now: the message, and so the status, would change at each look.
                    format!("its time {} is ahead of now", self.sent_at),
                    Retry::Backoff,
                ));
            }
            // Unreadable: it counts as no time, as a status's would (nothing waits on it).
            _ => {}
        }
        if let Some(spec) = spec_region
            && spec != self.region
        {
            return Some(refused(
                format!("region {:?}, where the spec names {spec:?}", self.region),
                Retry::Terminal,
            ));
        }
        if !is_host_label(&self.region) {
            return Some(refused(
                format!("region {:?} is not a region's name", self.region),
                Retry::Terminal,
            ));
        }
        if !patterns::is_account_id(&self.account) {
            return Some(refused(
                format!("account {:?} is not an account id", self.account),
                Retry::Terminal,
            ));
        }
        None
    }

    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Writes the intent into a status that has no connection recorded: the pins where the
    /// status has none, and the later of the two times a Create may have been sent.
    pub fn apply(&self, status: &mut Status) {
        if status.id.is_some() {
            return;
        }
        status.region.get_or_insert_with(|| self.region.clone());
        status
            .environment_account_id
            .get_or_insert_with(|| self.account.clone());
        let later = match &status.create_sent_at {
            Some(t) => later_of(t, &self.sent_at),
            None => self.sent_at.clone(),
        };
        status.create_sent_at = Some(later);
    }
}

/// Whether `s` can be a region's name: one DNS label (it is part of the endpoint's host name),
/// lowercase. Looser than the CRD's `patterns::REGION`: the controller's own default region
/// (`--region`, `AWS_REGION`) is not held to that, and an intent it wrote must pass.
fn is_host_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && !s.ends_with('-')
}

fn later_of(a: &str, b: &str) -> String {
    match (a.parse::<jiff::Timestamp>(), b.parse::<jiff::Timestamp>()) {
        (Ok(x), Ok(y)) if y > x => b.to_string(),
        (Err(_), Ok(_)) => b.to_string(),
        _ => a.to_string(),
    }
}

/// Kept per resource while it is in the watch cache (dropped when it leaves, or when this
/// controller loses the lease).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Memory {
    /// The last status this controller wrote successfully, until the watch cache shows it.
    pub written: Option<Written>,
    /// The status of a reconcile whose write failed.
    pub unwritten: Option<Box<Status>>,
    /// The intent annotation this controller removed as obsolete, until the watch shows it
    /// gone: a copy from before the removal (its status write's, say) still carries it, and
    /// taking it would put back the record of Creates that the status dropped.
    pub dropped_intent: Option<String>,
}

/// A status write the watch cache may not show yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// The resourceVersion the write made: the watch shows the write with the copy of this
    /// version, before any later one.
    pub version: Option<String>,
    /// The status's hash, to tell a status equal to the one written (see [`status_hash`]).
    pub hash: u64,
    /// How many lists the API server had answered the watch when it was written: one made
    /// after a relist was answered comes after the relist's copy, and is not forgotten at its
    /// end (one made before may have been skipped by it).
    pub during_list: u64,
}

impl Written {
    pub fn new(status: &Status, version: Option<String>) -> Written {
        Written {
            version,
            hash: status_hash(status),
            during_list: 0,
        }
    }

    /// Written when the watch's list `during_list` (counted from 1) was the latest answered.
    pub fn during_list(mut self, during_list: u64) -> Written {
        self.during_list = during_list;
        self
    }

    /// Whether `status` is the one written (all but surely: by its hash).
    pub fn is(&self, status: &Status) -> bool {
        self.hash == status_hash(status)
    }
}

/// A hash of everything a status says, as it would be written: two statuses hash alike if and
/// only if they serialize alike (all but surely), whatever fields the status gains later.
pub fn status_hash(status: &Status) -> u64 {
    let mut h = DefaultHasher::new();
    serde_json::to_vec(status).unwrap_or_default().hash(&mut h);
    h.finish()
}

impl Memory {
    /// Forgets what the cached copy (its status, and its resourceVersion) has caught up with.
    /// Returns whether anything is left.
    pub fn catch_up(&mut self, stored: Option<&Status>, version: Option<&str>) -> bool {
        if let Some(w) = &self.written
            && ((version.is_some() && w.version.as_deref() == version)
                || stored.is_some_and(|s| w.is(s)))
        {
            self.written = None;
        }
        if let Some(u) = &self.unwritten
            && (u.id.is_none() || stored.and_then(|s| s.id.as_ref()) == u.id.as_ref())
        {
            self.unwritten = None;
        }
        self.written.is_some() || self.unwritten.is_some()
    }

    /// The intent annotation to take from a cached copy: none while it is the one this
    /// controller removed (the copy is from before the removal). Once a copy shows it gone, or
    /// another, the memory of the removal goes; but not while the cache is behind this
    /// controller's status write (call after [`Memory::catch_up`]): a copy older than that write
    /// may lack the annotation only because the cache strips it while a connection is recorded.
    pub fn intent_to_take<'a>(&mut self, annotation: Option<&'a str>) -> Option<&'a str> {
        if self.dropped_intent.is_some() && self.dropped_intent.as_deref() == annotation {
            return None;
        }
        if self.written.is_none() {
            self.dropped_intent = None;
        }
        annotation
    }

    /// This controller wrote an intent annotation (with the finalizer): it is never one to
    /// ignore, even if equal to one it removed before.
    pub fn intent_written(&mut self) {
        self.dropped_intent = None;
    }
}

/// The status to reconcile from: the cached one (a reconcile starts only once the cache shows
/// this controller's last write, see [`Memory::written`]), plus the intent to create written
/// with the finalizer, plus the connection a reconcile learned about but could not record.
pub fn effective_status(
    stored: Option<&Status>,
    intent: Option<&Intent>,
    memory: &Memory,
) -> Status {
    let mut status = stored.cloned().unwrap_or_default();
    if let Some(intent) = intent {
        intent.apply(&mut status);
    }
    if let Some(learned) = &memory.unwritten
        && learned.id.is_some()
        && learned.id != status.id
    {
        status.id = learned.id.clone();
        status.arn = learned.arn.clone();
        status.status = learned.status;
        status.region = learned.region.clone();
        status.environment_account_id = learned.environment_account_id.clone();
        status.requested_at = learned.requested_at.clone();
        status.last_modified_at = learned.last_modified_at.clone();
        status.role_arn = learned.role_arn.clone();
        status.codebuild_role_arn = learned.codebuild_role_arn.clone();
        status.component_role_arn = learned.component_role_arn.clone();
        status.recreations = learned.recreations;
        for key in &learned.applied_tag_keys {
            if !status.applied_tag_keys.contains(key) {
                status.applied_tag_keys.push(key.clone());
            }
        }
        status.applied_tag_keys.sort();
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_intent_this_controller_removed_is_not_taken_from_a_copy_from_before_the_removal() {
        let mut memory = Memory::default();
        assert_eq!(memory.intent_to_take(Some("a")), Some("a"));
        memory.dropped_intent = Some("a".into());
        // Copies from before the removal (the status write's) still carry it.
        assert_eq!(memory.intent_to_take(Some("a")), None);
        assert_eq!(memory.intent_to_take(Some("a")), None);
        // Once a copy shows it gone, the memory goes; an intent written again later counts.
        assert_eq!(memory.intent_to_take(None), None);
        assert_eq!(memory.dropped_intent, None);
        assert_eq!(memory.intent_to_take(Some("a")), Some("a"));
        // Another value is not the one removed.
        memory.dropped_intent = Some("a".into());
        assert_eq!(memory.intent_to_take(Some("b")), Some("b"));
        assert_eq!(memory.dropped_intent, None);
        // A copy older than this controller's status write (the cache strips the annotation
        // while a connection is recorded) does not make it forget.
        memory.dropped_intent = Some("a".into());
        memory.written = Some(Written::new(&Status::default(), Some("7".into())));
        assert_eq!(memory.intent_to_take(None), None);
        assert_eq!(memory.intent_to_take(Some("a")), None);
        memory.written = None;
        // An intent this controller writes again is taken, whatever its value.
        memory.intent_written();
        assert_eq!(memory.intent_to_take(Some("a")), Some("a"));
    }

    fn intent(region: &str, account: &str, sent_at: &str) -> Intent {
        Intent {
            region: region.into(),
            account: account.into(),
            sent_at: sent_at.into(),
        }
    }

    /// The intent is the one record of the controller's a tenant can write: it is taken only as
    /// the controller writes it.
    #[test]
    fn an_intent_is_taken_only_as_the_controller_writes_it() {
        let now: jiff::Timestamp = "2026-12-07T12:00:00Z".parse().unwrap();
        let account = "111122223333";
        let trusted = [
            (intent("eu-west-1", account, "2026-12-07T11:59:00Z"), None),
            (
                intent("eu-west-1", account, "2026-12-07T11:59:00Z"),
                Some("eu-west-1"),
            ),
            (
                intent("us-gov-west-1", account, "2026-12-07T12:00:00Z"),
                None,
            ),
            // A replica whose clock is a little ahead wrote it.
            (intent("eu-west-1", account, "2026-12-07T12:04:59Z"), None),
            // Long past: the window it opens is over.
            (intent("eu-west-1", account, "2020-01-01T00:00:00Z"), None),
            // Unreadable: counts as no time.
            (intent("eu-west-1", account, "soon"), None),
        ];
        for (i, spec_region) in &trusted {
            assert_eq!(i.distrust(*spec_region, now), None, "{i:?} {spec_region:?}");
        }
        let refused = [
            (
                intent("eu-west-1", account, "9999-01-01T00:00:00Z"),
                None,
                "ahead of now",
                Retry::Backoff,
            ),
            (
                intent("eu-west-1", account, "2026-12-07T12:05:01Z"),
                None,
                "ahead of now",
                Retry::Backoff,
            ),
            (
                intent("us-east-1", account, "2026-12-07T11:59:00Z"),
                Some("eu-west-1"),
                "where the spec names",
                Retry::Terminal,
            ),
            (
                intent("evil.example.com", account, "2026-12-07T11:59:00Z"),
                None,
                "not a region",
                Retry::Terminal,
            ),
            (
                intent("eu-west-1/x", account, "2026-12-07T11:59:00Z"),
                None,
                "not a region",
                Retry::Terminal,
            ),
            (
                intent("eu-west-1", "1111", "2026-12-07T11:59:00Z"),
                None,
                "not an account",
                Retry::Terminal,
            ),
        ];
        for (i, spec_region, why, retry) in &refused {
            let problem = i
                .distrust(*spec_region, now)
                .unwrap_or_else(|| panic!("{i:?} taken"));
            assert_eq!(problem.reason, "IntentNotTrusted");
            assert!(problem.message.contains(why), "{}", problem.message);
            assert!(problem.message.contains(INTENT_ANNOTATION));
            assert_eq!(problem.retry, *retry, "{i:?}");
        }
    }

    #[test]
    fn a_region_is_one_lowercase_host_label() {
        for ok in [
            "eu-west-1",
            "us-gov-west-1",
            "il-central-1",
            "eusc-de-east-1",
            "local",
        ] {
            assert!(is_host_label(ok), "{ok}");
        }
        for bad in [
            "",
            "EU-west-1",
            "eu-west-1.evil.com",
            "eu-west-1-",
            "-eu",
            "1eu",
            "eu_west",
            "a/b",
        ] {
            assert!(!is_host_label(bad), "{bad}");
        }
        assert!(!is_host_label(&"a".repeat(64)));
    }
}
