//! The AWS call budget shared by every worker: a client-side rate limit, plus a short pause for
//! everyone when Proton answers ThrottlingException, so a throttled account backs off as a whole
//! instead of each worker discovering the limit on its own.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

/// How long every caller pauses after a ThrottlingException.
const THROTTLE_COOLDOWN: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct CallBudget {
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
    cooldown_until: Arc<Mutex<Option<Instant>>>,
}

impl CallBudget {
    /// At most `per_second` calls a second on average, `burst` at once.
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        let quota = Quota::per_second(per_second).allow_burst(burst);
        CallBudget {
            limiter: Some(Arc::new(RateLimiter::direct(quota))),
            cooldown_until: Arc::default(),
        }
    }

    /// No client-side limit (tests of other behaviour).
    pub fn unlimited() -> Self {
        CallBudget {
            limiter: None,
            cooldown_until: Arc::default(),
        }
    }

    /// Waits until a call may be made.
    pub async fn acquire(&self) {
        let until = *lock(&self.cooldown_until);
        if let Some(until) = until {
            tokio::time::sleep_until(until).await;
        }
        if let Some(limiter) = &self.limiter {
            limiter.until_ready().await;
        }
    }

    /// Proton said ThrottlingException: everyone pauses briefly.
    pub fn throttled(&self) {
        let until = Instant::now() + THROTTLE_COOLDOWN;
        let mut guard = lock(&self.cooldown_until);
        if guard.is_none_or(|current| current < until) {
            *guard = Some(until);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn throttling_pauses_later_callers() {
        let budget = CallBudget::unlimited();
        budget.throttled();
        let start = Instant::now();
        budget.acquire().await;
        assert!(start.elapsed() >= THROTTLE_COOLDOWN);
    }
}
