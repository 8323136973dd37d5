//! Whether Proton answers in each region, and when it answers again after an outage.
//!
//! A call that got no answer (refused, reset or timed out, a connection lost mid-answer, or a
//! gateway's 502, 503 or 504) marks its region away. While a region is away it is probed every
//! [`PROBE_EVERY`] (see `Proton::probe_while_away`), and the first answer there, to a probe or
//! to any call, ends the outage. The end of an outage of [`OUTAGE`] or longer is told to whoever
//! watches [`Reach::returns`]: the controllers then try at once what the outage stopped (see
//! `reconciler::after_outage`). Without it each resource would wait out a backoff that grew
//! through the outage: up to five minutes, however short the outage was past its first minutes.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_proton::error::SdkError;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info};

use crate::aws::credentials::AwsIdentity;

/// How often a region that does not answer is probed.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);

/// An outage shorter than this grew no backoff worth cutting short (a failure waits a second,
/// then two, then four): its end is not told, as for the API server (`http::OUTAGE`).
pub const OUTAGE: Duration = Duration::from_secs(5);

/// What a call's outcome says of Proton's reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heard {
    /// Proton answered: a result, or an error of its own (a refusal, throttling, a 500).
    Answered,
    /// Nothing answered for Proton: see the module's comment.
    Unanswered,
    /// The request did not go out (credentials that could not be had, a request that could not
    /// be built): nothing is learned of the endpoint.
    NotSent,
}

/// What a failed call says of Proton's reach.
pub fn heard<E>(error: &SdkError<E, aws_smithy_runtime_api::http::Response>) -> Heard {
    match error {
        SdkError::ServiceError(e) if matches!(e.raw().status().as_u16(), 502..=504) => {
            Heard::Unanswered
        }
        SdkError::ServiceError(_) => Heard::Answered,
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => Heard::Unanswered,
        SdkError::DispatchFailure(f) if f.is_io() || f.is_timeout() => Heard::Unanswered,
        _ => Heard::NotSent,
    }
}

/// A region that does not answer: since when, and whose credentials saw it (and probe it).
#[derive(Clone, Debug)]
pub struct Unreached {
    pub since: Instant,
    pub identity: AwsIdentity,
    /// The first failure, for the warning.
    pub error: String,
}

/// The regions that do not answer, and Proton's returns. Shared by every clone of the port.
pub struct Reach {
    away: watch::Sender<HashMap<String, Unreached>>,
    returns: watch::Sender<u64>,
}

impl Default for Reach {
    fn default() -> Self {
        Reach {
            away: watch::channel(HashMap::new()).0,
            returns: watch::channel(0).0,
        }
    }
}

impl Reach {
    /// Records what `heard` says of a call in `region` made with `identity` (`error`: why it
    /// failed, for the warning).
    pub fn record(
        &self,
        heard: Heard,
        region: &str,
        identity: &AwsIdentity,
        error: &dyn std::fmt::Display,
    ) {
        match heard {
            Heard::Answered => self.answered(region),
            Heard::Unanswered => self.unanswered(region, identity, error),
            Heard::NotSent => {}
        }
    }

    /// Proton answered in `region`: ends its outage, if it had one.
    pub fn answered(&self, region: &str) {
        // Every call ends here: a read lock while nothing is away.
        if !self.away.borrow().contains_key(region) {
            return;
        }
        let mut ended = None;
        self.away.send_if_modified(|away| {
            ended = away.remove(region);
            ended.is_some()
        });
        let Some(ended) = ended else { return };
        let lasted = ended.since.elapsed();
        info!(
            %region,
            outage_secs = lasted.as_secs_f64(),
            "Proton answers again"
        );
        if lasted >= OUTAGE {
            self.returns.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Nothing answered for Proton in `region`: marks it away, if it was not.
    fn unanswered(&self, region: &str, identity: &AwsIdentity, error: &dyn std::fmt::Display) {
        let newly = self.away.send_if_modified(|away| {
            if away.contains_key(region) {
                return false;
            }
            away.insert(
                region.to_string(),
                Unreached {
                    since: Instant::now(),
                    identity: identity.clone(),
                    error: error.to_string(),
                },
            );
            true
        });
        if newly {
            // Warned by whoever probes (the controller; not `check`, which only reports).
            debug!(%region, %error, "Proton does not answer");
        }
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
    use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
    use aws_smithy_runtime_api::client::result::ConnectorError;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;

    use super::*;

    type Failure = SdkError<std::io::Error, HttpResponse>;

    fn answered_with(status: u16) -> Failure {
        let raw = HttpResponse::new(StatusCode::try_from(status).unwrap(), SdkBody::empty());
        SdkError::service_error(std::io::Error::other("answer"), raw)
    }

    #[test]
    fn only_a_call_nothing_answered_marks_the_region_away() {
        for status in [400, 403, 404, 409, 429, 500] {
            assert_eq!(heard(&answered_with(status)), Heard::Answered, "{status}");
        }
        for status in [502, 503, 504] {
            assert_eq!(heard(&answered_with(status)), Heard::Unanswered, "{status}");
        }
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let failures: [(Failure, Heard); 5] = [
            (
                SdkError::dispatch_failure(ConnectorError::io(refused.into())),
                Heard::Unanswered,
            ),
            (
                SdkError::dispatch_failure(ConnectorError::timeout("connect".into())),
                Heard::Unanswered,
            ),
            (SdkError::timeout_error("attempt"), Heard::Unanswered),
            // Credentials that could not be loaded fail the dispatch too, before anything is
            // sent.
            (
                SdkError::dispatch_failure(ConnectorError::other("no credentials".into(), None)),
                Heard::NotSent,
            ),
            (SdkError::construction_failure("bad input"), Heard::NotSent),
        ];
        for (failure, expected) in failures {
            assert_eq!(heard(&failure), expected, "{failure:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_end_of_an_outage_of_5_s_or_more_is_told() {
        let reach = Reach::default();
        let mut returns = reach.returns();
        let east = "us-east-1";
        reach.record(Heard::Unanswered, east, &AwsIdentity::Own, &"refused");
        tokio::time::advance(OUTAGE - Duration::from_millis(1)).await;
        reach.record(Heard::Answered, east, &AwsIdentity::Own, &"");
        assert!(reach.away().is_empty());
        assert!(!returns.has_changed().unwrap(), "a passing failure");

        reach.record(Heard::Unanswered, east, &AwsIdentity::Own, &"refused");
        tokio::time::advance(Duration::from_secs(3)).await;
        // A second failure does not move the outage's start.
        reach.record(Heard::Unanswered, east, &AwsIdentity::Own, &"refused");
        reach.record(
            Heard::Unanswered,
            "eu-west-1",
            &AwsIdentity::Own,
            &"refused",
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        reach.record(Heard::NotSent, east, &AwsIdentity::Own, &"no credentials");
        assert_eq!(
            reach.away().len(),
            2,
            "nothing learned from a call not sent"
        );
        reach.record(Heard::Answered, east, &AwsIdentity::Own, &"");
        assert!(returns.has_changed().unwrap(), "an outage of 5 s");
        returns.mark_unchanged();
        let away = reach.away();
        assert_eq!(away.len(), 1);
        assert_eq!(away[0].0, "eu-west-1", "each region on its own");
        reach.record(Heard::Answered, east, &AwsIdentity::Own, &"");
        assert!(!returns.has_changed().unwrap(), "told once");
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
        reach.record(
            Heard::Unanswered,
            "us-east-1",
            &AwsIdentity::Own,
            &"refused",
        );
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("woken by the first region away")
            .unwrap();
    }
}
