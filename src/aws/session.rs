//! Temporary credentials of a mapped role (STS AssumeRole), cached and refreshed before they
//! expire. One session per role, shared by every resource that acts with it: one AssumeRole per
//! role per credential lifetime, however many resources.
//!
//! The session is asked for credentials before each call it signs, so a role that cannot be
//! assumed surfaces as a typed error (AccessDenied, with STS's message) in the resource's
//! conditions rather than as an unexplained signing failure.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{self, ProvideCredentials, error::CredentialsError};
use tracing::info;

use super::credentials::RoleIdentity;
use crate::aws::asking::Asking;
use crate::aws::error::{ErrorClass, ProtonError};
use crate::aws::reach::{self, Reach};
use crate::metrics::Metrics;

/// Credentials are renewed this long before they expire, so no call is signed with credentials
/// about to lapse.
const REFRESH_BEFORE: Duration = Duration::from_secs(300);
/// The session name the controller's calls show in CloudTrail.
const SESSION_NAME: &str = "eac-controller";

/// Credentials of the role and the account they act as.
#[derive(Clone, Debug)]
pub struct Assumed {
    pub credentials: Credentials,
    pub account: String,
    pub expires: SystemTime,
}

pub struct RoleSession {
    role: RoleIdentity,
    sts: aws_sdk_sts::Client,
    /// Whether STS answers (see [`crate::aws::reach`]).
    reach: Arc<Reach>,
    metrics: Metrics,
    cached: Mutex<Option<Assumed>>,
    asking: Asking,
}

impl std::fmt::Debug for RoleSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials.
        f.debug_struct("RoleSession")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl RoleSession {
    /// `sts`: a client with the controller's own credentials.
    pub fn new(
        role: RoleIdentity,
        sts: aws_sdk_sts::Client,
        reach: Arc<Reach>,
        metrics: Metrics,
    ) -> RoleSession {
        RoleSession {
            role,
            sts,
            reach,
            metrics,
            cached: Mutex::new(None),
            asking: Asking::default(),
        }
    }

    pub fn role(&self) -> &RoleIdentity {
        &self.role
    }

    /// Valid credentials of the role: cached ones while they have more than a few minutes left,
    /// else a new AssumeRole.
    pub async fn assume(&self) -> Result<Assumed, ProtonError> {
        self.asking
            .ask(&self.reach, "AssumeRole", || self.fresh(), || self.ask())
            .await
    }

    async fn ask(&self) -> Result<Assumed, ProtonError> {
        let mut request = self
            .sts
            .assume_role()
            .role_arn(&self.role.role_arn)
            .role_session_name(SESSION_NAME);
        if let Some(external_id) = &self.role.external_id {
            request = request.external_id(external_id);
        }
        let call = request.send();
        let out = match self
            .reach
            .observed(reach::STS, "AssumeRole", false, call)
            .await
        {
            Ok(out) => out,
            Err(mut e) => {
                self.metrics.aws_call("AssumeRole", e.reason());
                e.message = format!("cannot assume role {}: {}", self.role.role_arn, e.message);
                return Err(e);
            }
        };
        self.metrics.aws_call("AssumeRole", "success");
        let malformed = |what: &str| ProtonError {
            operation: "AssumeRole",
            class: ErrorClass::Other,
            code: "MalformedResponse".into(),
            message: format!(
                "STS answered AssumeRole for {} without {what}",
                self.role.role_arn
            ),
            retry_in: None,
        };
        let Some(c) = out.credentials() else {
            return Err(malformed("credentials"));
        };
        let expires =
            SystemTime::try_from(*c.expiration()).map_err(|_| malformed("a valid expiry"))?;
        // The account the credentials act as: the assumed-role ARN's
        // (`arn:aws:sts::ACCOUNT:assumed-role/NAME/SESSION`), else the role's own.
        let account = out
            .assumed_role_user()
            .and_then(|u| u.arn().split(':').nth(4).map(str::to_string))
            .filter(|a| !a.is_empty())
            .or_else(|| self.role.account().map(str::to_string))
            .ok_or_else(|| malformed("an account"))?;
        let assumed = Assumed {
            credentials: Credentials::new(
                c.access_key_id(),
                c.secret_access_key(),
                Some(c.session_token().to_string()),
                Some(expires),
                "eac-controller-assume-role",
            ),
            account,
            expires,
        };
        info!(role = %self.role.role_arn, account = %assumed.account, "assumed role");
        *self.lock() = Some(assumed.clone());
        Ok(assumed)
    }

    /// Drops the cached credentials: the next call assumes the role again.
    pub fn forget(&self) {
        *self.lock() = None;
    }

    fn fresh(&self) -> Option<Assumed> {
        let now = SystemTime::now();
        self.lock()
            .as_ref()
            .filter(|a| {
                a.expires
                    .duration_since(now)
                    .is_ok_and(|left| left > REFRESH_BEFORE)
            })
            .cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Assumed>> {
        self.cached.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The session as the SDK's credentials provider for the Proton clients of the role.
#[derive(Clone, Debug)]
pub struct SessionCredentials(pub std::sync::Arc<RoleSession>);

impl ProvideCredentials for SessionCredentials {
    fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        provider::future::ProvideCredentials::new(async move {
            self.0
                .assume()
                .await
                .map(|a| a.credentials)
                .map_err(CredentialsError::provider_error)
        })
    }
}
