//! The Proton port: a thin adapter over `aws-sdk-proton` that speaks in the controller's own
//! plain types, classifies every AWS error as retryable or terminal, and applies the shared
//! client-side call budget. It makes no decisions of its own.

// Every Proton operation is `#[deprecated]` (the service closed to new customers); this module
// is the one place that calls them.
#![allow(deprecated)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_proton::Client;
use aws_sdk_proton::config::timeout::TimeoutConfig;
use aws_sdk_proton::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_proton::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_proton::types::{
    EnvironmentAccountConnectionRequesterAccountType, EnvironmentAccountConnectionStatus, Tag,
};
use aws_smithy_types::date_time::Format;
use tokio::time::Instant;

use crate::aws::budget::{Admission, CallBudget, CallClass};
use crate::aws::credentials::{AwsIdentity, RoleIdentity};
use crate::aws::identity::CallerIdentity;
use crate::aws::pending::{Listed, Partial, PendingLists};
use crate::aws::reach::{self, Reach};
use crate::aws::session::{RoleSession, SessionCredentials};
use crate::compact_id::CompactId;
use crate::connection::api::ConnectionState;
use crate::connection::api::{TAG_NAME, TAG_NAMESPACE, TAG_UID};
use crate::metrics::Metrics;

/// How often the prober looks at what is away and due for a probe.
const PROBE_TICK: Duration = Duration::from_millis(500);

/// What was said of a region's outages: the last one considered, whether it was warned of, and
/// the last warning.
#[derive(Clone, Copy)]
struct Warned {
    since: Instant,
    warned: bool,
    at: Instant,
}

/// Warns of `region`'s outage (`unreached`) once, and at most once per
/// [`reach::WARN_AGAIN_AFTER`] per region (an endpoint that flaps starts an outage every few
/// seconds): an outage that begins sooner is warned of when that time is up, if it lasts.
fn warn_once(
    warned: &mut HashMap<String, Warned>,
    region: &str,
    unreached: &reach::Unreached,
    now: Instant,
) -> Said {
    let last = warned.get(region).copied();
    let may_warn = last.is_none_or(|w| now.duration_since(w.at) >= reach::WARN_AGAIN_AFTER);
    match last {
        Some(w) if w.since == unreached.since && (w.warned || !may_warn) => Said::Nothing,
        _ if may_warn => {
            tracing::warn!(
                %region,
                error = %unreached.error,
                probe_every_secs = reach::PROBE_EVERY.as_secs(),
                "{} does not answer: probing it until it does; what its outage stops is tried again as soon as it answers",
                reach::service(region)
            );
            let since = unreached.since;
            warned.insert(
                region.to_string(),
                Warned {
                    since,
                    warned: true,
                    at: now,
                },
            );
            Said::Warned
        }
        Some(w) => {
            tracing::debug!(%region, error = %unreached.error, "{} does not answer again", reach::service(region));
            let since = unreached.since;
            warned.insert(
                region.to_string(),
                Warned {
                    since,
                    warned: false,
                    ..w
                },
            );
            Said::Debug
        }
        None => Said::Nothing,
    }
}

/// What [`warn_once`] said.
#[derive(Debug, PartialEq, Eq)]
enum Said {
    Nothing,
    Warned,
    Debug,
}

/// The budget key of a probe (a preflight check's, or one of a region that does not answer):
/// outside the budget, and it starts no outage (see [`crate::aws::reach`]).
const PREFLIGHT: &str = "preflight";

/// Who makes a call, with which credentials, and of which class (for the call budget).
#[derive(Clone, Copy, Debug)]
pub struct Ticket<'a> {
    /// Whose credentials sign the call.
    pub identity: &'a AwsIdentity,
    /// The resource's uid: a slot booked for a later call is kept under it.
    pub key: &'a str,
    pub class: CallClass,
    /// The call's slot was taken already (see [`Proton::admit`]).
    pub admitted: bool,
    /// The turn of a region that does not answer, taken before the work that went before the
    /// call (see [`Proton::hold_trial`]).
    pub trial: Option<&'a reach::Trial<'a>>,
    /// The calls of the step this ticket is for, so far.
    pub calls: &'a StepCalls,
}

/// The calls one step made, and how many more of its calls the budget has paid for ahead (a
/// step told to come back repeats its calls, and its booking covers them: see
/// [`crate::aws::budget`]).
#[derive(Debug, Default)]
pub struct StepCalls {
    made: AtomicU32,
    prepaid: AtomicU32,
}

impl StepCalls {
    /// Takes one prepaid call, if any is left.
    fn take_prepaid(&self) -> bool {
        self.prepaid
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    pub fn made(&self) -> u32 {
        self.made.load(Ordering::Relaxed)
    }
}

/// What the list of PENDING connections answers for one poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollAnswer {
    /// It shows the connection just as recorded.
    AsRecorded,
    /// It does not (accepted, rejected, changed, gone, or not listed since): read it.
    Otherwise,
    /// The last list began before the connection was last seen, and the next may not begin
    /// before this.
    Wait(tokio::time::Instant),
}

/// Tags as a sorted map, the way the controller compares them.
pub type Tags = BTreeMap<String, String>;

/// The three updatable role ARNs of a connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoleArns {
    pub role_arn: Option<String>,
    pub codebuild_role_arn: Option<String>,
    pub component_role_arn: Option<String>,
}

/// A connection tagged for a resource of the same namespace and name as the one searching, but
/// with another uid: made by a resource of that name before it (its cluster rebuilt, or restored
/// from a backup without its status), or by one of that name in another cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namesake {
    pub id: String,
    pub arn: String,
    /// Its uid tag.
    pub owner: String,
}

/// What a search of an environment's connections for a resource's own found.
#[derive(Clone, Debug, PartialEq)]
pub enum Owned {
    /// The connection carrying the resource's uid tag, with its tags.
    Found(Connection, Tags),
    /// None carries it, but this one is a [`Namesake`]'s.
    Namesake(Namesake),
    Nothing,
}

/// A connection as Proton reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    pub id: String,
    pub arn: String,
    pub state: ConnectionState,
    pub environment_name: String,
    pub management_account_id: String,
    pub environment_account_id: String,
    pub roles: RoleArns,
    /// RFC 3339.
    pub requested_at: String,
    /// RFC 3339.
    pub last_modified_at: String,
}

/// Everything `CreateEnvironmentAccountConnection` is sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateRequest {
    /// Idempotency token derived from the resource's uid: a repeat returns the same connection.
    pub client_token: String,
    pub environment_name: String,
    pub management_account_id: String,
    pub roles: RoleArns,
    pub tags: Tags,
}

pub use crate::aws::error::{ErrorClass, ProtonError, Retry};

/// The Create's operation name, as its errors carry it.
pub const CREATE: &str = "CreateEnvironmentAccountConnection";

const LIST: &str = "ListEnvironmentAccountConnections";

/// The code of a List page refused for its token (see [`page_refused`]).
pub const PAGE_TOKEN_REFUSED: &str = "PageTokenRefused";

/// A ValidationException answered to a List page asked for with a token is the token's (an
/// expired one, most likely: a list paused for long), not the request's: it is retried with
/// backoff from the first page (reason `AwsError`), never taken for an invalid spec (which
/// would stall a policy until it is edited).
fn page_refused(e: ProtonError, paged: bool) -> ProtonError {
    if !paged || e.class != ErrorClass::Validation {
        return e;
    }
    ProtonError {
        class: ErrorClass::Other,
        code: PAGE_TOKEN_REFUSED.into(),
        message: format!(
            "{}: {} (the next page's token was refused, perhaps expired: listing again from the first page)",
            e.code, e.message
        ),
        ..e
    }
}

/// Where and how to reach Proton.
#[derive(Clone, Debug)]
pub struct ProtonSettings {
    /// Region of new connections whose spec names none (and of STS calls).
    pub default_region: String,
    /// A Proton-compatible endpoint replacing AWS's (the emulator, a proxy).
    pub endpoint: Option<String>,
    /// An STS endpoint replacing AWS's, for GetCallerIdentity (the emulator serves STS on its
    /// Proton port).
    pub sts_endpoint: Option<String>,
    /// Per-attempt timeout of each call.
    pub timeout: Duration,
}

/// The Proton port shared by all workers: one SDK client per region, one call budget, and the
/// caller's identity.
#[derive(Clone)]
pub struct Proton {
    base: aws_sdk_proton::config::Builder,
    settings: ProtonSettings,
    clients: Arc<Mutex<HashMap<(AwsIdentity, String), Client>>>,
    /// STS with the controller's own credentials: assumes the mapped roles.
    sts: aws_sdk_sts::Client,
    sessions: Arc<Mutex<HashMap<RoleIdentity, Arc<RoleSession>>>>,
    budget: CallBudget,
    metrics: Metrics,
    identity: CallerIdentity,
    /// The PENDING connections of each credentials and region, listed for polls.
    pending: Arc<PendingLists<u64>>,
    /// The regions where Proton does not answer, and its returns.
    reach: Arc<Reach>,
}

impl Proton {
    /// From a loaded AWS configuration (credentials chain, `AWS_ENDPOINT_URL_PROTON`, ...).
    pub fn from_sdk_config(
        sdk: &aws_config::SdkConfig,
        settings: ProtonSettings,
        budget: CallBudget,
        metrics: Metrics,
    ) -> Self {
        let mut sts = aws_sdk_sts::config::Builder::from(sdk)
            .region(Region::new(settings.default_region.clone()));
        if let Some(endpoint) = &settings.sts_endpoint {
            sts = sts.endpoint_url(endpoint);
        }
        Self::from_builder(
            aws_sdk_proton::config::Builder::from(sdk),
            sts,
            settings,
            budget,
            metrics,
        )
    }

    /// With static test credentials, for the emulator (tests, demos).
    pub fn with_static_credentials(
        settings: ProtonSettings,
        budget: CallBudget,
        metrics: Metrics,
    ) -> Self {
        let credentials = Credentials::new("AKIDEMULATOR", "emulator", None, None, "static");
        let base = aws_sdk_proton::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .credentials_provider(credentials.clone());
        let mut sts = aws_sdk_sts::config::Builder::new()
            .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
            .credentials_provider(credentials)
            .region(aws_sdk_sts::config::Region::new(
                settings.default_region.clone(),
            ));
        if let Some(endpoint) = settings
            .sts_endpoint
            .as_ref()
            .or(settings.endpoint.as_ref())
        {
            sts = sts.endpoint_url(endpoint);
        }
        Self::from_builder(base, sts, settings, budget, metrics)
    }

    fn from_builder(
        base: aws_sdk_proton::config::Builder,
        sts: aws_sdk_sts::config::Builder,
        settings: ProtonSettings,
        budget: CallBudget,
        metrics: Metrics,
    ) -> Self {
        let sts = sts
            .retry_config(aws_sdk_sts::config::retry::RetryConfig::standard())
            .timeout_config(
                aws_sdk_sts::config::timeout::TimeoutConfig::builder()
                    .operation_attempt_timeout(settings.timeout)
                    .connect_timeout(Duration::from_secs(5))
                    .build(),
            );
        let sts = aws_sdk_sts::Client::from_conf(sts.build());
        let reach = Arc::new(Reach::new(metrics.clone()));
        let identity = CallerIdentity::new(sts.clone(), reach.clone(), metrics.clone());
        // Retries are the controller's (per-object backoff, shared budget), so every attempt is
        // counted and rate-limited; the SDK's own retry loop would hide both.
        let mut base = base
            .retry_config(aws_sdk_proton::config::retry::RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_attempt_timeout(settings.timeout)
                    .connect_timeout(Duration::from_secs(5))
                    .build(),
            );
        if let Some(endpoint) = &settings.endpoint {
            base = base.endpoint_url(endpoint);
        }
        Proton {
            base,
            settings,
            clients: Arc::default(),
            sts,
            sessions: Arc::default(),
            budget,
            metrics,
            identity,
            pending: Arc::default(),
            reach,
        }
    }

    /// Region of new connections whose spec names none.
    pub fn default_region(&self) -> &str {
        &self.settings.default_region
    }

    /// The account `identity` acts as: STS GetCallerIdentity for the controller's own
    /// credentials (cached), the assumed role's account for a mapped role.
    pub async fn caller_account(&self, identity: &AwsIdentity) -> Result<String, ProtonError> {
        match identity {
            AwsIdentity::Own => self.identity.account().await,
            AwsIdentity::Role(role) => self.session(role).assume().await.map(|a| a.account),
        }
    }

    /// The account `identity` acts as, if known without a call: the controller's own as STS
    /// last answered, a mapped role's from its ARN.
    pub fn known_account(&self, identity: &AwsIdentity) -> Option<String> {
        match identity {
            AwsIdentity::Own => self.identity.known(),
            AwsIdentity::Role(role) => role.account().map(str::to_string),
        }
    }

    /// The one session of a role, shared by every resource that acts with it.
    fn session(&self, role: &RoleIdentity) -> Arc<RoleSession> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions
            .entry(role.clone())
            .or_insert_with(|| {
                Arc::new(RoleSession::new(
                    role.clone(),
                    self.sts.clone(),
                    self.reach.clone(),
                    self.metrics.clone(),
                ))
            })
            .clone()
    }

    fn client(&self, identity: &AwsIdentity, region: &str) -> Client {
        let key = (identity.clone(), region.to_string());
        let mut clients = match self.clients.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(client) = clients.get(&key) {
            return client.clone();
        }
        let mut config = self.base.clone().region(Region::new(region.to_string()));
        if let AwsIdentity::Role(role) = identity {
            // The session caches the credentials (and drops them when the service says they
            // expired); a second cache in the client would keep signing with the dropped ones.
            config = config
                .credentials_provider(SessionCredentials(self.session(role)))
                .identity_cache(aws_sdk_proton::config::IdentityCache::no_cache());
        }
        let client = Client::from_conf(config.build());
        clients.insert(key, client.clone());
        client
    }

    /// Runs one call if the budget admits it for this caller and class, and records its outcome.
    async fn call<T, E, F>(
        &self,
        ticket: &Ticket<'_>,
        region: &str,
        operation: &'static str,
        fut: F,
    ) -> Result<T, ProtonError>
    where
        F: std::future::Future<
                Output = Result<T, SdkError<E, aws_smithy_runtime_api::http::Response>>,
            >,
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let _trial = self.trial(ticket, region, operation)?;
        self.prepare(ticket, operation).await?;
        self.send(ticket, region, operation, fut).await
    }

    /// Whether a call may go to `region` now (see [`Reach::trial`]); probes always go, as they
    /// are what finds an outage over. Asked before the call takes its slot in the budget: a call
    /// not sent uses none.
    fn trial(
        &self,
        ticket: &Ticket<'_>,
        region: &str,
        operation: &'static str,
    ) -> Result<Option<reach::Trial<'_>>, ProtonError> {
        if ticket.key == PREFLIGHT
            || ticket
                .trial
                .is_some_and(|held| self.reach.holds(held, region))
        {
            return Ok(None);
        }
        self.reach
            .trial(region, operation)
            .map(Some)
            .inspect_err(|e| self.not_sent(e))
    }

    /// A call of `operation` in `region` that would not be sent now (see [`Reach::refusing`]),
    /// counted: asked by a poll before the shared list it would wait for or send, which a call
    /// not sent does not need. (A Create takes its turn instead: [`Proton::hold_trial`].)
    fn unreached(&self, region: &str, operation: &'static str) -> Option<ProtonError> {
        let refused = self.reach.refusing(region, operation)?;
        self.not_sent(&refused);
        Some(refused)
    }

    /// Takes the turn of `region` (see [`Reach::trial`]) for a call of `operation` made later
    /// with it in its [`Ticket::trial`], held across the work that goes before the call (a
    /// Create's slot and intent): no other call takes the region's one turn between them, which
    /// would leave an intent written for a Create not sent. Refused: nothing is counted (see
    /// [`Proton::not_sent`]).
    pub fn hold_trial(
        &self,
        region: &str,
        operation: &'static str,
    ) -> Result<reach::Trial<'_>, ProtonError> {
        self.reach.trial(region, operation)
    }

    /// Counts a call that was not sent: its region does not answer (see [`Reach::trial`]).
    pub fn not_sent(&self, e: &ProtonError) {
        self.metrics.aws_call(e.operation, "unreached");
        tracing::debug!(error = %e, "not sent");
    }

    /// What a call needs before it is sent: its slot in the budget, and a mapped role's
    /// credentials.
    async fn prepare(
        &self,
        ticket: &Ticket<'_>,
        operation: &'static str,
    ) -> Result<(), ProtonError> {
        if !ticket.admitted {
            self.admit(ticket, operation).await?;
        }
        // A role that cannot be assumed is reported as such, not as a failure to sign.
        if let AwsIdentity::Role(role) = ticket.identity {
            self.session(role).assume().await?;
        }
        Ok(())
    }

    /// Sends a prepared call, and records its outcome.
    async fn send<T, E, F>(
        &self,
        ticket: &Ticket<'_>,
        region: &str,
        operation: &'static str,
        fut: F,
    ) -> Result<T, ProtonError>
    where
        F: std::future::Future<
                Output = Result<T, SdkError<E, aws_smithy_runtime_api::http::Response>>,
            >,
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let result = self
            .reach
            .observed(region, operation, ticket.key == PREFLIGHT, fut)
            .await;
        self.metrics.aws_class_call(ticket.class);
        match &result {
            Ok(_) => self.metrics.aws_call(operation, "success"),
            Err(e) => {
                self.metrics.aws_call(operation, e.reason());
                if e.class == ErrorClass::Throttled {
                    self.metrics.aws_throttled();
                    self.budget.throttled(tokio::time::Instant::now());
                }
                // The service says the role's credentials expired before the session thought
                // (clock skew, a revoked session): the next call assumes the role again.
                if e.code.starts_with("ExpiredToken")
                    && let AwsIdentity::Role(role) = ticket.identity
                {
                    self.session(role).forget();
                }
            }
        }
        result
    }

    /// Takes a slot in the call budget for `ticket`'s caller and class: waits a moment for it,
    /// or answers Deferred when the slot is further away (booked) or there is no room. A call
    /// its step's booking paid for goes at once.
    pub async fn admit(
        &self,
        ticket: &Ticket<'_>,
        operation: &'static str,
    ) -> Result<(), ProtonError> {
        let calls = ticket.calls;
        let admitted = if calls.take_prepaid() {
            Ok(())
        } else {
            let asked = tokio::time::Instant::now();
            match self
                .budget
                .admit_in_step(ticket.key, ticket.class, asked, calls.made())
            {
                Admission::Go => Ok(()),
                Admission::Prepaid(more) => {
                    calls.prepaid.store(more, Ordering::Relaxed);
                    Ok(())
                }
                Admission::Wait(wait) => {
                    self.metrics.budget_wait(ticket.class, wait);
                    tokio::time::sleep(wait).await;
                    Ok(())
                }
                // Counted once per deferred reconcile, by the controller.
                Admission::Later(at) => Err(ProtonError::deferred(
                    operation,
                    Some(at.saturating_duration_since(asked)),
                )),
                Admission::Busy => Err(ProtonError::deferred(operation, None)),
            }
        };
        if admitted.is_ok() {
            calls.made.fetch_add(1, Ordering::Relaxed);
        }
        admitted
    }

    /// The resource is gone: drop its booking in the budget.
    pub fn forget(&self, key: &str) {
        self.budget.forget(key);
    }

    /// Keeps the budget's bookings of these resources only.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.budget.retain(keep);
    }

    /// Sends a Create if it can still go before `send_by` (the end of the window its recorded
    /// intent opened; None: no window, nothing is sent) once its slot and credentials are had,
    /// else answers [`ProtonError::late`]. An error of another operation (the AssumeRole that a
    /// mapped role's credentials need) also means it was never sent.
    pub async fn create(
        &self,
        ticket: &Ticket<'_>,
        region: &str,
        req: &CreateRequest,
        send_by: Option<jiff::Timestamp>,
    ) -> Result<Connection, ProtonError> {
        let client = self.client(ticket.identity, region);
        let _trial = self.trial(ticket, region, CREATE)?;
        self.prepare(ticket, CREATE).await?;
        if send_by.is_none_or(|by| jiff::Timestamp::now() >= by) {
            return Err(ProtonError::late(CREATE));
        }
        let sent = tokio::time::Instant::now();
        let out = self
            .send(
                ticket,
                region,
                CREATE,
                client
                    .create_environment_account_connection()
                    .client_token(&req.client_token)
                    .environment_name(&req.environment_name)
                    .management_account_id(&req.management_account_id)
                    .set_role_arn(req.roles.role_arn.clone())
                    .set_codebuild_role_arn(req.roles.codebuild_role_arn.clone())
                    .set_component_role_arn(req.roles.component_role_arn.clone())
                    .set_tags(Some(to_sdk_tags(&req.tags)?))
                    .send(),
            )
            .await?;
        let c = connection_of(CREATE, out.environment_account_connection())?;
        if c.state == ConnectionState::Pending {
            self.pending
                .saw(&pending_key(ticket.identity, region), &c.id, sent);
        }
        Ok(c)
    }

    pub async fn get(
        &self,
        ticket: &Ticket<'_>,
        region: &str,
        id: &str,
    ) -> Result<Connection, ProtonError> {
        let client = self.client(ticket.identity, region);
        let out = self
            .call(
                ticket,
                region,
                "GetEnvironmentAccountConnection",
                client.get_environment_account_connection().id(id).send(),
            )
            .await?;
        connection_of(
            "GetEnvironmentAccountConnection",
            out.environment_account_connection(),
        )
    }

    /// A poll of a PENDING connection, `recorded` as this controller last saw it: answered from
    /// the list of the caller's PENDING connections in `region` if one began after the
    /// connection was last seen (listing them again if none did) and shows it just as recorded,
    /// else with a Get. See [`crate::aws::pending`].
    pub async fn poll(
        &self,
        ticket: &Ticket<'_>,
        region: &str,
        recorded: &Connection,
    ) -> Result<Connection, ProtonError> {
        let id = recorded.id.as_str();
        match self
            .listed_unchanged(
                ticket.identity,
                region,
                &[(CompactId::of(id), listed_as(recorded))],
            )
            .await
        {
            // Shown as recorded; or seen so by a list too recent to list again: the poll
            // stretches to the next list, as the poller's do.
            Ok(shown) if shown.first().is_some_and(|a| *a != PollAnswer::Otherwise) => {
                return Ok(recorded.clone());
            }
            Ok(_) => {}
            Err(e) if e.class == ErrorClass::Deferred => return Err(e),
            // Nothing answers there (the list found so, or was not sent for it): a Get would
            // wait out the call timeout again, or not be sent. Nor would a Get with credentials
            // the client could not load for the list. A refusal (a policy without
            // ListEnvironmentAccountConnections) still leaves the poll to its Get.
            Err(e)
                if e.class == ErrorClass::Unanswered && self.reach.is_away(region)
                    || e.failed_in_client() =>
            {
                return Err(e);
            }
            // Polls never depend on the list: a list refused (a policy without
            // ListEnvironmentAccountConnections, a fault) leaves this poll to its Get.
            Err(e) => {
                tracing::debug!(error = %e, "listing PENDING connections failed; reading with a Get")
            }
        }
        let asked = tokio::time::Instant::now();
        let c = self.get(ticket, region, id).await?;
        if c.state == ConnectionState::Pending {
            self.pending
                .saw(&pending_key(ticket.identity, region), id, asked);
        }
        Ok(c)
    }

    /// Whether the list of `identity`'s PENDING connections in `region` shows each of `polls`
    /// (an id, and what was recorded of that connection as [`listed_as`] gives it) just as
    /// recorded, listing them again first if the newest list does not speak for one of them.
    /// What it shows so is seen as of that list; anything else is for a Get to read. A list is
    /// not begun sooner than its spacing after the last (see [`crate::aws::pending`]): a poll
    /// the last list cannot answer then waits for the next. `Err`: the list could not be made
    /// (deferred by the budget, or failed).
    pub async fn listed_unchanged(
        &self,
        identity: &AwsIdentity,
        region: &str,
        polls: &[(CompactId, u64)],
    ) -> Result<Vec<PollAnswer>, ProtonError> {
        let key = pending_key(identity, region);
        let shared = self.pending.listing(&key);
        let mut listing = match shared.try_lock() {
            Ok(listing) => listing,
            // A list under way: where nothing answers, it may be the one call let through,
            // waiting out the call timeout. Not waited for then.
            Err(_) => match self.unreached(region, LIST) {
                Some(refused) => return Err(refused),
                None => shared.lock().await,
            },
        };
        self.pending.note_seen(&key, &mut listing);
        let now = tokio::time::Instant::now();
        let later = listing.next_spaced().filter(|at| now < *at);
        if later.is_none() && polls.iter().any(|(id, _)| listing.of(id) == Listed::Stale) {
            let via_sts = matches!(identity, AwsIdentity::Role(_));
            if let Some(back) = self.reach.answered_again_at(region, via_sts) {
                listing.answered_again(back);
            }
            if let Some(e) = listing.failing(now) {
                return Err(e.clone());
            }
            if let Some(refused) = self.unreached(region, LIST) {
                return Err(refused);
            }
            let calls = StepCalls::default();
            let ticket = Ticket {
                identity,
                key: &key,
                class: CallClass::Poll,
                admitted: false,
                trial: None,
                calls: &calls,
            };
            match self.list_pending(&mut listing, &ticket, region).await {
                Ok(()) => {}
                // Not sent: nothing learned of the list, no wait before the next.
                Err(e) if e.class == ErrorClass::Deferred || e.is_unreached() => return Err(e),
                Err(e) => {
                    listing.failed(e.clone(), now, tokio::time::Instant::now());
                    return Err(e);
                }
            }
        }
        let began = listing.began();
        Ok(polls
            .iter()
            .map(|(id, recorded)| match listing.of(id) {
                Listed::Shows(shown) if shown == recorded => {
                    if let Some(began) = began {
                        listing.saw(id, began);
                    }
                    PollAnswer::AsRecorded
                }
                Listed::Stale => match later {
                    Some(at) => PollAnswer::Wait(at),
                    None => PollAnswer::Otherwise,
                },
                _ => PollAnswer::Otherwise,
            })
            .collect())
    }

    /// Lists the caller's PENDING connections in `region` into `listing`, going on from a list
    /// a deferral stopped part-way.
    async fn list_pending(
        &self,
        listing: &mut crate::aws::pending::Listing<u64>,
        ticket: &Ticket<'_>,
        region: &str,
    ) -> Result<(), ProtonError> {
        let query = ListQuery {
            requested_by: EnvironmentAccountConnectionRequesterAccountType::EnvironmentAccount,
            environment_name: None,
            status: Some(EnvironmentAccountConnectionStatus::Pending),
        };
        let now = tokio::time::Instant::now();
        let (began, mut found, mut next) = match listing.resume(now) {
            Some(p) => (p.began, p.found, Some(p.next)),
            None => (now, HashMap::new(), None),
        };
        loop {
            // Each page is a step of its own: a list deferred part-way goes on from its next
            // page (`pause`), so its pages neither go as work nor book the ones before them.
            let calls = StepCalls::default();
            let page_ticket = Ticket {
                calls: &calls,
                ..*ticket
            };
            let (page, token) = match self
                .list_page(&page_ticket, region, &query, next.clone())
                .await
            {
                Ok(answer) => answer,
                Err(e) => {
                    if let Some(token) = next.filter(|_| e.code != PAGE_TOKEN_REFUSED) {
                        listing.pause(Partial {
                            began,
                            found,
                            next: token,
                            paused: tokio::time::Instant::now(),
                        });
                    }
                    return Err(e);
                }
            };
            found.extend(page.iter().map(|c| (CompactId::of(&c.id), listed_as(c))));
            match token {
                Some(token) => next = Some(token),
                None => {
                    listing.finish(began, found);
                    return Ok(());
                }
            }
        }
    }

    pub async fn update(
        &self,
        ticket: &Ticket<'_>,
        region: &str,
        id: &str,
        roles: &RoleArns,
    ) -> Result<Connection, ProtonError> {
        let client = self.client(ticket.identity, region);
        let out = self
            .call(
                ticket,
                region,
                "UpdateEnvironmentAccountConnection",
                client
                    .update_environment_account_connection()
                    .id(id)
                    .set_role_arn(roles.role_arn.clone())
                    .set_codebuild_role_arn(roles.codebuild_role_arn.clone())
                    .set_component_role_arn(roles.component_role_arn.clone())
                    .send(),
            )
            .await?;
        connection_of(
            "UpdateEnvironmentAccountConnection",
            out.environment_account_connection(),
        )
    }

    pub async fn delete(
        &self,
        ticket: &Ticket<'_>,
        region: &str,
        id: &str,
    ) -> Result<(), ProtonError> {
        let client = self.client(ticket.identity, region);
        self.call(
            ticket,
            region,
            "DeleteEnvironmentAccountConnection",
            client.delete_environment_account_connection().id(id).send(),
        )
        .await
        .map(|_| ())
    }

    /// Every connection of this environment account for the environment, all pages.
    pub async fn list_for_environment(
        &self,
        ticket: &Ticket<'_>,
        region: &str,
        environment_name: &str,
    ) -> Result<Vec<Connection>, ProtonError> {
        self.list(
            ticket,
            region,
            EnvironmentAccountConnectionRequesterAccountType::EnvironmentAccount,
            Some(environment_name),
            None,
        )
        .await
    }

    /// The connection requests made to the caller's account (`requestedBy=MANAGEMENT_ACCOUNT`)
    /// that are still PENDING, all pages: what the management side decides on.
    pub async fn list_requests(
        &self,
        ticket: &Ticket<'_>,
        region: &str,
    ) -> Result<Vec<Connection>, ProtonError> {
        self.list(
            ticket,
            region,
            EnvironmentAccountConnectionRequesterAccountType::ManagementAccount,
            None,
            Some(EnvironmentAccountConnectionStatus::Pending),
        )
        .await
    }

    /// One cheap read (`ListEnvironmentAccountConnections`, one result) in `region`: does the
    /// Proton endpoint answer these credentials there? Outside the call budget (a preflight
    /// check, not a reconcile).
    pub async fn probe(&self, identity: &AwsIdentity, region: &str) -> Result<(), ProtonError> {
        let ticket = Ticket {
            identity,
            key: PREFLIGHT,
            class: CallClass::Work,
            admitted: true,
            trial: None,
            calls: &StepCalls::default(),
        };
        let client = self.client(identity, region);
        self.call(
            &ticket,
            region,
            LIST,
            client
                .list_environment_account_connections()
                .requested_by(EnvironmentAccountConnectionRequesterAccountType::EnvironmentAccount)
                .max_results(1)
                .send(),
        )
        .await
        .map(|_| ())
    }

    /// Sees Proton answer again after an outage (see [`crate::aws::reach`]).
    pub fn returns(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reach.returns()
    }

    /// Probes each region where Proton (or STS) does not answer until it does (see
    /// [`crate::aws::reach`]), with the controller's own credentials (a role the outage's call
    /// used may no longer be assumable; any answer, a refusal too, ends the outage); runs while
    /// the controller does. Idle while every region answers. Each region on its own schedule:
    /// a probe that gets no answer holds up no other.
    pub async fn probe_while_away(self) {
        // What was said of each region's outages.
        let mut warned: HashMap<String, Warned> = HashMap::new();
        // When each region was last probed.
        let mut probed: HashMap<String, Instant> = HashMap::new();
        let mut probing = tokio::task::JoinSet::new();
        let mut in_flight: HashMap<String, tokio::task::AbortHandle> = HashMap::new();
        loop {
            if in_flight.is_empty() {
                self.reach.some_away().await;
            }
            while probing.try_join_next().is_some() {}
            in_flight.retain(|_, probe| !probe.is_finished());
            for region in self.reach.forget_untried() {
                tracing::warn!(%region, untried_secs = reach::FORGOTTEN_AFTER.as_secs(), "{} still does not answer, but no call has found it away since: no longer probed", reach::service(&region));
            }
            let now = Instant::now();
            let away = self.reach.away();
            probed.retain(|region, _| away.iter().any(|(r, _)| r == region));
            warned.retain(|region, w| {
                away.iter().any(|(r, _)| r == region)
                    || now.duration_since(w.at) < reach::WARN_AGAIN_AFTER
            });
            for (region, unreached) in away {
                // Warned of once it lasts: a connection a pod closed is over at the next probe.
                if now.duration_since(unreached.since) >= reach::OUTAGE {
                    warn_once(&mut warned, &region, &unreached, now);
                }
                let last = probed.get(&region).copied().unwrap_or(unreached.since);
                if in_flight.contains_key(&region) || !unreached.probe_due(last, now) {
                    continue;
                }
                probed.insert(region.clone(), now);
                let proton = self.clone();
                let probe_of = region.clone();
                let probe = probing.spawn(async move {
                    let region = probe_of;
                    // Recorded by `call` (by the identity, for STS).
                    let probe = async {
                        if region == reach::STS {
                            proton.identity.probe().await
                        } else {
                            proton.probe(&AwsIdentity::Own, &region).await
                        }
                    };
                    match tokio::time::timeout(reach::PROBE_TIMEOUT, probe).await {
                        Ok(Err(e)) => tracing::debug!(%region, error = %e, "probed"),
                        Err(_) => tracing::debug!(%region, "probed: no answer"),
                        Ok(Ok(())) => {}
                    }
                });
                in_flight.insert(region, probe);
            }
            tokio::time::sleep(PROBE_TICK).await;
        }
    }

    /// `ListEnvironmentAccountConnections`, all pages.
    async fn list(
        &self,
        ticket: &Ticket<'_>,
        region: &str,
        requested_by: EnvironmentAccountConnectionRequesterAccountType,
        environment_name: Option<&str>,
        status: Option<EnvironmentAccountConnectionStatus>,
    ) -> Result<Vec<Connection>, ProtonError> {
        let query = ListQuery {
            requested_by,
            environment_name,
            status,
        };
        let mut found = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let (page, token) = self.list_page(ticket, region, &query, next.take()).await?;
            found.extend(page);
            match token {
                Some(token) => next = Some(token),
                None => return Ok(found),
            }
        }
    }

    /// One page of `ListEnvironmentAccountConnections`, and the next page's token if there is
    /// one.
    async fn list_page(
        &self,
        ticket: &Ticket<'_>,
        region: &str,
        query: &ListQuery<'_>,
        next: Option<String>,
    ) -> Result<(Vec<Connection>, Option<String>), ProtonError> {
        let client = self.client(ticket.identity, region);
        let paged = next.is_some();
        let out = self
            .call(
                ticket,
                region,
                LIST,
                client
                    .list_environment_account_connections()
                    .requested_by(query.requested_by.clone())
                    .set_environment_name(query.environment_name.map(str::to_string))
                    .set_statuses(query.status.clone().map(|s| vec![s]))
                    .set_next_token(next)
                    .send(),
            )
            .await
            .map_err(|e| page_refused(e, paged))?;
        let page = out
            .environment_account_connections()
            .iter()
            .map(from_sdk_summary)
            .collect::<Result<Vec<_>, _>>()?;
        let token = out
            .next_token()
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        Ok((page, token))
    }

    /// `AcceptEnvironmentAccountConnection`, as the management account.
    pub async fn accept(
        &self,
        ticket: &Ticket<'_>,
        region: &str,
        id: &str,
    ) -> Result<Connection, ProtonError> {
        let client = self.client(ticket.identity, region);
        let out = self
            .call(
                ticket,
                region,
                "AcceptEnvironmentAccountConnection",
                client.accept_environment_account_connection().id(id).send(),
            )
            .await?;
        connection_of(
            "AcceptEnvironmentAccountConnection",
            out.environment_account_connection(),
        )
    }

    /// `RejectEnvironmentAccountConnection`, as the management account.
    pub async fn reject(
        &self,
        ticket: &Ticket<'_>,
        region: &str,
        id: &str,
    ) -> Result<Connection, ProtonError> {
        let client = self.client(ticket.identity, region);
        let out = self
            .call(
                ticket,
                region,
                "RejectEnvironmentAccountConnection",
                client.reject_environment_account_connection().id(id).send(),
            )
            .await?;
        connection_of(
            "RejectEnvironmentAccountConnection",
            out.environment_account_connection(),
        )
    }

    /// The environment's connections to `management_account_id` (List summaries).
    pub async fn lookup(
        &self,
        ticket: &Ticket<'_>,
        region: &str,
        environment_name: &str,
        management_account_id: &str,
    ) -> Result<Vec<Connection>, ProtonError> {
        let mut found = self
            .list_for_environment(ticket, region, environment_name)
            .await?;
        found.retain(|c| c.management_account_id == management_account_id);
        Ok(found)
    }

    /// The environment's connection tagged with this resource's uid, with its tags: lists the
    /// environment's connections and reads each one's tags until it is found. If none is, a
    /// connection tagged with the resource's namespace and name under another uid is named.
    pub async fn find_owned(
        &self,
        ticket: &Ticket<'_>,
        region: &str,
        environment_name: &str,
        owner: (&str, &str, &str),
    ) -> Result<Owned, ProtonError> {
        let (uid, namespace, name) = owner;
        let mut namesake = None;
        for connection in self
            .list_for_environment(ticket, region, environment_name)
            .await?
        {
            let tags = match self.list_tags(ticket, region, &connection.arn).await {
                Ok(tags) => tags,
                // Deleted between the List and now (List lags behind): not ours to find.
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            };
            let tag = |key| tags.get(key).map(String::as_str);
            match tag(TAG_UID) {
                Some(owner) if owner == uid => return Ok(Owned::Found(connection, tags)),
                Some(owner)
                    if namesake.is_none()
                        && tag(TAG_NAMESPACE) == Some(namespace)
                        && tag(TAG_NAME) == Some(name) =>
                {
                    namesake = Some(Namesake {
                        id: connection.id.clone(),
                        arn: connection.arn.clone(),
                        owner: owner.to_string(),
                    });
                }
                _ => {}
            }
        }
        Ok(namesake.map_or(Owned::Nothing, Owned::Namesake))
    }

    /// All tags of a resource, all pages.
    pub async fn list_tags(
        &self,
        ticket: &Ticket<'_>,
        region: &str,
        arn: &str,
    ) -> Result<Tags, ProtonError> {
        let client = self.client(ticket.identity, region);
        let mut tags = Tags::new();
        let mut next: Option<String> = None;
        loop {
            let out = self
                .call(
                    ticket,
                    region,
                    "ListTagsForResource",
                    client
                        .list_tags_for_resource()
                        .resource_arn(arn)
                        .set_next_token(next.take())
                        .send(),
                )
                .await?;
            for tag in out.tags() {
                tags.insert(tag.key().to_string(), tag.value().to_string());
            }
            match out.next_token() {
                Some(token) if !token.is_empty() => next = Some(token.to_string()),
                _ => return Ok(tags),
            }
        }
    }

    pub async fn tag(
        &self,
        ticket: &Ticket<'_>,
        region: &str,
        arn: &str,
        tags: &Tags,
    ) -> Result<(), ProtonError> {
        let client = self.client(ticket.identity, region);
        self.call(
            ticket,
            region,
            "TagResource",
            client
                .tag_resource()
                .resource_arn(arn)
                .set_tags(Some(to_sdk_tags(tags)?))
                .send(),
        )
        .await
        .map(|_| ())
    }

    pub async fn untag(
        &self,
        ticket: &Ticket<'_>,
        region: &str,
        arn: &str,
        keys: &[String],
    ) -> Result<(), ProtonError> {
        let client = self.client(ticket.identity, region);
        self.call(
            ticket,
            region,
            "UntagResource",
            client
                .untag_resource()
                .resource_arn(arn)
                .set_tag_keys(Some(keys.to_vec()))
                .send(),
        )
        .await
        .map(|_| ())
    }
}

fn to_sdk_tags(tags: &Tags) -> Result<Vec<Tag>, ProtonError> {
    tags.iter()
        .map(|(k, v)| {
            Tag::builder()
                .key(k)
                .value(v)
                .build()
                .map_err(|e| ProtonError {
                    operation: "TagResource",
                    class: ErrorClass::Validation,
                    code: "InvalidTag".into(),
                    message: e.to_string(),
                    retry_in: None,
                })
        })
        .collect()
}

fn from_sdk_state(
    state: &EnvironmentAccountConnectionStatus,
) -> Result<ConnectionState, ProtonError> {
    match state {
        EnvironmentAccountConnectionStatus::Pending => Ok(ConnectionState::Pending),
        EnvironmentAccountConnectionStatus::Connected => Ok(ConnectionState::Connected),
        EnvironmentAccountConnectionStatus::Rejected => Ok(ConnectionState::Rejected),
        other => Err(ProtonError {
            operation: "GetEnvironmentAccountConnection",
            class: ErrorClass::Other,
            code: "UnknownStatus".into(),
            message: format!(
                "Proton reported an unknown connection status {:?}",
                other.as_str()
            ),
            retry_in: None,
        }),
    }
}

/// The connection member is required by the model; a peer that leaves it out is broken.
fn connection_of(
    operation: &'static str,
    c: Option<&aws_sdk_proton::types::EnvironmentAccountConnection>,
) -> Result<Connection, ProtonError> {
    match c {
        // What the answer carries is the operation's: a Create answered with a state this
        // controller does not know was carried out.
        Some(c) => from_sdk_connection(c).map_err(|e| ProtonError { operation, ..e }),
        None => Err(ProtonError {
            operation,
            class: ErrorClass::Other,
            code: "MalformedResponse".into(),
            message: "the response carries no environmentAccountConnection".into(),
            retry_in: None,
        }),
    }
}

fn from_sdk_connection(
    c: &aws_sdk_proton::types::EnvironmentAccountConnection,
) -> Result<Connection, ProtonError> {
    Ok(Connection {
        id: c.id().to_string(),
        arn: c.arn().to_string(),
        state: from_sdk_state(c.status())?,
        environment_name: c.environment_name().to_string(),
        management_account_id: c.management_account_id().to_string(),
        environment_account_id: c.environment_account_id().to_string(),
        roles: RoleArns {
            role_arn: non_empty(c.role_arn()),
            codebuild_role_arn: c.codebuild_role_arn().map(str::to_string),
            component_role_arn: c.component_role_arn().map(str::to_string),
        },
        requested_at: rfc3339(c.requested_at()),
        last_modified_at: rfc3339(c.last_modified_at()),
    })
}

fn from_sdk_summary(
    summary: &aws_sdk_proton::types::EnvironmentAccountConnectionSummary,
) -> Result<Connection, ProtonError> {
    Ok(Connection {
        id: summary.id().to_string(),
        arn: summary.arn().to_string(),
        state: from_sdk_state(summary.status())?,
        environment_name: summary.environment_name().to_string(),
        management_account_id: summary.management_account_id().to_string(),
        environment_account_id: summary.environment_account_id().to_string(),
        roles: RoleArns {
            role_arn: non_empty(summary.role_arn()),
            codebuild_role_arn: None,
            component_role_arn: summary.component_role_arn().map(str::to_string),
        },
        requested_at: rfc3339(summary.requested_at()),
        last_modified_at: rfc3339(summary.last_modified_at()),
    })
}

/// What a `ListEnvironmentAccountConnections` asks for.
struct ListQuery<'a> {
    requested_by: EnvironmentAccountConnectionRequesterAccountType,
    environment_name: Option<&'a str>,
    status: Option<EnvironmentAccountConnectionStatus>,
}

/// The key of the shared list of PENDING connections made with `identity`'s credentials in
/// `region` (its listing, and its slot in the budget).
fn pending_key(identity: &AwsIdentity, region: &str) -> String {
    crate::aws::budget::pending_list_key(&identity.key(), region)
}

/// What a list shows of a connection (all but its CodeBuild role, which a list does not show),
/// as one number: a list keeps only this of each connection.
pub fn listed_as(c: &Connection) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    (
        &c.id,
        &c.arn,
        c.state,
        &c.environment_name,
        &c.management_account_id,
        &c.environment_account_id,
        &c.roles.role_arn,
        &c.roles.component_role_arn,
        &c.requested_at,
        &c.last_modified_at,
    )
        .hash(&mut h);
    h.finish()
}

/// `roleArn` is a required output member, so a connection created without one reports "".
fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn rfc3339(t: &aws_smithy_types::DateTime) -> String {
    // Whole seconds: the status must not change when nothing but sub-second noise does.
    let secs = aws_smithy_types::DateTime::from_secs(t.secs());
    secs.fmt(Format::DateTime)
        .unwrap_or_else(|_| t.secs().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_refused_for_its_token_is_listed_again_not_an_invalid_spec() {
        let refused = || ProtonError {
            operation: "ListEnvironmentAccountConnections",
            class: ErrorClass::Validation,
            code: "ValidationException".into(),
            message: "The nextToken has expired".into(),
            retry_in: None,
        };
        let first_page = page_refused(refused(), false);
        assert_eq!(
            first_page,
            refused(),
            "the first page's refusal is the request's"
        );
        let later = page_refused(refused(), true);
        assert_eq!(
            (later.class, later.code.as_str(), later.class.retry()),
            (ErrorClass::Other, PAGE_TOKEN_REFUSED, Retry::Backoff)
        );
        assert!(later.message.contains("The nextToken has expired"));
        let throttled = ProtonError {
            class: ErrorClass::Throttled,
            ..refused()
        };
        assert_eq!(page_refused(throttled.clone(), true), throttled);
    }

    /// An endpoint that flaps is one warning per 5 minutes; an outage that began within them is
    /// warned of when they are up, if it still lasts.
    #[tokio::test(start_paused = true)]
    async fn each_outage_is_warned_of_once_and_a_region_at_most_every_5_minutes() {
        let mut warned = HashMap::new();
        let region = "us-east-1";
        let t0 = Instant::now();
        let outage = |since: Instant| reach::Unreached {
            since,
            last_tried: since,
            error: "refused".into(),
            trying: false,
        };
        let mut said =
            |o: &reach::Unreached, at: Duration| warn_once(&mut warned, region, o, t0 + at);
        let first = outage(t0);
        assert_eq!(said(&first, Duration::from_secs(5)), Said::Warned);
        assert_eq!(said(&first, Duration::from_secs(30)), Said::Nothing);
        let flap = outage(t0 + Duration::from_secs(60));
        assert_eq!(said(&flap, Duration::from_secs(65)), Said::Debug);
        assert_eq!(said(&flap, Duration::from_secs(200)), Said::Nothing);
        assert_eq!(
            said(&flap, reach::WARN_AGAIN_AFTER + Duration::from_secs(5)),
            Said::Warned,
            "still away when the 5 minutes are up"
        );
        assert_eq!(said(&flap, Duration::from_secs(900)), Said::Nothing);
    }

    /// An answer that cannot be read is the answered operation's error: a Create whose answer
    /// names a state this controller does not know was carried out (the connection exists).
    #[test]
    fn an_unreadable_answer_is_the_answered_operations_error() {
        let now = aws_smithy_types::DateTime::from_secs(1_795_000_000);
        let answer = aws_sdk_proton::types::EnvironmentAccountConnection::builder()
            .id("c-1")
            .arn("arn:aws:proton:us-east-1:444455556666:environment-account-connection/c-1")
            .management_account_id("111122223333")
            .environment_account_id("444455556666")
            .role_arn("arn:aws:iam::444455556666:role/proton")
            .environment_name("prod")
            .requested_at(now)
            .last_modified_at(now)
            .status(EnvironmentAccountConnectionStatus::from("SUSPENDED"))
            .build();
        let Ok(answer) = answer else {
            panic!("a complete answer: {answer:?}");
        };
        let e = connection_of(CREATE, Some(&answer)).expect_err("an unknown state");
        assert_eq!((e.operation, e.code.as_str()), (CREATE, "UnknownStatus"));
    }

    #[test]
    fn timestamps_are_whole_second_rfc3339() {
        let t = aws_smithy_types::DateTime::from_fractional_secs(1_795_000_000, 0.75);
        assert_eq!(rfc3339(&t), "2026-11-18T11:06:40Z");
    }
}
