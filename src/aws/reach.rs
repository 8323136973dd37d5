//! Whether Proton answers in each region, and when it answers again after an outage.
//!
//! A call that got no answer (refused, reset or timed out, a connection closed before or during
//! the answer, or a gateway's 502, 503 or 504) marks its region away; STS, which a call may need
//! first (the caller's account, a mapped role's credentials), is kept as one more region,
//! [`STS`]. While a region is away it is probed (see `Proton::probe_while_away`: every
//! [`PROBE_EVERY`], every [`PROBE_LATER`] once the outage is [`PROBE_SLOWER_AFTER`] old), and
//! the first answer there, to a probe or to any call, ends the outage. A region no call has found
//! away for [`FORGOTTEN_AFTER`] is forgotten (a region a spec named once, that has no endpoint).
//! While a Proton region is away, one call at a time goes there ([`Reach::trial`]); the others
//! fail at once, unsent, as the outage's.
//!
//! The end of an outage of [`OUTAGE`] or longer is told to whoever watches [`Reach::returns`]:
//! the controllers then try at once what the outage stopped (see `reconciler::after_outage`).
//! Without it each resource would wait out a backoff that grew through the outage: up to five
//! minutes. A call sent before the end of an outage that fails after it (it waited for an
//! answer that never came) was the outage's: it starts no new outage. Its reconcile began
//! before the return was told, so the tracker makes its resource due as soon as it ends
//! (`reconciler::tracked`'s `Guard::failed`): nothing here needs to tell the return again.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use aws_sdk_proton::error::{ProvideErrorMetadata, SdkError};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info};

use crate::aws::error::{Heard, ProtonError};
use crate::metrics::Metrics;

/// Where STS is kept among the regions: the controller asks one STS endpoint (GetCallerIdentity,
/// AssumeRole for a mapped role), whatever the region of the call that needs it.
pub const STS: &str = "STS";

/// How often a region that does not answer is probed.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);

/// How long a probe may take: one that gets no answer (a connection that cannot be made) is
/// given up, and the next is made on time.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the warning that a region does not answer may be repeated: an endpoint that
/// flaps starts an outage every few seconds.
pub const WARN_AGAIN_AFTER: Duration = Duration::from_secs(300);

/// How often a region is probed once its outage is [`PROBE_SLOWER_AFTER`] old.
pub const PROBE_LATER: Duration = Duration::from_secs(30);

/// How old an outage is before its region is probed every [`PROBE_LATER`] only.
pub const PROBE_SLOWER_AFTER: Duration = Duration::from_secs(300);

/// A region no call (probes aside) has found away for this long is no longer probed: no resource
/// uses it (a resource backs off to 5 minutes at most, 6 with jitter).
pub const FORGOTTEN_AFTER: Duration = Duration::from_secs(900);

/// An outage shorter than this grew no backoff worth cutting short (a failure waits a second,
/// then two, then four): its end is not told, as for the API server (`http::OUTAGE`).
pub const OUTAGE: Duration = Duration::from_secs(5);

/// A region that does not answer: since when, and what failed.
#[derive(Clone, Debug)]
pub struct Unreached {
    pub since: Instant,
    /// The last call (not a probe) nothing answered.
    pub last_tried: Instant,
    /// The first failure, for the warning.
    pub error: String,
    /// A call (not a probe) sent there since this outage began is still waiting for its answer
    /// (see [`Reach::trial`]).
    pub trying: bool,
}

impl Unreached {
    /// Whether it is time to probe again, the last probe made at `probed`.
    pub fn probe_due(&self, probed: Instant, now: Instant) -> bool {
        let every = if now.duration_since(self.since) >= PROBE_SLOWER_AFTER {
            PROBE_LATER
        } else {
            PROBE_EVERY
        };
        now.duration_since(probed) >= every
    }
}

/// [`ProtonError::unreached`], worded for STS when it is STS that does not answer.
fn not_sent(operation: &'static str, region: &str) -> ProtonError {
    let mut unsent = ProtonError::unreached(operation, region);
    if region == STS {
        unsent.message =
            "not sent: STS does not answer; one call at a time goes there until it answers again"
                .into();
    }
    unsent
}

/// The service a region's calls go to, for the log.
pub fn service(region: &str) -> &'static str {
    if region == STS { "STS" } else { "Proton" }
}

/// The one call let through to a region that does not answer (see [`Reach::trial`]); the next
/// may go once it is dropped. Nothing to give back for a region that answers.
pub struct Trial<'a> {
    reach: &'a Reach,
    /// The region, and when the outage it was let through in began.
    held: Option<(String, Instant)>,
}

impl std::fmt::Debug for Trial<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trial").field("held", &self.held).finish()
    }
}

impl<'a> Trial<'a> {
    fn none(reach: &'a Reach) -> Self {
        Trial { reach, held: None }
    }
}

impl Drop for Trial<'_> {
    fn drop(&mut self) {
        if let Some((region, since)) = self.held.take() {
            self.reach.trial_over(&region, since);
        }
    }
}

/// When a region's outages ended.
#[derive(Clone, Copy, Debug)]
struct Ended {
    /// The last one.
    at: Instant,
    /// The last one long enough to be told (see [`OUTAGE`]).
    told: Option<Instant>,
}

/// The regions that do not answer, and Proton's returns. Shared by every clone of the port.
pub struct Reach {
    metrics: Metrics,
    away: watch::Sender<HashMap<String, Unreached>>,
    /// When each region's last outage ended. Locked before `away` is changed, by both
    /// [`Reach::answered`] and [`Reach::unanswered`]: a call that fails as its region answers
    /// again is either before the end (ended with it) or after it (stale), never both.
    ended: Mutex<HashMap<String, Ended>>,
    returns: watch::Sender<u64>,
}

impl Default for Reach {
    fn default() -> Self {
        Reach::new(Metrics::new())
    }
}

impl Reach {
    /// `metrics`: where `eac_aws_unreachable` is set.
    pub fn new(metrics: Metrics) -> Self {
        Reach {
            metrics,
            away: watch::channel(HashMap::new()).0,
            ended: Mutex::default(),
            returns: watch::channel(0).0,
        }
    }

    /// Makes `call`, the SDK call of `operation` in `region` (STS: [`STS`]), and records what its
    /// outcome says of the region's reach (`probe`: a probe's, which ends an outage but starts or
    /// prolongs none); returns it with the controller's error.
    pub async fn observed<T, E>(
        &self,
        region: &str,
        operation: &'static str,
        probe: bool,
        call: impl std::future::Future<
            Output = Result<T, SdkError<E, aws_smithy_runtime_api::http::Response>>,
        >,
    ) -> Result<T, ProtonError>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let sent = Instant::now();
        match call.await {
            Ok(answer) => {
                self.answered(region);
                Ok(answer)
            }
            Err(failure) => {
                let (e, heard) = ProtonError::from_sdk(operation, failure);
                self.record(heard, region, sent, probe, &e);
                Err(e)
            }
        }
    }

    /// Whether a call of `operation` may go to `region` now: always while the region answers;
    /// while it does not, one call at a time (the [`Trial`] held until its answer, or its
    /// failure, is in), the others answered [`ProtonError::unreached`] at once. A region that
    /// drops packets holds each call for the whole call timeout: without this, every worker
    /// whose resource is due there would wait on one, and resources of the regions that answer,
    /// or with nothing to ask AWS, would wait for a worker. The trial still lets a call end the
    /// outage as soon as the region answers, as the probes do.
    pub fn trial(&self, region: &str, operation: &'static str) -> Result<Trial<'_>, ProtonError> {
        // Every call begins here: a read lock while nothing is away.
        if !self.is_away(region) {
            return Ok(Trial::none(self));
        }
        let mut outcome = Ok(Trial::none(self));
        // Not a change the prober waits for: nobody is told.
        self.away.send_if_modified(|away| {
            if let Some(unreached) = away.get_mut(region) {
                outcome = if unreached.trying {
                    Err(not_sent(operation, region))
                } else {
                    unreached.trying = true;
                    Ok(Trial {
                        reach: self,
                        held: Some((region.to_string(), unreached.since)),
                    })
                };
            }
            false
        });
        outcome
    }

    /// What [`Reach::trial`] would answer a call of `operation` in `region` now, without taking
    /// the trial (the region does not answer, and the one call let through there waits for its
    /// answer): for the work a call needs before it is sent (a shared list's lock), not done
    /// for a call that would not be sent. The trial may end meanwhile: the call still asks for
    /// it.
    pub fn refusing(&self, region: &str, operation: &'static str) -> Option<ProtonError> {
        self.away
            .borrow()
            .get(region)
            .is_some_and(|unreached| unreached.trying)
            .then(|| not_sent(operation, region))
    }

    /// Whether `trial` is the turn of `region`'s outage now: a call its holder makes there goes
    /// without asking again. Not for a trial taken while the region answered, nor one from an
    /// outage over since (the call asks for the new one's turn).
    pub fn holds(&self, trial: &Trial<'_>, region: &str) -> bool {
        let Some((held, since)) = &trial.held else {
            return false;
        };
        held == region
            && self
                .away
                .borrow()
                .get(region)
                .is_some_and(|unreached| unreached.trying && unreached.since == *since)
    }

    /// Whether `region` does not answer now.
    pub fn is_away(&self, region: &str) -> bool {
        self.away.borrow().contains_key(region)
    }

    /// The trial of `region`'s outage that began at `since` is over.
    fn trial_over(&self, region: &str, since: Instant) {
        self.away.send_if_modified(|away| {
            if let Some(unreached) = away.get_mut(region)
                && unreached.since == since
            {
                unreached.trying = false;
            }
            false
        });
    }

    /// Records what `heard` says of a call in `region` sent at `sent` (`error`: why it failed,
    /// for the warning; `probe`: see [`Reach::observed`]).
    fn record(
        &self,
        heard: Heard,
        region: &str,
        sent: Instant,
        probe: bool,
        error: &dyn std::fmt::Display,
    ) {
        match heard {
            Heard::Answered => self.answered(region),
            Heard::Unanswered if !probe => self.unanswered(region, sent, error),
            Heard::Unanswered | Heard::NotSent => {}
        }
    }

    /// `region` answered: ends its outage, if it had one.
    fn answered(&self, region: &str) {
        // Every call ends here: a read lock while nothing is away.
        if !self.away.borrow().contains_key(region) {
            return;
        }
        let mut ended = self.ended_at();
        let mut unreached = None;
        self.away.send_if_modified(|away| {
            unreached = away.remove(region);
            unreached.is_some()
        });
        let Some(unreached) = unreached else { return };
        let now = Instant::now();
        let lasted = now.duration_since(unreached.since);
        let told = lasted >= OUTAGE;
        let told_before = ended.get(region).and_then(|e| e.told);
        let end = Ended {
            at: now,
            told: told.then_some(now).or(told_before),
        };
        ended.insert(region.to_string(), end);
        // Under the lock: a failure recorded at the same moment sets it after, not before.
        self.metrics.set_aws_unreachable(region, false);
        drop(ended);
        if told {
            info!(
                %region,
                outage_secs = lasted.as_secs_f64(),
                "{} answers again",
                service(region)
            );
            self.tell_return();
        } else {
            debug!(%region, outage_secs = lasted.as_secs_f64(), "{} answers again", service(region));
        }
    }

    /// Nothing answered a call sent to `region` at `sent`: marks the region away, if it was not
    /// and the call was sent after its last outage ended.
    fn unanswered(&self, region: &str, sent: Instant, error: &dyn std::fmt::Display) {
        let ended = self.ended_at();
        if ended.get(region).is_some_and(|e| e.at > sent) {
            // The outage's own failure: a new outage would start now, and the next answer end it
            // (too soon to be told) while the resources it stopped waited.
            debug!(%region, %error, "a call sent before {}'s return failed after it", service(region));
            return;
        }
        let now = Instant::now();
        let newly = self.away.send_if_modified(|away| {
            if let Some(unreached) = away.get_mut(region) {
                unreached.last_tried = now;
                return false;
            }
            away.insert(
                region.to_string(),
                Unreached {
                    since: now,
                    last_tried: now,
                    error: error.to_string(),
                    trying: false,
                },
            );
            true
        });
        if newly {
            self.metrics.set_aws_unreachable(region, true);
        }
        drop(ended);
        if newly {
            // Warned by whoever probes, once the outage lasts (the controller; not `check`,
            // which only reports).
            debug!(%region, %error, "{} does not answer", service(region));
        }
    }

    fn tell_return(&self) {
        self.returns.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn ended_at(&self) -> MutexGuard<'_, HashMap<String, Ended>> {
        self.ended.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets the regions no call has found away for [`FORGOTTEN_AFTER`]; returns them.
    pub fn forget_untried(&self) -> Vec<String> {
        let ended = self.ended_at();
        let now = Instant::now();
        let mut forgotten = Vec::new();
        self.away.send_if_modified(|away| {
            away.retain(|region, u| {
                let keep = now.duration_since(u.last_tried) < FORGOTTEN_AFTER;
                if !keep {
                    forgotten.push(region.clone());
                }
                keep
            });
            !forgotten.is_empty()
        });
        for region in &forgotten {
            self.metrics.set_aws_unreachable(region, false);
        }
        drop(ended);
        forgotten
    }

    /// When the last outage long enough to be told ([`OUTAGE`]) ended that a call in `region`
    /// could have met: Proton's there, or (`via_sts`: its credentials are a role's) STS's; the
    /// later of the two.
    pub fn answered_again_at(&self, region: &str, via_sts: bool) -> Option<Instant> {
        let ended = self.ended_at();
        let told = |r: &str| ended.get(r).and_then(|e| e.told);
        told(region).max(if via_sts { told(STS) } else { None })
    }

    /// The regions that do not answer now.
    pub fn away(&self) -> Vec<(String, Unreached)> {
        self.away
            .borrow()
            .iter()
            .map(|(region, away)| (region.clone(), away.clone()))
            .collect()
    }

    /// Returns once some region does not answer.
    pub async fn some_away(&self) {
        let mut away = self.away.subscribe();
        // The sender lives as long as `self`.
        let _ = away.wait_for(|away| !away.is_empty()).await;
    }

    /// Sees Proton answer again after an outage of [`OUTAGE`] or longer, in any region.
    pub fn returns(&self) -> watch::Receiver<u64> {
        self.returns.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::error::ErrorClass;

    fn call(reach: &Reach, heard: Heard, region: &str) {
        reach.record(heard, region, Instant::now(), false, &"refused");
    }

    #[tokio::test(start_paused = true)]
    async fn a_region_that_does_not_answer_gets_one_call_at_a_time_and_every_call_once_it_answers()
    {
        let reach = Reach::default();
        let region = "us-east-1";
        let sent = |trial: &Result<Trial<'_>, ProtonError>| trial.is_ok();
        // Answering: every call goes, and nothing is held for it.
        let (a, b) = (reach.trial(region, "Get"), reach.trial(region, "Get"));
        assert!(sent(&a) && sent(&b));
        assert!(a.as_ref().is_ok_and(|t| t.held.is_none()));
        drop((a, b));

        call(&reach, Heard::Unanswered, region);
        tokio::time::advance(Duration::from_secs(7)).await;
        let first = reach.trial(region, "Get");
        assert!(sent(&first), "one call goes: it may find the region back");
        if let Ok(first) = &first {
            assert!(reach.holds(first, region), "the turn is the first call's");
            assert!(!reach.holds(first, "eu-west-1"), "in its own region only");
        }
        let refused = reach.trial(region, "CreateEnvironmentAccountConnection");
        let e = refused.expect_err("a second call while the first waits is not sent");
        assert!(e.is_unreached(), "{e:?}");
        assert_eq!(e.class, ErrorClass::Unanswered, "a passing fault");
        assert_eq!(e.class.reason(), "AwsUnavailable");
        assert_eq!(e.operation, "CreateEnvironmentAccountConnection");
        assert!(
            e.message.contains("Proton in us-east-1 does not answer"),
            "{}",
            e.message
        );
        let asked = reach
            .refusing(region, "Get")
            .expect("refused without taking the trial");
        assert_eq!(asked, ProtonError::unreached("Get", region));
        assert!(reach.is_away(region) && !reach.is_away("eu-west-1"));
        assert!(
            sent(&reach.trial("eu-west-1", "Get")),
            "each region on its own"
        );
        // Once the first is over (answered or not), the next goes.
        drop(first);
        assert_eq!(
            reach.refusing(region, "Get"),
            None,
            "nothing taken by asking"
        );
        let second = reach.trial(region, "Get");
        assert!(sent(&second));
        assert!(!sent(&reach.trial(region, "Get")));

        // The region answers (a probe): every call goes again. The trial from the outage,
        // over after a new outage began, does not free the new outage's trial.
        reach.answered(region);
        call(&reach, Heard::Unanswered, region);
        let new = reach.trial(region, "Get");
        assert!(sent(&new), "the new outage's trial");
        if let (Ok(old), Ok(current)) = (&second, &new) {
            assert!(
                !reach.holds(old, region),
                "an earlier outage's turn is over"
            );
            assert!(reach.holds(current, region));
        }
        drop(second);
        assert!(
            !sent(&reach.trial(region, "Get")),
            "the old outage's trial ending frees nothing"
        );
        drop(new);
        reach.answered(region);
        let (a, b) = (reach.trial(region, "Get"), reach.trial(region, "Get"));
        let held = a.as_ref().map_err(|_| ()).expect("the region answers");
        assert!(
            !reach.holds(held, region),
            "a trial taken while the region answered is no turn"
        );
        assert!(sent(&a) && sent(&b));
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_end_of_an_outage_of_5_s_or_more_is_told() {
        let metrics = Metrics::new();
        let reach = Reach::new(metrics.clone());
        let mut returns = reach.returns();
        let east = "us-east-1";
        call(&reach, Heard::Unanswered, east);
        tokio::time::advance(OUTAGE - Duration::from_millis(1)).await;
        call(&reach, Heard::Answered, east);
        assert!(reach.away().is_empty());
        assert!(!returns.has_changed().unwrap(), "a passing failure");
        assert_eq!(reach.answered_again_at(east, false), None, "nor is it kept");

        call(&reach, Heard::Unanswered, east);
        tokio::time::advance(Duration::from_secs(3)).await;
        // A second failure does not move the outage's start.
        call(&reach, Heard::Unanswered, east);
        call(&reach, Heard::Unanswered, "eu-west-1");
        tokio::time::advance(Duration::from_secs(2)).await;
        call(&reach, Heard::NotSent, east);
        assert_eq!(
            reach.away().len(),
            2,
            "nothing learned from a call not sent"
        );
        assert!(!returns.has_changed().unwrap());
        call(&reach, Heard::Answered, east);
        assert!(returns.has_changed().unwrap(), "an outage of 5 s");
        returns.mark_unchanged();
        let away = reach.away();
        assert_eq!(away.len(), 1);
        assert_eq!(away[0].0, "eu-west-1", "each region on its own");
        let exported = metrics.encode();
        for series in [
            "eac_aws_unreachable{region=\"eu-west-1\"} 1",
            "eac_aws_unreachable{region=\"us-east-1\"} 0",
        ] {
            assert!(exported.contains(series), "{series} in {exported}");
        }
        call(&reach, Heard::Answered, east);
        assert!(!returns.has_changed().unwrap(), "told once");

        let told = reach.answered_again_at(east, false);
        assert!(told.is_some());
        call(&reach, Heard::Unanswered, east);
        call(&reach, Heard::Answered, east);
        assert_eq!(
            reach.answered_again_at(east, false),
            told,
            "a passing failure since leaves the told end"
        );
        call(&reach, Heard::Unanswered, STS);
        tokio::time::advance(OUTAGE).await;
        call(&reach, Heard::Answered, STS);
        let sts = Some(Instant::now());
        assert_eq!(
            reach.answered_again_at(east, true),
            sts,
            "STS's, for a role"
        );
        assert_eq!(reach.answered_again_at(east, false), told);
    }

    /// A call sent before the return that fails after it (it timed out, say) was the outage's: it
    /// starts no new one (which the next answer would end too soon to be told), and tells
    /// nothing (the tracker makes its resource due: see `Guard::failed`).
    #[tokio::test(start_paused = true)]
    async fn a_call_sent_before_the_return_that_fails_after_it_starts_no_outage() {
        let metrics = Metrics::new();
        let reach = Reach::new(metrics.clone());
        let mut returns = reach.returns();
        let east = "us-east-1";
        call(&reach, Heard::Unanswered, east);
        let sent = Instant::now() + Duration::from_secs(10);
        tokio::time::advance(Duration::from_secs(20)).await;
        call(&reach, Heard::Answered, east);
        assert!(returns.has_changed().unwrap(), "a 20 s outage");
        returns.mark_unchanged();
        let back = Instant::now();
        assert_eq!(reach.answered_again_at(east, false), Some(back));
        assert_eq!(reach.answered_again_at("eu-west-1", true), None);
        reach.record(Heard::Unanswered, east, sent, false, &"timed out");
        assert!(reach.away().is_empty(), "the outage's own failure");
        assert!(!returns.has_changed().unwrap(), "nothing told");
        let gauge = "eac_aws_unreachable{region=\"us-east-1\"} 0";
        assert!(metrics.encode().contains(gauge), "{}", metrics.encode());

        let after = Instant::now();
        call(&reach, Heard::Unanswered, east);
        assert_eq!(
            reach.away().len(),
            1,
            "a call sent after the return starts one"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        reach.record(Heard::Unanswered, east, sent, false, &"timed out");
        let away = reach.away();
        assert_eq!(
            away[0].1.last_tried, after,
            "a stale failure is not a try of the new outage"
        );
        tokio::time::advance(OUTAGE).await;
        call(&reach, Heard::Answered, east);
        assert!(returns.has_changed().unwrap(), "the new outage's end");
        assert!(reach.away().is_empty());
    }

    /// A probe ends an outage, but neither starts one nor counts as a try of the region: a region
    /// no call tries any more is forgotten.
    #[tokio::test(start_paused = true)]
    async fn a_region_no_call_tries_is_forgotten_and_probed_less_often_as_its_outage_ages() {
        let reach = Reach::default();
        let east = "us-east-1";
        reach.record(Heard::Unanswered, east, Instant::now(), true, &"probe");
        assert!(reach.away().is_empty(), "a probe starts no outage");
        call(&reach, Heard::Unanswered, east);
        let started = Instant::now();
        let unreached = reach.away().remove(0).1;
        assert!(!unreached.probe_due(started, started + PROBE_EVERY / 2));
        assert!(unreached.probe_due(started, started + PROBE_EVERY));
        let old = started + PROBE_SLOWER_AFTER;
        assert!(!unreached.probe_due(old, old + PROBE_EVERY));
        assert!(unreached.probe_due(old, old + PROBE_LATER));

        tokio::time::advance(FORGOTTEN_AFTER - Duration::from_secs(1)).await;
        reach.record(Heard::Unanswered, east, Instant::now(), true, &"probe");
        assert!(reach.forget_untried().is_empty(), "tried 899 s ago");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(reach.forget_untried(), vec![east.to_string()]);
        assert!(reach.away().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn some_away_waits_for_a_region_that_does_not_answer() {
        let reach = std::sync::Arc::new(Reach::default());
        let waiting = tokio::spawn({
            let reach = reach.clone();
            async move { reach.some_away().await }
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!waiting.is_finished(), "nothing is away");
        call(&reach, Heard::Unanswered, "us-east-1");
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("woken by the first region away")
            .unwrap();
    }
}
