//! The AWS call budget shared by every worker, served by class.
//!
//! - **Work** (mutations, and the first observation of a new, changed or deleted resource) goes
//!   first: it books the next slot of the whole budget.
//! - **Poll** (reading a PENDING connection) uses at most `poll_share` of the budget, on a
//!   timeline of its own; when more polls are wanted than that share allows, they are booked
//!   further out, so the effective poll interval stretches instead of delaying work. A poll
//!   takes a slot of the whole budget only if one is free at once: polls never queue ahead of
//!   work.
//! - **Resync** (reading a settled connection) goes only where polls leave the share idle: it
//!   never books ahead, it is told to come back later.
//!
//! Nobody waits while holding a worker: a slot more than a moment away is *booked* for the
//! caller, who ends its reconcile and comes back then (the booking is kept under the caller's
//! key). After a ThrottlingException every caller pauses for a second, so a throttled account
//! backs off as a whole.
//!
//! A step of several calls (a search: a List, then the tags of each connection listed; a List of
//! several pages) that is told to come back after some of them repeats them when it does. So the
//! step's calls after its first go as work, whatever its class (the first was admitted in it),
//! and a booking covers the calls the step already made as well as the one refused, and comes
//! back with them paid for ([`Admission::Prepaid`]): each attempt gets further, where a booking
//! of one slot would be spent on the step's first call again every time, for as long as others
//! kept the budget (or the poll share) full.
//!
//! Time is passed in, so the rules are tested without a clock.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// How long every caller pauses after a ThrottlingException.
const THROTTLE_COOLDOWN: Duration = Duration::from_secs(1);
/// A slot at most this far away is waited for in place; a later one is booked.
const SHORT_WAIT: Duration = Duration::from_millis(100);
/// A booking not claimed this long after its time is forgotten (the resource went elsewhere).
const STALE_BOOKING: Duration = Duration::from_secs(60);

/// Prefix of a policy's key in the budget (a connection's key is its uid alone).
const POLICY_KEY_PREFIX: &str = "policy/";

/// The budget key of the policy with this uid.
pub fn policy_key(uid: &str) -> String {
    format!("{POLICY_KEY_PREFIX}{uid}")
}

/// Whether a budget key is a policy's (else a connection's).
pub fn is_policy_key(key: &str) -> bool {
    key.starts_with(POLICY_KEY_PREFIX)
}

const PENDING_LIST_KEY_PREFIX: &str = "pending-list/";

/// The budget key of the list of PENDING connections that polls with these credentials in
/// this region share (see `aws::pending`): whichever poll lists next claims its booked slot.
pub fn pending_list_key(identity: &str, region: &str) -> String {
    format!("{PENDING_LIST_KEY_PREFIX}{region}/{identity}")
}

/// Whether a budget key belongs to no one resource (a policy's, or a shared list's).
pub fn is_shared_key(key: &str) -> bool {
    is_policy_key(key) || key.starts_with(PENDING_LIST_KEY_PREFIX)
}

/// Which kind of AWS call, for the order they are served in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CallClass {
    /// Mutations, and first observations of new, changed or deleted resources.
    Work,
    /// Reading a PENDING connection.
    Poll,
    /// Reading a settled (CONNECTED or REJECTED) connection.
    Resync,
}

impl CallClass {
    pub fn as_str(self) -> &'static str {
        match self {
            CallClass::Work => "work",
            CallClass::Poll => "poll",
            CallClass::Resync => "resync",
        }
    }
}

/// What a caller may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Call now.
    Go,
    /// Call now, and this many more calls of the same step are paid for already: the caller's
    /// booking covered the calls its step had made before it was told to come back.
    Prepaid(u32),
    /// A slot is taken for this caller a moment from now: wait that long, then call.
    Wait(Duration),
    /// A slot is booked for this caller at this time: come back then (without holding a worker).
    Later(Instant),
    /// No room for this class now, and nothing booked (resync reads): come back after the
    /// caller's own delay.
    Busy,
}

/// Generic cell rate algorithm: a rate with a burst, as the time of the next free slot.
#[derive(Clone, Debug)]
struct Gcra {
    interval: Duration,
    tolerance: Duration,
    /// Theoretical arrival time of the next call at the steady rate.
    tat: Option<Instant>,
}

impl Gcra {
    fn new(per_second: f64, burst: u32) -> Gcra {
        let interval = Duration::from_secs_f64(1.0 / per_second.max(1e-6));
        Gcra {
            interval,
            tolerance: interval.saturating_mul(burst.max(1) - 1),
            tat: None,
        }
    }

    /// The earliest time a call conforms.
    fn earliest(&self, now: Instant) -> Instant {
        match self.tat {
            Some(tat) => tat.checked_sub(self.tolerance).map_or(now, |t| t.max(now)),
            None => now,
        }
    }

    /// When the calls already booked are through (at the steady rate).
    fn backlog_end(&self, now: Instant) -> Instant {
        self.tat.map_or(now, |t| t.max(now))
    }

    /// Takes the earliest slot at or after `now`, and says when it is.
    fn reserve(&mut self, now: Instant) -> Instant {
        let at = self.earliest(now);
        self.tat = Some(self.tat.unwrap_or(at).max(at) + self.interval);
        at
    }

    /// Takes a slot only if one is free now; else says when the next one is.
    fn take_now(&mut self, now: Instant) -> Result<(), Instant> {
        let at = self.earliest(now);
        if at <= now {
            self.tat = Some(self.tat.unwrap_or(now).max(now) + self.interval);
            Ok(())
        } else {
            Err(at)
        }
    }

    /// Nothing conforms before `until`.
    fn pause_until(&mut self, until: Instant) {
        let floor = until + self.tolerance;
        self.tat = Some(self.tat.map_or(floor, |t| t.max(floor)));
    }
}

/// A slot booked for one caller.
#[derive(Clone, Copy, Debug)]
struct Booking {
    at: Instant,
    /// The slot is on the whole budget's timeline (else only the poll share's is taken, and a
    /// slot of the whole budget is still to be found).
    whole: bool,
    /// How many slots of the whole budget are booked (`at` is the last): the calls of the
    /// caller's step up to the one refused.
    slots: u32,
}

#[derive(Debug)]
struct Limits {
    whole: Gcra,
    share: Gcra,
    booked: HashMap<String, Booking>,
}

#[derive(Clone, Default)]
pub struct CallBudget {
    limits: Option<Arc<Mutex<Limits>>>,
    /// After a ThrottlingException nobody calls before this, with or without limits.
    cooldown: Arc<Mutex<Option<Instant>>>,
}

impl CallBudget {
    /// At most `per_second` calls a second on average, `burst` at once; polls and resync reads
    /// at most `poll_share` (0 to 1) of that.
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32, poll_share: f64) -> Self {
        let rate = f64::from(per_second.get());
        let share = if poll_share.is_finite() {
            poll_share.clamp(0.01, 1.0)
        } else {
            0.5
        };
        // Rounded, but never below one call at a time.
        let share_burst = ((f64::from(burst.get()) * share).round() as u32).max(1);
        CallBudget {
            limits: Some(Arc::new(Mutex::new(Limits {
                whole: Gcra::new(rate, burst.get()),
                share: Gcra::new(rate * share, share_burst),
                booked: HashMap::new(),
            }))),
            cooldown: Arc::default(),
        }
    }

    /// No client-side limit (tests of other behaviour, benchmarks of everything else).
    pub fn unlimited() -> Self {
        CallBudget::default()
    }

    fn lock(&self) -> Option<std::sync::MutexGuard<'_, Limits>> {
        self.limits
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// May the caller known as `key` make a call of `class` at `now`, as the first call of a
    /// step?
    pub fn admit(&self, key: &str, class: CallClass, now: Instant) -> Admission {
        self.admit_in_step(key, class, now, 0)
    }

    /// May the caller known as `key` make a call of `class` at `now`, after `made` calls of the
    /// same step? After the first, a step's calls go as work, and one that must be booked
    /// books those made again with it, so the step they will be repeated in gets through (see
    /// the module's notes).
    pub fn admit_in_step(&self, key: &str, class: CallClass, now: Instant, made: u32) -> Admission {
        let class = if made > 0 { CallClass::Work } else { class };
        let cooldown = *self.cooldown.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(until) = cooldown
            && until > now
        {
            return Admission::Later(until);
        }
        let Some(mut limits) = self.lock() else {
            return Admission::Go;
        };
        let limits = &mut *limits;
        if let Some(booking) = limits.booked.get(key).copied() {
            // A slot booked in the poll share does not hold back the same caller's work (a
            // spec edited, a connection nudged, a deletion): work goes before polls, and the
            // share may be booked a minute ahead. The share's slot is left unused, and the work
            // is admitted as any other.
            if booking.at > now && (booking.whole || class != CallClass::Work) {
                return Admission::Later(booking.at);
            }
            limits.booked.remove(key);
            if booking.at <= now && now.saturating_duration_since(booking.at) < STALE_BOOKING {
                if booking.whole {
                    return match booking.slots {
                        0 | 1 => Admission::Go,
                        n => Admission::Prepaid(n - 1),
                    };
                }
                // The share's slot is taken; the whole budget's is still to be found.
                return whole_for(limits, key, class, now);
            }
        }
        match class {
            CallClass::Work => {
                let at = limits.whole.reserve(now);
                wait_or_book(limits, key, at, made, now)
            }
            CallClass::Poll => {
                let at = limits.share.reserve(now);
                if at.saturating_duration_since(now) > SHORT_WAIT {
                    limits.booked.insert(
                        key.to_string(),
                        Booking {
                            at,
                            whole: false,
                            slots: 0,
                        },
                    );
                    return Admission::Later(at);
                }
                whole_for(limits, key, class, now)
            }
            CallClass::Resync => match limits.share.take_now(now) {
                Ok(()) => whole_for(limits, key, class, now),
                Err(_) => Admission::Busy,
            },
        }
    }

    /// Proton said ThrottlingException: everyone pauses briefly.
    pub fn throttled(&self, now: Instant) {
        let until = now + THROTTLE_COOLDOWN;
        let mut cooldown = self.cooldown.lock().unwrap_or_else(|p| p.into_inner());
        if cooldown.is_none_or(|current| current < until) {
            *cooldown = Some(until);
        }
        drop(cooldown);
        if let Some(mut limits) = self.lock() {
            limits.whole.pause_until(until);
        }
    }

    /// The caller is gone: its booking goes too.
    pub fn forget(&self, key: &str) {
        if let Some(mut limits) = self.lock() {
            limits.booked.remove(key);
        }
    }

    /// Keeps only the bookings of these callers.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        if let Some(mut limits) = self.lock() {
            limits.booked.retain(|k, _| keep(k));
        }
    }

    /// How many bookings are held.
    pub fn bookings(&self) -> usize {
        self.lock().map_or(0, |l| l.booked.len())
    }
}

/// A poll or resync read whose share slot is taken: it takes a slot of the whole budget only if
/// one is free now, so work booked for the coming slots keeps them (strict priority); else it
/// comes back when the next one may be free. A work call books the next slot.
fn whole_for(limits: &mut Limits, key: &str, class: CallClass, now: Instant) -> Admission {
    if class == CallClass::Work {
        let at = limits.whole.reserve(now);
        return wait_or_book(limits, key, at, 0, now);
    }
    match limits.whole.take_now(now) {
        Ok(()) => Admission::Go,
        Err(_) => {
            // Work is booked ahead: come back when that backlog is through, not at every slot
            // it takes.
            let next = limits.whole.backlog_end(now);
            limits.booked.insert(
                key.to_string(),
                Booking {
                    at: next,
                    whole: false,
                    slots: 0,
                },
            );
            Admission::Later(next)
        }
    }
}

/// A work call whose slot of the whole budget is `at`: go, wait a moment, or book it, with a
/// slot for each of the `made` calls its step made before (the last slot is the booking's time).
fn wait_or_book(limits: &mut Limits, key: &str, at: Instant, made: u32, now: Instant) -> Admission {
    let wait = at.saturating_duration_since(now);
    if wait.is_zero() {
        Admission::Go
    } else if wait <= SHORT_WAIT {
        Admission::Wait(wait)
    } else {
        let last = (0..made).fold(at, |_, _| limits.whole.reserve(now));
        limits.booked.insert(
            key.to_string(),
            Booking {
                at: last,
                whole: true,
                slots: made.saturating_add(1),
            },
        );
        Admission::Later(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(rate: u32, burst: u32, share: f64) -> CallBudget {
        CallBudget::new(
            NonZeroU32::new(rate).unwrap(),
            NonZeroU32::new(burst).unwrap(),
            share,
        )
    }

    /// Admits `key` again and again as time allows, like a caller that comes back when told;
    /// returns when each call went.
    fn run_until_go(b: &CallBudget, key: &str, class: CallClass, mut now: Instant) -> Instant {
        for _ in 0..1000 {
            match b.admit(key, class, now) {
                Admission::Go | Admission::Prepaid(_) => return now,
                Admission::Wait(d) => return now + d,
                Admission::Later(at) => now = at,
                Admission::Busy => now += Duration::from_millis(500),
            }
        }
        panic!("never admitted");
    }

    #[test]
    fn work_gets_the_burst_then_the_rate() {
        let b = budget(10, 5, 0.5);
        let t0 = Instant::now();
        let mut went = vec![];
        for i in 0..25 {
            went.push(run_until_go(&b, &format!("r{i}"), CallClass::Work, t0));
        }
        let in_first_second = went
            .iter()
            .filter(|t| **t < t0 + Duration::from_secs(1))
            .count();
        // The burst of 5 at once, then one every 100 ms: 5 + 9 before the second is over.
        assert_eq!(in_first_second, 5 + 9);
        let last = *went.last().unwrap();
        assert!(last >= t0 + Duration::from_millis(1_900), "{:?}", last - t0);
    }

    #[test]
    fn polls_use_at_most_their_share_and_are_booked_further_out() {
        let b = budget(10, 2, 0.5);
        let t0 = Instant::now();
        // 60 PENDING connections want a poll at once: 5/s at most.
        let went: Vec<Instant> = (0..60)
            .map(|i| run_until_go(&b, &format!("p{i}"), CallClass::Poll, t0))
            .collect();
        let last = went.iter().max().unwrap().duration_since(t0);
        assert!(
            last >= Duration::from_secs(11) && last <= Duration::from_secs(13),
            "60 polls at 5/s take about 12 s: {last:?}"
        );
        for second in 0..12u64 {
            let start = t0 + Duration::from_secs(second);
            let n = went
                .iter()
                .filter(|t| **t >= start && **t < start + Duration::from_secs(1))
                .count();
            assert!(n <= 6, "second {second}: {n} polls (share 5/s, burst 1)");
        }
    }

    #[test]
    fn work_keeps_its_pace_while_polls_want_more_than_their_share() {
        let b = budget(4, 1, 0.5);
        let t0 = Instant::now();
        // 20 new resources and 20 PENDING connections polled every second, for 10 s.
        let mut work_due: Vec<Option<Instant>> = (0..20).map(|_| Some(t0)).collect();
        let mut poll_due: Vec<Instant> = (0..20).map(|_| t0).collect();
        let mut done = vec![];
        let mut now = t0;
        while now < t0 + Duration::from_secs(10) {
            for (i, due) in work_due.iter_mut().enumerate() {
                if let Some(at) = *due
                    && at <= now
                {
                    match b.admit(&format!("w{i}"), CallClass::Work, now) {
                        Admission::Go | Admission::Prepaid(_) => {
                            done.push(now);
                            *due = None;
                        }
                        Admission::Wait(d) => {
                            done.push(now + d);
                            *due = None;
                        }
                        Admission::Later(t) => *due = Some(t),
                        Admission::Busy => unreachable!(),
                    }
                }
            }
            for (i, due) in poll_due.iter_mut().enumerate() {
                if *due <= now {
                    *due = match b.admit(&format!("p{i}"), CallClass::Poll, now) {
                        Admission::Go | Admission::Prepaid(_) => now + Duration::from_secs(1),
                        Admission::Wait(d) => now + d + Duration::from_secs(1),
                        Admission::Later(t) => t,
                        Admission::Busy => now + Duration::from_secs(1),
                    };
                }
            }
            now += Duration::from_millis(10);
        }
        assert_eq!(done.len(), 20);
        let last = done.iter().max().unwrap().duration_since(t0);
        // 20 calls at 4/s: the last one 4.75 s in, polls or not.
        assert!(last <= Duration::from_millis(5_000), "{last:?}");
    }

    #[test]
    fn work_is_not_delayed_by_polls_booked_ahead() {
        let b = budget(10, 2, 0.5);
        let t0 = Instant::now();
        // 300 polls book the share's timeline a minute ahead...
        for i in 0..300 {
            let _ = b.admit(&format!("p{i}"), CallClass::Poll, t0);
        }
        // ...and ten new resources still go within a second or two.
        let went: Vec<Instant> = (0..10)
            .map(|i| run_until_go(&b, &format!("w{i}"), CallClass::Work, t0))
            .collect();
        let last = went.iter().max().unwrap().duration_since(t0);
        assert!(last <= Duration::from_millis(1_000), "{last:?}");
    }

    /// The same caller's poll, booked a minute ahead in a busy share, does not hold back its
    /// work (a policy edited to accept a request, a connection's spec changed).
    #[test]
    fn a_callers_work_is_not_held_back_by_its_own_poll_booked_ahead() {
        let b = budget(10, 2, 0.5);
        let t0 = Instant::now();
        for i in 0..300 {
            let _ = b.admit(&format!("p{i}"), CallClass::Poll, t0);
        }
        let booked = match b.admit("policy", CallClass::Poll, t0) {
            Admission::Later(at) => at,
            other => panic!("the share is full: {other:?}"),
        };
        assert!(
            booked.duration_since(t0) > Duration::from_secs(30),
            "{booked:?}"
        );
        let went = run_until_go(&b, "policy", CallClass::Work, t0);
        assert!(
            went.duration_since(t0) <= Duration::from_millis(1_000),
            "{:?}",
            went.duration_since(t0)
        );
        // A booking on the whole budget's timeline is still kept to.
        let b = budget(1, 1, 0.5);
        for i in 0..5 {
            let _ = b.admit(&format!("w{i}"), CallClass::Work, t0);
        }
        let Admission::Later(at) = b.admit("w", CallClass::Work, t0) else {
            panic!("the whole budget is booked");
        };
        assert_eq!(b.admit("w", CallClass::Work, t0), Admission::Later(at));
    }

    #[test]
    fn a_poll_whose_share_slot_came_does_not_take_a_slot_work_needs() {
        let b = budget(1, 1, 0.5);
        let t0 = Instant::now();
        // Work books the whole budget for the next few seconds.
        for i in 0..5 {
            let _ = b.admit(&format!("w{i}"), CallClass::Work, t0);
        }
        match b.admit("p", CallClass::Poll, t0) {
            Admission::Later(at) => assert!(at > t0, "the poll waits for work"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn resync_reads_go_only_where_polls_leave_the_share_idle() {
        let b = budget(10, 4, 0.5);
        let t0 = Instant::now();
        assert_eq!(
            b.admit("s0", CallClass::Resync, t0),
            Admission::Go,
            "idle: it goes"
        );
        for i in 0..50 {
            let _ = b.admit(&format!("p{i}"), CallClass::Poll, t0);
        }
        assert_eq!(
            b.admit("s1", CallClass::Resync, t0),
            Admission::Busy,
            "polls queued: resync reads come back later"
        );
        assert_eq!(b.bookings(), 50 - 1, "resync reads book nothing");
    }

    #[test]
    fn a_booking_is_claimed_by_its_caller_and_forgotten_with_it() {
        let b = budget(1, 1, 1.0);
        let t0 = Instant::now();
        assert_eq!(b.admit("a", CallClass::Work, t0), Admission::Go);
        let Admission::Later(at) = b.admit("b", CallClass::Work, t0) else {
            panic!("booked")
        };
        assert_eq!(
            b.admit("b", CallClass::Work, t0),
            Admission::Later(at),
            "still booked"
        );
        assert_eq!(b.admit("b", CallClass::Work, at), Admission::Go, "claimed");
        assert_eq!(b.bookings(), 0);
        let _ = b.admit("c", CallClass::Work, at);
        b.forget("c");
        assert_eq!(b.bookings(), 0);
    }

    #[test]
    fn throttling_pauses_every_caller() {
        let b = budget(100, 10, 0.5);
        let t0 = Instant::now();
        b.throttled(t0);
        match b.admit("a", CallClass::Work, t0) {
            Admission::Later(at) => assert!(at >= t0 + THROTTLE_COOLDOWN),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unlimited_always_goes_except_after_a_throttle() {
        let b = CallBudget::unlimited();
        let t0 = Instant::now();
        for class in [CallClass::Work, CallClass::Poll, CallClass::Resync] {
            assert_eq!(b.admit("x", class, t0), Admission::Go);
        }
        b.throttled(t0);
        assert_eq!(
            b.admit("x", CallClass::Work, t0),
            Admission::Later(t0 + THROTTLE_COOLDOWN)
        );
        assert_eq!(
            b.admit("x", CallClass::Work, t0 + THROTTLE_COOLDOWN),
            Admission::Go
        );
    }
}

#[cfg(test)]
mod simulation {
    use super::*;

    #[test]
    fn each_poll_is_deferred_at_most_once_on_its_way() {
        let b = CallBudget::new(
            NonZeroU32::new(10).unwrap(),
            NonZeroU32::new(20).unwrap(),
            0.5,
        );
        let t0 = Instant::now();
        // 100 PENDING connections, each wanting a poll 2 s after its last one.
        let mut due: Vec<Instant> = (0..100).map(|_| t0).collect();
        let (mut goes, mut laters) = (0u32, 0u32);
        let end = t0 + Duration::from_secs(60);
        loop {
            let (i, at) = due
                .iter()
                .enumerate()
                .min_by_key(|(_, t)| **t)
                .map(|(i, t)| (i, *t))
                .unwrap();
            if at > end {
                break;
            }
            match b.admit(&format!("p{i}"), CallClass::Poll, at) {
                Admission::Go | Admission::Prepaid(_) => {
                    goes += 1;
                    due[i] = at + Duration::from_secs(2);
                }
                Admission::Wait(d) => {
                    goes += 1;
                    due[i] = at + d + Duration::from_secs(2);
                }
                Admission::Later(t) => {
                    laters += 1;
                    due[i] = t;
                }
                Admission::Busy => panic!("polls are booked"),
            }
        }
        println!("{goes} polls, {laters} deferrals in 60 s");
        assert!((290..=330).contains(&goes), "about 5/s: {goes}");
        // Wanting 50 polls/s with room for 5, each poll is booked once (one deferral) on its
        // way, plus the first wave that found the share's burst used up.
        assert!(laters <= goes + 100, "{laters} deferrals for {goes} polls");
    }
}

#[cfg(test)]
mod steps {
    use super::*;

    /// A caller that comes back when told and repeats its step of `calls` calls of `class` from
    /// the first, spending what its booking prepaid as `Proton::admit` does; twenty others want a
    /// call of `others_class` every 2 s each, more than their room. Returns how many attempts
    /// the step took (None: not done in a minute).
    fn attempts_for_a_step(
        calls: u32,
        class: CallClass,
        others_class: CallClass,
        b: &CallBudget,
    ) -> Option<u32> {
        let t0 = Instant::now();
        let mut others: Vec<Instant> = (0..20).map(|_| t0).collect();
        let mut step_at = t0 + Duration::from_millis(50);
        let end = t0 + Duration::from_secs(60);
        let mut attempts = 0;
        loop {
            // Every other caller due before the step's next attempt goes (or books) first.
            while let Some((i, at)) = others
                .iter()
                .copied()
                .enumerate()
                .filter(|(_, t)| *t <= step_at)
                .min_by_key(|(_, t)| *t)
            {
                others[i] = match b.admit(&format!("w{i}"), others_class, at) {
                    Admission::Go | Admission::Prepaid(_) => at + Duration::from_secs(2),
                    Admission::Wait(d) => at + d + Duration::from_secs(2),
                    Admission::Later(t) => t,
                    Admission::Busy => at + Duration::from_secs(1),
                };
            }
            if step_at > end {
                return None;
            }
            attempts += 1;
            let (mut made, mut prepaid) = (0, 0);
            let mut next = None;
            while made < calls {
                if prepaid > 0 {
                    prepaid -= 1;
                    made += 1;
                    continue;
                }
                match b.admit_in_step("step", class, step_at, made) {
                    Admission::Go | Admission::Wait(_) => made += 1,
                    Admission::Prepaid(n) => {
                        prepaid = n;
                        made += 1;
                    }
                    Admission::Later(at) => {
                        next = Some(at);
                        break;
                    }
                    // Only a resync read's first call is told Busy; it is not one.
                    Admission::Busy => return None,
                }
            }
            match next {
                None => return Some(attempts),
                Some(at) => step_at = at,
            }
        }
    }

    /// Twenty resources want a call each every 2 s (10/s) of a budget of 5/s, so work is always
    /// booked ahead. A search (a List, then the tags of each of two connections listed) must
    /// still get through: each time it comes back its booking covers the calls it repeats, so
    /// each call is deferred at most once.
    /// With a booking of one slot, its first call took the slot every time and the next was
    /// booked again behind the others, for as long as they kept coming.
    #[test]
    fn a_step_of_several_calls_gets_through_a_budget_other_work_keeps_full() {
        for calls in 1..=3 {
            let b = CallBudget::new(
                NonZeroU32::new(5).unwrap(),
                NonZeroU32::new(5).unwrap(),
                0.5,
            );
            let attempts = attempts_for_a_step(calls, CallClass::Work, CallClass::Work, &b);
            assert!(
                attempts.is_some_and(|n| n <= calls + 1),
                "a step of {calls} calls: {attempts:?} attempts"
            );
        }
    }

    /// A policy's routine List of PENDING requests is a poll, and has a page for each 100
    /// requests. With the poll share kept full by the PENDING connections' polls (10/s wanted,
    /// 5/s of share at the default budget of 10/s), its second page was booked on the share
    /// alone, and the List started again from its first page each time: a management account
    /// with more than 100 requests was never listed whole.
    #[test]
    fn a_poll_of_several_pages_gets_through_a_poll_share_other_polls_keep_full() {
        for pages in 1..=3 {
            let b = CallBudget::new(
                NonZeroU32::new(10).unwrap(),
                NonZeroU32::new(20).unwrap(),
                0.5,
            );
            let attempts = attempts_for_a_step(pages, CallClass::Poll, CallClass::Poll, &b);
            assert!(
                attempts.is_some_and(|n| n <= pages + 1),
                "a list of {pages} pages: {attempts:?} attempts"
            );
        }
    }
}
