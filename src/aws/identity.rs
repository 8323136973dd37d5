//! Which AWS account the controller's credentials act as (STS GetCallerIdentity), cached.
//!
//! Connections are pinned to the account they were created in; before acting on one the
//! controller checks that its credentials still act as that account, so new credentials for
//! another account never make every connection look deleted (and re-created).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::aws::asking::Asking;
use crate::aws::error::{ErrorClass, ProtonError};
use crate::aws::reach::{self, Reach};
use crate::metrics::Metrics;

/// How long an answer is trusted before it is asked again.
const FRESH_FOR: Duration = Duration::from_secs(300);

#[derive(Clone)]
pub struct CallerIdentity {
    sts: aws_sdk_sts::Client,
    reach: Arc<Reach>,
    cached: Arc<Mutex<Option<(String, Instant)>>>,
    asking: Arc<Asking>,
    metrics: Metrics,
}

impl CallerIdentity {
    pub fn new(sts: aws_sdk_sts::Client, reach: Arc<Reach>, metrics: Metrics) -> Self {
        CallerIdentity {
            sts,
            reach,
            cached: Arc::default(),
            asking: Arc::default(),
            metrics,
        }
    }

    /// The account id, from the cache while it is fresh.
    pub async fn account(&self) -> Result<String, ProtonError> {
        self.asking
            .ask(
                &self.reach,
                "GetCallerIdentity",
                || self.fresh(),
                || self.ask(),
            )
            .await
    }

    async fn ask(&self) -> Result<String, ProtonError> {
        let call = self.sts.get_caller_identity().send();
        match self
            .reach
            .observed(reach::STS, "GetCallerIdentity", false, call)
            .await
        {
            Ok(out) => {
                self.metrics.aws_call("GetCallerIdentity", "success");
                let Some(account) = out.account().filter(|a| !a.is_empty()) else {
                    return Err(ProtonError {
                        operation: "GetCallerIdentity",
                        class: ErrorClass::Other,
                        code: "MalformedResponse".into(),
                        message: "STS answered without an account id".into(),
                        retry_in: None,
                    });
                };
                *self.lock() = Some((account.to_string(), Instant::now()));
                Ok(account.to_string())
            }
            Err(e) => {
                self.metrics.aws_call("GetCallerIdentity", e.reason());
                Err(e)
            }
        }
    }

    /// Does STS answer? One GetCallerIdentity, the cache aside (see [`crate::aws::reach`]).
    pub async fn probe(&self) -> Result<(), ProtonError> {
        let call = self.sts.get_caller_identity().send();
        self.reach
            .observed(reach::STS, "GetCallerIdentity", true, call)
            .await
            .map(|_| ())
    }

    /// The account last answered, however old: what the decision tells other policies' rights
    /// from, without asking STS (`None` before the first answer).
    pub fn known(&self) -> Option<String> {
        self.lock().as_ref().map(|(account, _)| account.clone())
    }

    fn fresh(&self) -> Option<String> {
        match &*self.lock() {
            Some((account, at)) if at.elapsed() < FRESH_FOR => Some(account.clone()),
            _ => None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(String, Instant)>> {
        self.cached.lock().unwrap_or_else(|p| p.into_inner())
    }
}
