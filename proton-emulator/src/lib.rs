//! `proton-emulator`: a local AWS Proton that speaks the service's real wire protocol (awsJson
//! 1.0), for the ten environment-account-connection operations, so the unmodified
//! `aws-sdk-proton` client (or boto3) can be pointed at it.
//!
//! - `store` is the service's state machine, plain data behind one mutex; `validate` enforces
//!   the constraints of the Proton API model; `access` holds the two-account rules (who may do
//!   what to a connection); `operations` joins them; `wire` is the awsJson encoding.
//! - `caller` reads who calls and for which region from the SigV4 `Authorization` header and
//!   maps the access key to an account; `sts` serves STS GetCallerIdentity and AssumeRole
//!   (awsQuery) on the same port, with `roles` (which roles may be assumed) and `sessions` (the
//!   temporary credentials issued).
//! - `state_file` and `durability` keep the state across restarts (`--state-file`).
//! - `settings` holds what may change at run time besides faults (idempotency, list lag).
//! - `faults` injects throttling, errors, latency and denials, and counts calls.
//! - `server` serves it all over HTTP (axum); [`RunningEmulator`] is the handle tests use.
//!
//! Identity: a request acts in the account of its access key (`--account KEY=ACCOUNT`), of the
//! role its temporary credentials were issued for (AssumeRole), or else the default account
//! (`--account-id`). A connection belongs to the account that created it (its environment
//! account, which its ARN names); see `access` for what its management account may do.
//!
//! Regions: AWS keeps connections per region, and so does the emulator. A request is served in
//! the region its signature's credential scope names (`Credential=AKID/DATE/REGION/SERVICE/
//! aws4_request`); a request without a readable SigV4 `Authorization` header is served in the
//! configured default region ([`EmulatorConfig::region`]). A connection exists only in the region
//! of its Create (its ARN says which); elsewhere it is unknown.
//!
//! Besides the API on `POST /` (Proton's awsJson with `X-Amz-Target`; STS's awsQuery for a
//! form-encoded body without one), the server answers:
//! - `GET /_emulator/calls`: call counts (STS calls by action; they fail only by `fail-next` or
//!   the deny list, since the rate limit, error rate and latency model Proton; STS has a
//!   latency of its own);
//! - `GET`/`PUT /_emulator/faults`: the faults in force;
//! - `POST /_emulator/fail-next`: `{"operation", "errorType", "count"}`;
//! - `GET`/`PUT /_emulator/config`: `{"idempotency": "lenient"|"strict", "listLagMs": N}`, the
//!   settings of [`Settings`]; like the faults, a PUT replaces them all (a member left out takes
//!   its default) and answers the settings now in force;
//! - `POST /_emulator/connections/{id}/accept` and `.../reject`: the management account's answer,
//!   whoever asks (the back door of tests and demos);
//! - `POST /_emulator/clock`: `{"advanceMs": N}` moves the emulator's clock forward.

mod access;
mod caller;
pub mod cli;
mod durability;
mod error;
mod faults;
mod operations;
mod principal;
mod requests;
mod roles;
mod server;
mod sessions;
mod settings;
mod state_file;
mod store;
mod sts;
mod validate;
mod wire;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

pub use caller::{AccountMapping, AccountMappingError};
pub use faults::{CallCounts, Faults, FaultsDocument};
pub use roles::{NotARoleArn, RoleArn, RoleSpec, RoleSpecError};
pub use server::RunningEmulator;
pub use settings::{ConfigDocument, Idempotency, Settings, UnknownIdempotency};
pub use state_file::StateFileError;

use access::Requester;
use caller::{Caller, Identities, Principal};
use durability::Durability;
use error::{ApiError, ErrorKind};
use faults::FaultState;
use roles::Roles;
use sessions::Sessions;
use state_file::StateDocument;
use store::{Connection, Millis, Status, Store};
use wire::Operation;

/// How an emulator starts.
#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    /// The account of callers whose access key is not mapped to another one (and of unsigned
    /// requests): their connections are created in it, and STS names it.
    pub account_id: String,
    /// The region of requests whose signature names none.
    pub region: String,
    pub faults: Faults,
    /// Live connections allowed at once in each account and region; `None` = unlimited.
    pub max_connections: Option<usize>,
    /// What a Create answers when its client token is in use with other parameters.
    pub idempotency: Idempotency,
    /// How long List takes to show a created connection and to stop showing a deleted one.
    pub list_lag: Duration,
    /// Access key id -> the account its requests act in (`--account KEY=ACCOUNT`).
    pub accounts: BTreeMap<String, String>,
    /// Roles registered for AssumeRole (`--role`), with the external id they require.
    pub roles: Vec<RoleSpec>,
    /// Refuse AssumeRole for roles not in `roles` (by default any well-formed role ARN works).
    pub require_registered_roles: bool,
    /// Where the state is kept across restarts; `None` = in memory only.
    pub state_file: Option<PathBuf>,
}

impl Default for EmulatorConfig {
    fn default() -> EmulatorConfig {
        EmulatorConfig {
            account_id: "444455556666".to_string(),
            region: "us-east-1".to_string(),
            faults: Faults::default(),
            max_connections: None,
            idempotency: Idempotency::default(),
            list_lag: Duration::ZERO,
            accounts: BTreeMap::new(),
            roles: Vec::new(),
            require_registered_roles: false,
            state_file: None,
        }
    }
}

impl EmulatorConfig {
    /// The account ids and the region end up in ARNs that must match the model's ARN pattern.
    pub fn check(&self) -> Result<(), String> {
        if !validate::is_account_id(&self.account_id) {
            return Err(format!(
                "account id '{}' must be 12 digits",
                self.account_id
            ));
        }
        if !validate::is_region(&self.region) {
            return Err(format!(
                "region '{}' must be lowercase letters, digits and '-'",
                self.region
            ));
        }
        for (key, account) in &self.accounts {
            format!("{key}={account}")
                .parse::<AccountMapping>()
                .map_err(|e| e.to_string())?;
        }
        for role in &self.roles {
            if role.arn.arn.parse::<RoleArn>().as_ref() != Ok(&role.arn) {
                return Err(NotARoleArn(role.arn.arn.clone()).to_string());
            }
        }
        Ok(())
    }

    fn settings(&self) -> Settings {
        Settings {
            idempotency: self.idempotency,
            list_lag: self.list_lag,
        }
    }
}

/// A connection as the emulator holds it, for tests to inspect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionRecord {
    pub id: String,
    pub arn: String,
    /// The region it was created in (and the only one it can be reached from).
    pub region: String,
    pub environment_name: String,
    pub management_account_id: String,
    pub environment_account_id: String,
    /// `PENDING`, `CONNECTED` or `REJECTED`.
    pub status: String,
    pub role_arn: Option<String>,
    pub codebuild_role_arn: Option<String>,
    pub component_role_arn: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub client_token: Option<String>,
    pub requested_at: SystemTime,
    pub last_modified_at: SystemTime,
}

/// Everything that the state file keeps, under one lock so that a snapshot is consistent.
struct World {
    store: Store,
    sessions: Sessions,
    /// Bumped by every change: an answer waits until the version it saw is on disk.
    version: u64,
}

struct Inner {
    world: Mutex<World>,
    faults: Mutex<FaultState>,
    settings: Mutex<Settings>,
    default_region: String,
    identities: Identities,
    roles: Roles,
    /// Added to the wall clock: lets tests move the emulator's time forward (see
    /// [`EmulatorState::advance_clock`]). Changed under the world lock, as it is persisted.
    clock_offset_ms: AtomicI64,
    /// Set with a state file.
    durability: Option<Arc<Durability>>,
}

/// Shared handle on the emulator's state: cheap to clone.
#[derive(Clone)]
pub struct EmulatorState {
    inner: Arc<Inner>,
}

/// What the API answers to one request, and how long to wait before answering.
pub(crate) struct Answer {
    pub operation: Option<Operation>,
    /// The region the request was served in.
    pub region: String,
    pub result: Result<Value, ApiError>,
    pub latency: Duration,
    /// The version of the state the answer shows; it must be on disk before the answer goes out.
    pub version: u64,
}

/// What STS answers to one request.
pub(crate) struct StsAnswer {
    pub action: Option<sts::Action>,
    pub result: Result<sts::Output, ApiError>,
    pub version: u64,
}

impl EmulatorState {
    /// A fresh state, in memory. (With a state file, [`RunningEmulator::start`] loads it and
    /// starts the writer.)
    pub fn new(config: &EmulatorConfig) -> EmulatorState {
        let role_accounts = config.roles.iter().map(|role| role.arn.account.as_str());
        let state = EmulatorState {
            inner: Arc::new(Inner {
                world: Mutex::new(World {
                    store: Store::new(config.max_connections),
                    sessions: Sessions::default(),
                    version: 0,
                }),
                faults: Mutex::new(FaultState::new(config.faults.clone())),
                settings: Mutex::new(Settings::default()),
                default_region: config.region.clone(),
                identities: Identities::new(&config.account_id, &config.accounts, role_accounts),
                roles: Roles::new(&config.roles, config.require_registered_roles),
                clock_offset_ms: AtomicI64::new(0),
                durability: config
                    .state_file
                    .clone()
                    .map(|path| Arc::new(Durability::new(path, 0))),
            }),
        };
        state.set_settings(config.settings());
        state
    }

    // A panic while a lock is held cannot leave the plain data half-changed in a way that
    // matters for an emulator, so a poisoned lock is simply taken over.
    fn world(&self) -> MutexGuard<'_, World> {
        self.inner
            .world
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn fault_state(&self) -> MutexGuard<'_, FaultState> {
        self.inner
            .faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a change of `world` (whose lock the caller holds) for the state file.
    fn changed(&self, world: &mut World) {
        world.version += 1;
        if let Some(durability) = &self.inner.durability {
            durability.announce(world.version);
        }
    }

    /// The emulator's time: the wall clock, plus what tests advanced it by.
    fn now(&self) -> Millis {
        now_millis().saturating_add(self.inner.clock_offset_ms.load(Ordering::SeqCst))
    }

    /// Moves the emulator's clock forward, so a test can see a list lag pass, or temporary
    /// credentials expire, without waiting. Timestamps handed out afterwards are in the future
    /// by as much.
    pub fn advance_clock(&self, by: Duration) {
        self.advance_clock_versioned(by);
    }

    /// [`EmulatorState::advance_clock`], answering the new offset and the state's version.
    fn advance_clock_versioned(&self, by: Duration) -> (i64, u64) {
        let by = duration_millis(by);
        let mut world = self.world();
        // The closure always answers Some, so the update cannot fail.
        let _ =
            self.inner
                .clock_offset_ms
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |offset| {
                    Some(offset.saturating_add(by))
                });
        self.changed(&mut world);
        (
            self.inner.clock_offset_ms.load(Ordering::SeqCst),
            world.version,
        )
    }

    /// The region of requests whose signature names none.
    pub fn default_region(&self) -> &str {
        &self.inner.default_region
    }

    /// Snapshot of the call accounting.
    pub fn calls(&self) -> CallCounts {
        self.fault_state().counts()
    }

    /// Starts counting from zero again.
    pub fn reset_calls(&self) {
        self.fault_state().reset_counts();
    }

    pub fn faults(&self) -> Faults {
        self.fault_state().faults().clone()
    }

    /// Replaces the faults in force.
    pub fn set_faults(&self, faults: Faults) {
        self.fault_state().set_faults(faults);
    }

    /// The next `count` calls of `operation` fail with `error_type` (e.g. `"ThrottlingException"`),
    /// before any other fault is considered.
    pub fn fail_next(&self, operation: &str, error_type: &str, count: u32) {
        self.fault_state().fail_next(operation, error_type, count);
    }

    pub fn settings(&self) -> Settings {
        *self
            .inner
            .settings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces the run-time settings as a whole.
    pub fn set_settings(&self, settings: Settings) {
        // Store first, under its lock, so no request sees the store and `settings()` disagree
        // for longer than this call.
        let mut world = self.world();
        world.store.set_idempotency(settings.idempotency);
        world.store.set_list_lag(duration_millis(settings.list_lag));
        *self
            .inner
            .settings
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = settings;
    }

    pub fn set_idempotency(&self, idempotency: Idempotency) {
        self.set_settings(Settings {
            idempotency,
            ..self.settings()
        });
    }

    /// See `Store::list` for the rule. Connections deleted while no lag was set are gone from
    /// List for good, even if a lag is set afterwards.
    pub fn set_list_lag(&self, list_lag: Duration) {
        self.set_settings(Settings {
            list_lag,
            ..self.settings()
        });
    }

    /// Every live connection of every region, oldest first.
    pub fn connections(&self) -> Vec<ConnectionRecord> {
        let world = self.world();
        world
            .store
            .all()
            .into_iter()
            .map(|c| {
                let tags = world.store.tags_of(&c.arn);
                record(c, tags)
            })
            .collect()
    }

    /// Accepts a connection as its management account would (same rules of state as the API,
    /// whoever asks), in whichever region it lives. The change reaches the state file shortly
    /// after, without waiting for it (see `POST /_emulator/connections/{id}/accept` for that).
    pub fn accept(&self, id: &str) -> Result<(), String> {
        self.answer_as_management(id, Status::Connected)
            .map(|_| ())
            .map_err(|e| e.message)
    }

    /// Rejects a connection as its management account would; see [`EmulatorState::accept`].
    pub fn reject(&self, id: &str) -> Result<(), String> {
        self.answer_as_management(id, Status::Rejected)
            .map(|_| ())
            .map_err(|e| e.message)
    }

    /// Accept (`Connected`) or Reject (`Rejected`) by id alone: the connection and the state's
    /// version.
    fn answer_as_management(
        &self,
        id: &str,
        answer: Status,
    ) -> Result<(Connection, u64), ApiError> {
        let now = self.now();
        let mut world = self.world();
        let region = region_of(&world.store, id);
        let connection = match answer {
            Status::Rejected => world.store.reject(&region, id, now)?,
            _ => world.store.accept(&region, id, now)?,
        };
        self.changed(&mut world);
        Ok((connection, world.version))
    }

    /// Deletes a connection behind the API's back, in whichever region it lives; false when
    /// there was none.
    pub fn delete_out_of_band(&self, id: &str) -> bool {
        let now = self.now();
        let mut world = self.world();
        let region = region_of(&world.store, id);
        let deleted = world.store.delete(&region, id, now).is_ok();
        if deleted {
            self.changed(&mut world);
        }
        deleted
    }

    /// Waits until the state an answer showed (its `version`) is on disk; without a state file
    /// at once. The error is what the client gets instead of the answer.
    pub(crate) async fn durable(&self, version: u64) -> Result<(), ApiError> {
        let Some(durability) = &self.inner.durability else {
            return Ok(());
        };
        durability.wait(version).await.map_err(|why| {
            ApiError::new(
                ErrorKind::InternalServer,
                format!(
                    "The change was made but could not be saved to the state file {}: {why}",
                    durability.path().display()
                ),
            )
        })
    }

    /// Everything the state file keeps, with its version.
    fn snapshot(&self) -> (u64, StateDocument) {
        let world = self.world();
        let document = StateDocument {
            version: state_file::FORMAT_VERSION,
            clock: world.store.clock(),
            clock_offset_ms: self.inner.clock_offset_ms.load(Ordering::SeqCst),
            connections: world.store.export(),
            sessions: world.sessions.export(),
        };
        (world.version, document)
    }

    /// Puts back a state read from the state file; the error says what is impossible in it.
    fn restore(&self, document: StateDocument) -> Result<(), String> {
        let mut world = self.world();
        world.store.import(document.connections, document.clock)?;
        world.sessions = Sessions::import(document.sessions)?;
        self.inner
            .clock_offset_ms
            .store(document.clock_offset_ms, Ordering::SeqCst);
        Ok(())
    }

    /// Answers one Proton request: `target` is the `X-Amz-Target` header, `caller` comes from the
    /// `Authorization` and `X-Amz-Security-Token` headers.
    pub(crate) fn handle(&self, target: Option<&str>, caller: &Caller, body: &[u8]) -> Answer {
        let latency = self.fault_state().faults().latency;
        let region = caller
            .region
            .clone()
            .unwrap_or_else(|| self.inner.default_region.clone());
        let Some(op) = target.and_then(Operation::from_target) else {
            let message = match target {
                Some(target) => format!("Operation '{target}' is not supported"),
                None => "Missing X-Amz-Target header".to_string(),
            };
            return Answer {
                operation: None,
                region,
                result: Err(ApiError::new(ErrorKind::UnknownOperation, message)),
                latency,
                version: 0,
            };
        };
        let admitted = self
            .fault_state()
            .admit(op.name(), Instant::now(), rand::random::<f64>());
        let (result, version) = match admitted {
            Err(err) => (Err(err), 0),
            Ok(()) => self.execute(caller, &region, op, body),
        };
        Answer {
            operation: Some(op),
            region,
            result,
            latency,
            version,
        }
    }

    /// Authenticates, runs and records one admitted Proton request, under the world lock.
    fn execute(
        &self,
        caller: &Caller,
        region: &str,
        op: Operation,
        body: &[u8],
    ) -> (Result<Value, ApiError>, u64) {
        let now = self.now();
        let mut world = self.world();
        let world = &mut *world;
        let result = self
            .inner
            .identities
            .principal(caller, &world.sessions, now)
            .and_then(|principal| {
                let body = validate::parse_body(body)?;
                let requester = Requester::new(principal.account(), &self.inner.identities);
                operations::execute(&mut world.store, &requester, region, op, &body, now)
            });
        if result.is_ok() && op.changes_state() {
            self.changed(world);
        }
        (result, world.version)
    }

    /// Answers one STS (awsQuery) request.
    pub(crate) fn handle_sts(&self, caller: &Caller, body: &[u8]) -> StsAnswer {
        let action = match sts::action(body) {
            Ok(action) => action,
            Err(err) => {
                return StsAnswer {
                    action: None,
                    result: Err(err),
                    version: 0,
                };
            }
        };
        let admitted = self
            .fault_state()
            .admit_targeted(action.name(), Instant::now());
        let (result, version) = match admitted {
            Err(err) => (Err(err), 0),
            Ok(()) => self.execute_sts(caller, action, body),
        };
        StsAnswer {
            action: Some(action),
            result,
            version,
        }
    }

    fn execute_sts(
        &self,
        caller: &Caller,
        action: sts::Action,
        body: &[u8],
    ) -> (Result<sts::Output, ApiError>, u64) {
        let now = self.now();
        let mut world = self.world();
        let principal = match self
            .inner
            .identities
            .principal(caller, &world.sessions, now)
        {
            Ok(principal) => principal,
            Err(err) => return (Err(err), world.version),
        };
        let result = match action {
            sts::Action::GetCallerIdentity => Ok(sts::Output::CallerIdentity((&principal).into())),
            sts::Action::AssumeRole => self.assume_role(&principal, body).map(|req| {
                let session =
                    world
                        .sessions
                        .issue(&req.role, &req.session_name, req.duration_seconds, now);
                self.changed(&mut world);
                tracing::debug!(
                    role = %req.role.arn,
                    session = %req.session_name,
                    caller = %principal.arn(),
                    "role assumed"
                );
                sts::Output::AssumedRole(sts::AssumedRole { session })
            }),
        };
        (result, world.version)
    }

    /// Reads an AssumeRole request and decides whether `principal` may have it.
    fn assume_role(
        &self,
        principal: &Principal,
        body: &[u8],
    ) -> Result<sts::AssumeRoleRequest, ApiError> {
        let req = sts::assume_role_input(body)?;
        if principal.is_assumed_role() && req.duration_seconds > sts::MAX_CHAINED_DURATION_SECONDS {
            return Err(ApiError::validation(
                "The requested DurationSeconds exceeds the 1 hour session limit for roles \
                 assumed by role chaining.",
            ));
        }
        self.inner
            .roles
            .authorize(principal, &req.role, req.external_id.as_deref())
            .map_err(|(err, reason)| {
                // Why, for whoever runs the emulator; the caller gets STS's terse answer.
                tracing::info!(role = %req.role.arn, caller = %principal.arn(), reason, "AssumeRole refused");
                err
            })?;
        Ok(req)
    }
}

/// The region a connection lives in; an unknown id gets none, and the store then reports it as
/// not found.
fn region_of(store: &Store, id: &str) -> String {
    store.region_of(id).unwrap_or_default().to_string()
}

fn record(c: Connection, tags: BTreeMap<String, String>) -> ConnectionRecord {
    ConnectionRecord {
        status: c.status.as_str().to_string(),
        id: c.id,
        arn: c.arn,
        region: c.region,
        environment_name: c.environment_name,
        management_account_id: c.management_account_id,
        environment_account_id: c.environment_account_id,
        role_arn: c.role_arn,
        codebuild_role_arn: c.codebuild_role_arn,
        component_role_arn: c.component_role_arn,
        tags,
        client_token: c.client_token,
        requested_at: system_time(c.requested_at),
        last_modified_at: system_time(c.last_modified_at),
    }
}

fn duration_millis(d: Duration) -> Millis {
    Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX)
}

fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(duration_millis)
        .unwrap_or(0)
}

fn system_time(millis: Millis) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(millis).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(op: &str) -> String {
        format!("{}{op}", wire::TARGET_PREFIX)
    }

    fn create(state: &EmulatorState, env: &str) -> String {
        let body = format!(r#"{{"environmentName":"{env}","managementAccountId":"111122223333"}}"#);
        let answer = state.handle(
            Some(&target("CreateEnvironmentAccountConnection")),
            &Caller::default(),
            body.as_bytes(),
        );
        let value = answer.result.unwrap();
        value["environmentAccountConnection"]["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn faulted_requests_do_not_touch_state() {
        let state = EmulatorState::new(&EmulatorConfig::default());
        state.fail_next(
            "CreateEnvironmentAccountConnection",
            "InternalServerException",
            1,
        );
        let answer = state.handle(
            Some(&target("CreateEnvironmentAccountConnection")),
            &Caller::default(),
            br#"{"environmentName":"e","managementAccountId":"111122223333"}"#,
        );
        assert_eq!(answer.result.unwrap_err().kind, ErrorKind::InternalServer);
        assert!(state.connections().is_empty());
        assert_eq!(state.calls().count("CreateEnvironmentAccountConnection"), 1);
        create(&state, "e");
        assert_eq!(state.connections().len(), 1);
    }

    #[test]
    fn unknown_targets_and_bad_bodies() {
        let state = EmulatorState::new(&EmulatorConfig::default());
        let answer = state.handle(
            Some("AwsProton20200720.CreateService"),
            &Caller::default(),
            b"{}",
        );
        assert_eq!(answer.result.unwrap_err().kind, ErrorKind::UnknownOperation);
        let answer = state.handle(None, &Caller::default(), b"{}");
        assert_eq!(answer.result.unwrap_err().kind, ErrorKind::UnknownOperation);
        assert_eq!(state.calls().total(), 0);
        let answer = state.handle(
            Some(&target("GetEnvironmentAccountConnection")),
            &Caller::default(),
            b"{oops",
        );
        assert_eq!(answer.result.unwrap_err().kind, ErrorKind::Serialization);
    }

    #[test]
    fn test_helpers_play_the_management_account() {
        let state = EmulatorState::new(&EmulatorConfig::default());
        let id = create(&state, "e");
        state.accept(&id).unwrap();
        assert_eq!(state.connections()[0].status, "CONNECTED");
        state.reject(&id).unwrap();
        assert!(state.accept(&id).unwrap_err().contains("REJECTED"));
        assert!(state.delete_out_of_band(&id));
        assert!(!state.delete_out_of_band(&id));
        assert!(state.connections().is_empty());
    }

    #[test]
    fn config_check() {
        assert!(EmulatorConfig::default().check().is_ok());
        let bad_account = EmulatorConfig {
            account_id: "123".into(),
            ..EmulatorConfig::default()
        };
        assert!(bad_account.check().is_err());
        let bad_region = EmulatorConfig {
            region: "us east".into(),
            ..EmulatorConfig::default()
        };
        assert!(bad_region.check().is_err());
    }

    fn signed_for(region: &str) -> Caller {
        Caller::from_authorization(Some(&format!(
            "AWS4-HMAC-SHA256 Credential=AKID/20261123/{region}/proton/aws4_request, \
             SignedHeaders=host, Signature=abc"
        )))
    }

    fn call(state: &EmulatorState, caller: &Caller, op: &str, body: &str) -> Answer {
        state.handle(Some(&target(op)), caller, body.as_bytes())
    }

    #[test]
    fn requests_are_served_in_their_signed_region_or_the_default_one() {
        let state = EmulatorState::new(&EmulatorConfig {
            region: "ca-central-1".into(),
            ..EmulatorConfig::default()
        });
        let body = r#"{"environmentName":"e","managementAccountId":"111122223333"}"#;
        let eu = call(
            &state,
            &signed_for("eu-west-1"),
            "CreateEnvironmentAccountConnection",
            body,
        );
        assert_eq!(eu.region, "eu-west-1");
        let id = eu.result.unwrap()["environmentAccountConnection"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let unsigned = call(
            &state,
            &Caller::default(),
            "CreateEnvironmentAccountConnection",
            body,
        );
        assert_eq!(unsigned.region, "ca-central-1");
        assert!(unsigned.result.is_ok(), "another region, so no conflict");

        let regions: Vec<String> = state.connections().into_iter().map(|c| c.region).collect();
        assert_eq!(regions.len(), 2);
        assert!(regions.contains(&"eu-west-1".to_string()));
        assert!(regions.contains(&"ca-central-1".to_string()));

        // The helpers act by id, in whichever region the connection lives.
        state.accept(&id).unwrap();
        let get = format!(r#"{{"id":"{id}"}}"#);
        let got = call(
            &state,
            &signed_for("eu-west-1"),
            "GetEnvironmentAccountConnection",
            &get,
        );
        assert_eq!(
            got.result.unwrap()["environmentAccountConnection"]["status"],
            "CONNECTED"
        );
        let elsewhere = call(
            &state,
            &Caller::default(),
            "GetEnvironmentAccountConnection",
            &get,
        );
        assert_eq!(
            elsewhere.result.unwrap_err().kind,
            ErrorKind::ResourceNotFound
        );
        state.reject(&id).unwrap();
        assert!(state.delete_out_of_band(&id));
        assert_eq!(state.connections().len(), 1);
    }

    #[test]
    fn settings_can_change_at_run_time() {
        let state = EmulatorState::new(&EmulatorConfig {
            idempotency: Idempotency::Strict,
            list_lag: Duration::from_secs(60),
            ..EmulatorConfig::default()
        });
        assert_eq!(
            state.settings(),
            Settings {
                idempotency: Idempotency::Strict,
                list_lag: Duration::from_secs(60),
            }
        );
        let create = |env: &str| {
            let body = format!(
                r#"{{"environmentName":"{env}","managementAccountId":"111122223333","clientToken":"t"}}"#
            );
            call(
                &state,
                &Caller::default(),
                "CreateEnvironmentAccountConnection",
                &body,
            )
            .result
        };
        let list = || {
            let answer = call(
                &state,
                &Caller::default(),
                "ListEnvironmentAccountConnections",
                r#"{"requestedBy":"ENVIRONMENT_ACCOUNT"}"#,
            );
            answer.result.unwrap()["environmentAccountConnections"]
                .as_array()
                .unwrap()
                .len()
        };
        create("a").unwrap();
        assert_eq!(create("b").unwrap_err().kind, ErrorKind::Conflict);
        assert_eq!(list(), 0);

        state.advance_clock(Duration::from_secs(60));
        assert_eq!(list(), 1);

        state.set_idempotency(Idempotency::Lenient);
        state.set_list_lag(Duration::ZERO);
        assert_eq!(state.settings(), Settings::default());
        assert!(create("b").is_ok());
        let id = state.connections()[0].id.clone();
        assert!(state.delete_out_of_band(&id));
        assert_eq!(list(), 0);
    }

    #[test]
    fn sts_answers_the_configured_account_and_is_counted() {
        let state = EmulatorState::new(&EmulatorConfig {
            account_id: "123456789012".into(),
            ..EmulatorConfig::default()
        });
        let answer = state.handle_sts(
            &signed_for("eu-west-1"),
            b"Action=GetCallerIdentity&Version=2011-06-15",
        );
        assert_eq!(answer.action, Some(sts::Action::GetCallerIdentity));
        let Ok(sts::Output::CallerIdentity(identity)) = answer.result else {
            panic!("not a caller identity");
        };
        assert_eq!(identity.account, "123456789012");
        assert_eq!(identity.user_id, "AKID");
        assert_eq!(state.calls().count("GetCallerIdentity"), 1);

        let unknown = state.handle_sts(&Caller::default(), b"Action=GetSessionToken");
        assert_eq!(unknown.action, None);
        assert_eq!(
            unknown.result.unwrap_err().kind.type_name(),
            "InvalidAction"
        );
        assert_eq!(state.calls().total(), 1, "unknown actions are not counted");

        state.fail_next("GetCallerIdentity", "ThrottlingException", 1);
        let throttled = state.handle_sts(&Caller::default(), b"Action=GetCallerIdentity");
        assert_eq!(throttled.result.unwrap_err().kind, ErrorKind::Throttling);
        assert_eq!(state.calls().count("GetCallerIdentity"), 2);
    }

    fn assume(state: &EmulatorState, caller: &Caller, role: &str) -> sessions::Session {
        let body =
            format!("Action=AssumeRole&Version=2011-06-15&RoleArn={role}&RoleSessionName=test");
        match state.handle_sts(caller, body.as_bytes()).result {
            Ok(sts::Output::AssumedRole(assumed)) => assumed.session,
            Ok(other) => panic!("not an AssumeRole answer: {other:?}"),
            Err(err) => panic!("AssumeRole failed: {err}"),
        }
    }

    fn with_session(session: &sessions::Session) -> Caller {
        Caller {
            access_key_id: Some(session.access_key_id.clone()),
            region: None,
            session_token: Some(caller::SessionToken::new(session.session_token.clone())),
        }
    }

    #[test]
    fn assumed_role_credentials_act_in_the_role_s_account_until_they_expire() {
        let state = EmulatorState::new(&EmulatorConfig::default());
        let session = assume(
            &state,
            &Caller::default(),
            "arn:aws:iam::111122223333:role/mgmt",
        );
        let caller = with_session(&session);
        let Ok(sts::Output::CallerIdentity(identity)) = state
            .handle_sts(&caller, b"Action=GetCallerIdentity")
            .result
        else {
            panic!("no identity");
        };
        assert_eq!(identity.account, "111122223333");
        assert_eq!(
            identity.arn,
            "arn:aws:sts::111122223333:assumed-role/mgmt/test"
        );

        let body = r#"{"environmentName":"e","managementAccountId":"444455556666"}"#;
        let created = call(&state, &caller, "CreateEnvironmentAccountConnection", body);
        assert_eq!(
            created.result.unwrap()["environmentAccountConnection"]["environmentAccountId"],
            "111122223333"
        );

        state.advance_clock(Duration::from_secs(3600));
        let expired = call(&state, &caller, "ListEnvironmentAccountConnections", "{}");
        assert_eq!(expired.result.unwrap_err().kind, ErrorKind::ExpiredToken);
        let expired = state.handle_sts(&caller, b"Action=GetCallerIdentity");
        assert_eq!(expired.result.unwrap_err().kind, ErrorKind::ExpiredToken);
        assert_eq!(state.calls().count("AssumeRole"), 1);
    }

    #[test]
    fn every_change_and_nothing_else_moves_the_version() {
        let state = EmulatorState::new(&EmulatorConfig::default());
        let body = r#"{"environmentName":"e","managementAccountId":"111122223333"}"#;
        let created = call(
            &state,
            &Caller::default(),
            "CreateEnvironmentAccountConnection",
            body,
        );
        assert_eq!(created.version, 1);
        let id = created.result.unwrap()["environmentAccountConnection"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let get = format!(r#"{{"id":"{id}"}}"#);
        let read = call(
            &state,
            &Caller::default(),
            "GetEnvironmentAccountConnection",
            &get,
        );
        assert_eq!(read.version, 1, "a read shows version 1");
        let refused = call(
            &state,
            &Caller::default(),
            "CreateEnvironmentAccountConnection",
            body,
        );
        assert!(refused.result.is_err());
        assert_eq!(refused.version, 1, "a refused change changes nothing");
        let session = assume(
            &state,
            &Caller::default(),
            "arn:aws:iam::111122223333:role/r",
        );
        assert!(!session.session_token.is_empty());
        state.accept(&id).unwrap();
        state.advance_clock(Duration::from_secs(1));
        assert!(state.delete_out_of_band(&id));
        assert_eq!(state.snapshot().0, 5);
    }

    #[test]
    fn a_snapshot_restores_connections_sessions_and_the_clock() {
        let config = EmulatorConfig::default();
        let state = EmulatorState::new(&config);
        let id = create(&state, "e");
        let session = assume(
            &state,
            &Caller::default(),
            "arn:aws:iam::111122223333:role/r",
        );
        state.advance_clock(Duration::from_secs(60));
        let (_, document) = state.snapshot();

        let restarted = EmulatorState::new(&config);
        restarted.restore(document.clone()).unwrap();
        assert_eq!(restarted.connections(), state.connections());
        assert_eq!(restarted.snapshot().1, document);
        let caller = with_session(&session);
        let Ok(sts::Output::CallerIdentity(identity)) = restarted
            .handle_sts(&caller, b"Action=GetCallerIdentity")
            .result
        else {
            panic!("the session did not survive");
        };
        assert_eq!(identity.account, "111122223333");
        assert!(
            restarted.now() >= state.now() - 1_000,
            "the clock offset is kept"
        );
        assert_eq!(restarted.connections()[0].id, id);
    }
}
