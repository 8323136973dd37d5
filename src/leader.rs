//! Leader election on a `coordination.k8s.io` Lease, with client-go's semantics.
//!
//! - A candidate takes the Lease when nobody holds it, or when the holder's record has not
//!   changed for `lease_duration` as this candidate observes it (its own clock only: no clock
//!   skew between pods matters). Every write carries the `resourceVersion` it read, so two
//!   candidates cannot both win: the loser gets 409 Conflict.
//! - The leader renews every `retry_period`. If it has not renewed for `renew_deadline`, it stops
//!   leading at once, whatever the reason (API server unreachable, a hung request, 403): since
//!   `renew_deadline < lease_duration`, it has stopped before any other candidate can take over.
//! - The renew deadline counts from when the last successful renewal was *sent*: the API server
//!   may have stored it (and a standby seen it) long before a slow answer came back.
//! - A renewal refused with 409 Conflict (the Lease changed between its read and its write: a
//!   label, an annotation, a GitOps tool applying it) is not a loss: the leader reads it again
//!   at once, and that read says who holds it. Its renew deadline still runs.
//! - A Lease deleted while another candidate held it is not taken at once: the candidate waits
//!   out the holder's duration from when it last saw the holder's record change, as if the
//!   Lease were still there (the holder, which may still be leading, re-creates it first).
//! - It leads again only after it re-acquires the Lease. On shutdown the controllers stop first
//!   (in-flight reconciles finish) while the Lease is still renewed; then it is released so a
//!   standby takes over without waiting for it to expire.
//! - The Lease records whole seconds: a duration with a fraction is rounded up, never down, so
//!   others wait at least as long as this candidate's renew deadline assumes.
//! - Only a candidate that does not lead tells readiness how its Lease calls went: a leader's
//!   readiness is its watch's (a leader whose watch is refused must not look ready because its
//!   Lease renews).
//! - After a try the API server did not answer (unreachable, timed out, 5xx), the next comes after
//!   [`LeaseConfig::retry_after_failure`] instead of `retry_period`: a leader that an API-server
//!   outage stopped takes its Lease back, and starts reconciling again, within half a second of
//!   the server's return rather than up to 2 s later. A refusal (403, 429, ...) keeps
//!   `retry_period`: trying it sooner changes nothing, or adds to an overload. But not while the
//!   server may still be starting ([`crate::api_answers`]): a kube-apiserver that has just
//!   started refuses everyone (403, "informers not synced") until its RBAC caches are filled,
//!   and a leader that waited 2 s after that would lead again 2 s later than it could.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::api_answers::Starting;
use crate::http::Readiness;
use crate::repeated::Repeated;

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a holder's claim lasts without renewal, for the other candidates.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it stops leading.
    pub renew_deadline: Duration,
    /// How often the Lease is tried.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// client-go's retry period (2 s), shortened for short deadlines so several renewals fit.
    pub fn retry_period_for(renew_deadline: Duration) -> Duration {
        (renew_deadline / 4).clamp(Duration::from_millis(100), Duration::from_secs(2))
    }

    /// How long one call of a try (its read, its write) is waited for: half the renew deadline.
    /// A call held on a connection the API server will never answer on (its peer gone without a
    /// reset) then leaves time for another try, on a new connection; a slow server still has
    /// half the deadline for each call.
    pub fn per_request(&self) -> Duration {
        (self.renew_deadline / 2)
            .max(self.retry_period)
            .max(Duration::from_secs(1))
    }

    /// The wait before the next try after one the API server did not answer: a quarter of the
    /// retry period, at most 500 ms.
    pub fn retry_after_failure(&self) -> Duration {
        (self.retry_period / 4).min(Duration::from_millis(500))
    }
}

/// Whether a failed Lease call means the API server did not answer (unreachable, 5xx), rather
/// than that it refused (4xx): only the retry's wait depends on it.
fn unanswered(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code >= 500,
        _ => true,
    }
}

/// How a Lease try went, for the wait before the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tried {
    /// Answered as asked (held, or held by another).
    Answered,
    /// The Lease changed between the read and the write: read again at once.
    Conflicted,
    /// Refused as a starting API server refuses everyone (401, 403).
    Refused,
    /// Refused otherwise (a 429 of API Priority and Fairness, a 404, ...).
    RefusedOtherwise,
    /// Not answered (unreachable, timed out, 5xx).
    Unanswered,
}

impl Tried {
    fn of(error: &kube::Error) -> Tried {
        if unanswered(error) {
            Tried::Unanswered
        } else if crate::api_answers::refused_while_starting(error) {
            Tried::Refused
        } else {
            Tried::RefusedOtherwise
        }
    }
}

/// The wait before the next Lease try: `retry_period`, or the quick retry after a try the API
/// server left unanswered, after a conflict, and after a refusal while the server may still be
/// starting (see [`crate::api_answers`]).
#[derive(Debug, Default)]
struct NextTry {
    starting: Starting,
}

impl NextTry {
    fn after(&mut self, tried: Tried, now: Instant, cfg: &LeaseConfig) -> Duration {
        if tried == Tried::Unanswered {
            self.starting.away();
            return cfg.retry_after_failure();
        }
        let starting = self.starting.answered(now);
        match tried {
            Tried::Conflicted => cfg.retry_after_failure(),
            Tried::Refused if starting => cfg.retry_after_failure(),
            _ => cfg.retry_period,
        }
    }
}

/// What a candidate last saw of the Lease's record, and when (its own clock).
#[derive(Clone, Debug, PartialEq)]
struct Observed {
    holder: Option<String>,
    renew_time: Option<String>,
    transitions: Option<i32>,
    duration: Duration,
}

/// The outcome of one attempt.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// This candidate holds the Lease, freshly renewed.
    Held,
    /// Someone else holds it (or won the race for it).
    HeldByOther(String),
    /// The Lease changed between this attempt's read and its write (409 Conflict): the next read
    /// says who holds it.
    Conflicted,
}

/// The Lease's duration in whole seconds, rounded up.
fn whole_seconds(duration: Duration) -> i32 {
    let secs = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    i32::try_from(secs.max(1)).unwrap_or(i32::MAX)
}

pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    observed: Option<(Observed, Instant)>,
}

impl Elector {
    pub fn new(api: Api<Lease>, config: LeaseConfig) -> Self {
        Elector {
            api,
            config,
            observed: None,
        }
    }

    /// Runs until `stop` turns true; `leading` tells the rest of the program whether it may act.
    /// Returns after releasing the Lease if it held it.
    pub async fn run(
        mut self,
        leading: watch::Sender<bool>,
        readiness: Readiness,
        mut stop: watch::Receiver<bool>,
    ) {
        let cfg = self.config.clone();
        let far = || Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let mut last_renew: Option<Instant> = None;
        // Quick retries after a failure would otherwise log twice a second through an outage.
        let mut failures = Repeated::default();
        let mut next_try = NextTry::default();
        loop {
            if *stop.borrow() {
                break;
            }
            let deadline = last_renew.map_or_else(far, |at| at + cfg.renew_deadline);
            let per_try = cfg.renew_deadline.max(Duration::from_secs(1));
            let mut wait = cfg.retry_period;
            let sent = Instant::now();
            tokio::select! {
                result = tokio::time::timeout(per_try, self.try_acquire_or_renew()) => {
                    // Err: whether the API server left the call unanswered (a timeout too), and why.
                    let attempt = match result {
                        Ok(Ok(attempt)) => Ok(attempt),
                        Ok(Err(e)) => Err((Tried::of(&e), e.to_string())),
                        Err(_) => Err((Tried::Unanswered, format!("no answer within {}s", per_try.as_secs_f64()))),
                    };
                    let tried = match &attempt {
                        Ok(Attempt::Conflicted) => Tried::Conflicted,
                        Ok(_) => Tried::Answered,
                        Err((tried, _)) => *tried,
                    };
                    wait = next_try.after(tried, Instant::now(), &cfg);
                    match attempt {
                        Ok(attempt) => {
                            if last_renew.is_none() {
                                readiness.succeeded();
                            }
                            if let Some(failed) = failures.succeeded() {
                                info!(lease = %cfg.name, failed_tries = failed, "the leader lease answers again");
                            }
                            match attempt {
                                Attempt::Held => {
                                    if last_renew.is_none() {
                                        info!(lease = %cfg.name, identity = %cfg.identity, "acquired the leader lease");
                                    }
                                    last_renew = Some(sent);
                                    leading.send_if_modified(|l| !std::mem::replace(l, true));
                                }
                                Attempt::Conflicted => {
                                    debug!(lease = %cfg.name, "the leader lease changed between its read and its write; reading it again");
                                }
                                Attempt::HeldByOther(holder) => {
                                    if last_renew.take().is_some() {
                                        warn!(holder = %holder, "another candidate holds the leader lease; stopped leading");
                                    }
                                    leading.send_if_modified(|l| std::mem::replace(l, false));
                                }
                            }
                        }
                        Err((_, error)) => {
                            if last_renew.is_none() {
                                readiness.failed();
                            }
                            match failures.failed() {
                                (failed, true) => warn!(error = %error, lease = %cfg.name, failed_tries = failed, "leader lease call failed"),
                                (failed, false) => debug!(error = %error, lease = %cfg.name, failed_tries = failed, "leader lease call failed"),
                            }
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {}
                changed = stop.changed() => {
                    // A dropped sender means nobody can ask any more: stop as asked.
                    if changed.is_err() {
                        break;
                    }
                    continue;
                }
            }
            // The next try, unless the renew deadline passes first.
            let deadline = last_renew.map_or_else(far, |at| at + cfg.renew_deadline);
            if Instant::now() < deadline {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                    changed = stop.changed() => {
                        if changed.is_err() {
                            break;
                        }
                    }
                }
            }
            if let Some(at) = last_renew
                && at.elapsed() >= cfg.renew_deadline
            {
                warn!(
                    renew_deadline_secs = cfg.renew_deadline.as_secs_f64(),
                    "could not renew the leader lease within the renew deadline; stopped leading"
                );
                last_renew = None;
                leading.send_if_modified(|l| std::mem::replace(l, false));
            }
        }
        let was_leading = leading.send_replace(false);
        if was_leading {
            match tokio::time::timeout(Duration::from_secs(5), self.release_retrying()).await {
                Ok(Ok(())) => info!(lease = %cfg.name, "released the leader lease"),
                Ok(Err(e)) => warn!(error = %e, "could not release the leader lease"),
                Err(_) => warn!("releasing the leader lease timed out"),
            }
        }
    }

    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let cfg = &self.config;
        let per_request = cfg.per_request();
        let now = MicroTime(jiff::Timestamp::now());
        let duration_secs = whole_seconds(cfg.lease_duration);
        let Some(lease) = within(per_request, self.api.get_opt(&cfg.name)).await? else {
            // Deleted while another held it: that holder may still lead, and only re-creates it
            // if it does.
            if let Some((seen, at)) = &self.observed
                && let Some(other) = seen.holder.as_ref().filter(|h| **h != cfg.identity)
                && at.elapsed() < seen.duration
            {
                return Ok(Attempt::HeldByOther(other.clone()));
            }
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(cfg.identity.clone()),
                    lease_duration_seconds: Some(duration_secs),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match within(per_request, self.api.create(&PostParams::default(), &lease)).await
            {
                Ok(_) => Ok(Attempt::Held),
                // Someone else created it: most likely a pod that never saw the old holder.
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    Ok(Attempt::HeldByOther("(created concurrently)".into()))
                }
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let record = Observed {
            holder: holder.clone(),
            renew_time: spec.renew_time.as_ref().map(|t| t.0.to_string()),
            transitions: spec.lease_transitions,
            duration: Duration::from_secs(
                u64::try_from(spec.lease_duration_seconds.unwrap_or(duration_secs)).unwrap_or(0),
            ),
        };
        // Expiry is judged by when this candidate saw the record change, never by the holder's
        // clock.
        let observed_at = match &self.observed {
            Some((seen, at)) if *seen == record => *at,
            _ => Instant::now(),
        };
        self.observed = Some((record.clone(), observed_at));
        if let Some(other) = &holder
            && *other != cfg.identity
            && observed_at.elapsed() < record.duration
        {
            return Ok(Attempt::HeldByOther(other.clone()));
        }

        let mut next = spec;
        if holder.as_deref() != Some(cfg.identity.as_str()) {
            next.acquire_time = Some(now.clone());
            next.lease_transitions = Some(next.lease_transitions.unwrap_or(0) + 1);
        }
        next.holder_identity = Some(cfg.identity.clone());
        next.lease_duration_seconds = Some(duration_secs);
        next.renew_time = Some(now);
        let mut updated = lease;
        updated.spec = Some(next);
        // `replace` sends the resourceVersion that was read: a concurrent change wins (409).
        match within(
            per_request,
            self.api
                .replace(&cfg.name, &PostParams::default(), &updated),
        )
        .await
        {
            Ok(_) => Ok(Attempt::Held),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Conflicted),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up, read again after a 409: a renewal cut short by the stop may have been
    /// stored between the release's read and its write.
    async fn release_retrying(&self) -> Result<(), kube::Error> {
        match self.release().await {
            Err(kube::Error::Api(s)) if s.code == 409 => self.release().await,
            done => done,
        }
    }

    /// Gives the Lease up: no holder, and a one-second duration so others take it at once.
    async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        self.api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
    }
}

/// `call`, or a failure as of a call left unanswered once `limit` has passed.
async fn within<T>(
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, kube::Error> {
    tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
        Err(kube::Error::Service(
            format!("no answer within {}s", limit.as_secs_f64()).into(),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api_answers::STARTING;

    fn config() -> LeaseConfig {
        LeaseConfig {
            namespace: "eac".into(),
            name: "eac-controller".into(),
            identity: "a".into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    #[test]
    fn a_refusal_waits_the_retry_period_unless_the_api_server_has_just_come_back() {
        let cfg = config();
        let quick = cfg.retry_after_failure();
        let t0 = Instant::now();
        let mut next = NextTry::default();
        assert_eq!(
            next.after(Tried::Refused, t0, &cfg),
            cfg.retry_period,
            "a refusal, never away"
        );
        assert_eq!(next.after(Tried::Unanswered, t0, &cfg), quick);
        assert_eq!(next.after(Tried::Unanswered, t0, &cfg), quick);
        // Back, starting: its authorizer refuses everyone for a moment.
        let back = t0 + Duration::from_secs(10);
        assert_eq!(
            next.after(Tried::RefusedOtherwise, back, &cfg),
            cfg.retry_period,
            "a 429 of an overloaded server, back or not, waits the retry period"
        );
        assert_eq!(next.after(Tried::Refused, back, &cfg), quick);
        assert_eq!(
            next.after(Tried::Refused, back + Duration::from_millis(500), &cfg),
            quick
        );
        assert_eq!(
            next.after(Tried::Refused, back + STARTING, &cfg),
            cfg.retry_period,
            "refused for as long as a start takes: a refusal like any other"
        );
    }

    #[test]
    fn an_answer_after_the_return_starts_the_window_too_and_conflicts_are_read_again_at_once() {
        let cfg = config();
        let quick = cfg.retry_after_failure();
        let t0 = Instant::now();
        let mut next = NextTry::default();
        next.after(Tried::Unanswered, t0, &cfg);
        assert_eq!(next.after(Tried::Answered, t0, &cfg), cfg.retry_period);
        assert_eq!(
            next.after(Tried::Refused, t0 + Duration::from_secs(1), &cfg),
            quick,
            "within the window of the return"
        );
        assert_eq!(
            next.after(Tried::Conflicted, t0 + STARTING * 2, &cfg),
            quick
        );
        assert_eq!(
            next.after(Tried::Refused, t0 + STARTING * 2, &cfg),
            cfg.retry_period
        );
    }
}
