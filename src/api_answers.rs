//! How the API server answered a call that failed: not at all ([`unanswered`]: it was away), or
//! with a refusal it makes while it starts.
//!
//! A kube-apiserver that has just started answers before it is ready, and some answers are
//! refusals that its start, not the caller, causes: 403 ("informers not synced") until its
//! authorizer's RBAC caches are filled, 401 until a service-account token's pod or secret is in
//! its caches (kubernetes/kubernetes#101422, #121635). A refusal that comes within [`STARTING`]
//! of the server's return, after calls it left unanswered, is therefore taken as one of a
//! server still starting: tried again soon, not waited after as a refusal is, nor reported as
//! one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::observed::Observe;

/// How long after the API server answers again, following calls it left unanswered, its
/// refusals are taken as those of a server still starting.
pub const STARTING: Duration = Duration::from_secs(5);

/// Whether the API server may still be starting, from how the calls to it went.
#[derive(Debug, Default)]
pub struct Starting {
    /// The last call was left unanswered.
    away: bool,
    /// When the server answered again after being away.
    returned: Option<Instant>,
}

impl Starting {
    /// The server left a call unanswered (unreachable, timed out, 5xx).
    pub fn away(&mut self) {
        self.away = true;
        self.returned = None;
    }

    /// The server answered a call (a refusal included) at `now`: whether it may still be
    /// starting (it came back within [`STARTING`] before).
    pub fn answered(&mut self, now: Instant) -> bool {
        if std::mem::take(&mut self.away) {
            self.returned = Some(now);
        }
        self.returned
            .is_some_and(|at| now.duration_since(at) < STARTING)
    }
}

/// Whether a failed call means the API server was away: unreachable, the connection lost or timed
/// out, or a gateway or the server saying it is unavailable (502, 503, 504). Not a refusal (4xx,
/// a 429 its retries did not get through), and not a 500: an admission webhook that fails
/// answers 500, and the API server's return does not fix it. Nor a local failure (credentials, a
/// request that cannot be built or an answer that cannot be read).
pub fn unanswered(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => matches!(status.code, 502..=504),
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => true,
        _ => false,
    }
}

/// Whether a failed call is a refusal a starting API server makes of everyone (401, 403).
pub fn refused_while_starting(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if matches!(status.code, 401 | 403))
}

/// Since when the API server has failed a part of the controller's calls, and a count of its
/// returns after failures of `outage` or longer: what `/readyz` keeps of the watch's and the
/// Lease's calls (`http::Readiness`), and [`Answers`] of every call of the client.
#[derive(Debug)]
pub struct Failing {
    since: Option<Instant>,
    outage: Duration,
    returns: watch::Sender<u64>,
}

impl Failing {
    pub fn new(outage: Duration) -> Self {
        Failing {
            since: None,
            outage,
            returns: watch::channel(0).0,
        }
    }

    /// A call failed: the failure began now, unless it was under way.
    pub fn failed(&mut self) {
        self.since.get_or_insert_with(Instant::now);
    }

    /// Since when the calls have failed, if they have.
    pub fn since(&self) -> Option<Instant> {
        self.since
    }

    /// Forgets a failure under way without telling a return (a new role starts afresh).
    pub fn forget(&mut self) {
        self.since = None;
    }

    /// A call was answered: ends a failure, if one was under way, told as a return if it lasted
    /// `outage` or longer; returns its length.
    pub fn answered(&mut self) -> Option<Duration> {
        let failed_for = self.since.take().map(|since| since.elapsed());
        if failed_for.is_some_and(|f| f >= self.outage) {
            self.returns.send_modify(|n| *n = n.wrapping_add(1));
        }
        failed_for
    }

    /// Sees each return.
    pub fn returns(&self) -> watch::Receiver<u64> {
        self.returns.subscribe()
    }
}

/// Calls left unanswered this long, then an answer: a return that wakes the watches sleeping in
/// their backoff ([`Answers::returns`]). Shorter, and a server that drops some calls and answers
/// others would wake them at every answer.
pub const AWAY: Duration = Duration::from_secs(1);

/// The API server's answers to the controller's client, as they come: whether it has left every
/// call unanswered (see [`unanswered`]) for [`AWAY`] or longer, and its returns after that.
///
/// Through an outage each watch retries on a backoff grown to 2 s (`reconciler::watch`), so the
/// first try of each after the return came up to 2.5 s after it, the resources' relist with it
/// (a second on average). The first answer to any call of the controller's client (a watch's, a
/// write's, a 403 of a server still starting included) now wakes every watch at once. The
/// Lease's client tells it too (`runner::lease_client_from`): a leader an outage shorter than
/// its renew deadline did not stop keeps its watches, and its Lease tries, 500 ms apart while
/// they fail at once (a stopped API server), see the return first.
#[derive(Clone, Debug)]
pub struct Answers(Arc<Mutex<Failing>>);

impl Default for Answers {
    fn default() -> Self {
        Answers(Arc::new(Mutex::new(Failing::new(AWAY))))
    }
}

impl Answers {
    fn lock(&self) -> std::sync::MutexGuard<'_, Failing> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A call was left unanswered.
    pub fn unanswered(&self) {
        self.lock().failed();
    }

    /// A call was answered (a refusal included): a return if the calls before were left
    /// unanswered for [`AWAY`] or longer.
    pub fn answered(&self) {
        self.lock().answered();
    }

    /// Sees each return.
    pub fn returns(&self) -> watch::Receiver<u64> {
        self.lock().returns()
    }
}

/// How each call of the client went: answered, or not (no answer, or 502 to 504 from a gateway
/// or a server saying it is unavailable).
impl Observe for Answers {
    type Sent = ();

    fn sent<B>(&self, _: &http::Request<B>) -> Option<()> {
        Some(())
    }

    fn answered(&self, (): (), status: Option<http::StatusCode>) {
        match status {
            Some(status) if !matches!(status.as_u16(), 502..=504) => self.answered(),
            _ => self.unanswered(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_a_start_s_for_a_while_after_the_return_only() {
        let t0 = Instant::now();
        let mut starting = Starting::default();
        assert!(!starting.answered(t0), "never away: no start seen");
        starting.away();
        starting.away();
        let back = t0 + Duration::from_secs(10);
        assert!(starting.answered(back));
        assert!(starting.answered(back + STARTING - Duration::from_millis(1)));
        assert!(!starting.answered(back + STARTING));
        starting.away();
        assert!(
            starting.answered(back + STARTING * 2),
            "away again: a new start"
        );
    }

    /// Calls `service` once; the mock answers it with `answer`.
    async fn called(
        service: &mut crate::observed::Observed<
            tower_test::mock::Mock<http::Request<()>, http::Response<()>>,
            Answers,
        >,
        handle: &mut tower_test::mock::Handle<http::Request<()>, http::Response<()>>,
        answer: Result<u16, &'static str>,
    ) {
        use tower::{Service, ServiceExt};
        handle.allow(1);
        let call = service.ready().await.unwrap().call(http::Request::new(()));
        let (_, respond) = handle.next_request().await.unwrap();
        match answer {
            Ok(code) => {
                respond.send_response(http::Response::builder().status(code).body(()).unwrap())
            }
            Err(e) => respond.send_error(e),
        }
        let _ = call.await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_after_calls_left_unanswered_for_a_second_is_a_return() {
        let answers = Answers::default();
        let returns = answers.returns();
        let (mock, mut handle) = tower_test::mock::pair();
        let mut service =
            tower::Layer::layer(&crate::observed::ObserveLayer(answers.clone()), mock);

        // Answered, refusals included: nothing to tell.
        called(&mut service, &mut handle, Ok(200)).await;
        called(&mut service, &mut handle, Ok(403)).await;
        assert!(!returns.has_changed().unwrap());

        // Left unanswered (no connection, a 503) for less than a second, then answered.
        called(&mut service, &mut handle, Err("connection refused")).await;
        tokio::time::advance(AWAY / 2).await;
        called(&mut service, &mut handle, Ok(503)).await;
        called(&mut service, &mut handle, Ok(403)).await;
        assert!(!returns.has_changed().unwrap(), "a passing failure");

        // For a second or more: the first answer is a return, told once.
        called(&mut service, &mut handle, Err("connection refused")).await;
        tokio::time::advance(AWAY).await;
        called(&mut service, &mut handle, Ok(504)).await;
        assert!(
            !returns.has_changed().unwrap(),
            "a gateway's 504 is no answer"
        );
        called(&mut service, &mut handle, Ok(403)).await;
        assert!(returns.has_changed().unwrap(), "the return");
        let mut returns = returns;
        returns.mark_unchanged();
        called(&mut service, &mut handle, Ok(200)).await;
        assert!(!returns.has_changed().unwrap(), "told once");
    }

    #[test]
    fn only_authentication_and_authorization_refusals_are_a_start_s() {
        let status = |code| {
            kube::Error::Api(Box::new(
                kube::core::Status::failure("x", "X").with_code(code),
            ))
        };
        assert!(refused_while_starting(&status(401)));
        assert!(refused_while_starting(&status(403)));
        for code in [400, 404, 409, 422, 429, 500, 503] {
            assert!(!refused_while_starting(&status(code)), "{code}");
        }
    }
}
