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

use std::time::Duration;

use tokio::time::Instant;

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
