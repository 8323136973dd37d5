//! Failures that repeat. Through an API-server outage every watch fails every 2 s and the leader
//! election every 500 ms: a warning for each would bury whatever else happened. The first failure
//! in a row and every tenth are worth a warning, the others are logged at debug.

use std::time::Duration;

use tokio::time::Instant;

/// Failures further apart than this are not one row: between them the thing worked. (A watch
/// that resumes shows nothing until something changes, so its next failure may be all that is
/// seen of it; a failing one tries again within about 5 s: its backoff, 2 s at most, and the
/// client's own retries, about 3 s.)
const ROW_GAP: Duration = Duration::from_secs(30);

/// The failures in a row of one thing that retries (a watch, the leader election).
#[derive(Debug, Default)]
pub struct Repeated {
    failures: u32,
    last: Option<Instant>,
}

impl Repeated {
    /// Counts one failure: its number in the row, and whether it is worth a warning.
    pub fn failed(&mut self) -> (u32, bool) {
        let now = Instant::now();
        if self.last.is_some_and(|at| now.duration_since(at) > ROW_GAP) {
            self.failures = 0;
        }
        self.last = Some(now);
        self.failures = self.failures.saturating_add(1);
        (self.failures, self.failures % 10 == 1)
    }

    /// A success: how many failed in a row before it, if any did.
    pub fn succeeded(&mut self) -> Option<u32> {
        self.last = None;
        (self.failures > 0).then(|| std::mem::take(&mut self.failures))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_first_failure_in_a_row_and_every_tenth_warn_and_a_success_ends_the_row() {
        let mut r = Repeated::default();
        assert_eq!(r.succeeded(), None, "no row to end");
        let mut warned = Vec::new();
        for _ in 0..25 {
            let (n, warn) = r.failed();
            if warn {
                warned.push(n);
            }
            tokio::time::advance(Duration::from_secs(2)).await;
        }
        assert_eq!(warned, [1, 11, 21]);
        assert_eq!(r.succeeded(), Some(25));
        assert_eq!(r.succeeded(), None);
        assert_eq!(r.failed(), (1, true), "a new row warns at once");
        assert_eq!(r.failed(), (2, false));
        // Nothing failed for longer than a failing thing waits between tries: it worked.
        tokio::time::advance(ROW_GAP + Duration::from_secs(1)).await;
        assert_eq!(
            r.failed(),
            (1, true),
            "a new row, though no success was seen"
        );
    }
}
