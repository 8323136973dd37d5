//! `proton-emulator`: a local AWS Proton that speaks the service's real wire protocol (awsJson
//! 1.0), for the ten environment-account-connection operations, so the unmodified
//! `aws-sdk-proton` client (or boto3) can be pointed at it.
//!
//! - `store` is the service's state machine, plain data behind one mutex; `validate` enforces
//!   the constraints of the Proton API model; `operations` joins the two; `wire` is the
//!   awsJson encoding.
//! - `faults` injects throttling, errors, latency and denials, and counts calls.
//! - `server` serves it all over HTTP (axum); [`RunningEmulator`] is the handle tests use.
//!
//! Besides the API on `POST /`, the server answers `GET /_emulator/calls` (call counts),
//! `GET`/`PUT /_emulator/faults` (the faults in force) and `POST /_emulator/fail-next`
//! (`{"operation", "errorType", "count"}`), for tests that run the binary.

mod error;
mod faults;
mod operations;
mod server;
mod store;
mod validate;
mod wire;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

pub use faults::{CallCounts, Faults, FaultsDocument};
pub use server::RunningEmulator;

use error::{ApiError, ErrorKind};
use faults::FaultState;
use store::{Connection, Millis, Store};
use wire::Operation;

/// How an emulator starts.
#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    /// The environment account: every connection is created in it.
    pub account_id: String,
    /// Goes into the connections' ARNs.
    pub region: String,
    pub faults: Faults,
    /// Live connections allowed at once; `None` = unlimited.
    pub max_connections: Option<usize>,
}

impl Default for EmulatorConfig {
    fn default() -> EmulatorConfig {
        EmulatorConfig {
            account_id: "444455556666".to_string(),
            region: "us-east-1".to_string(),
            faults: Faults::default(),
            max_connections: None,
        }
    }
}

impl EmulatorConfig {
    /// The account id and region end up in ARNs that must match the model's ARN pattern.
    pub fn check(&self) -> Result<(), String> {
        if !validate::is_account_id(&self.account_id) {
            return Err(format!(
                "account id '{}' must be 12 digits",
                self.account_id
            ));
        }
        if self.region.is_empty()
            || !self
                .region
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(format!(
                "region '{}' must be lowercase letters, digits and '-'",
                self.region
            ));
        }
        Ok(())
    }
}

/// A connection as the emulator holds it, for tests to inspect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionRecord {
    pub id: String,
    pub arn: String,
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

struct Inner {
    store: Mutex<Store>,
    faults: Mutex<FaultState>,
}

/// Shared handle on the emulator's state: cheap to clone.
#[derive(Clone)]
pub struct EmulatorState {
    inner: Arc<Inner>,
}

/// What the API answers to one request, and how long to wait before answering.
pub(crate) struct Answer {
    pub operation: Option<Operation>,
    pub result: Result<Value, ApiError>,
    pub latency: Duration,
}

impl EmulatorState {
    pub fn new(config: &EmulatorConfig) -> EmulatorState {
        EmulatorState {
            inner: Arc::new(Inner {
                store: Mutex::new(Store::new(
                    &config.account_id,
                    &config.region,
                    config.max_connections,
                )),
                faults: Mutex::new(FaultState::new(config.faults.clone())),
            }),
        }
    }

    // A panic while a lock is held cannot leave the plain data half-changed in a way that
    // matters for an emulator, so a poisoned lock is simply taken over.
    fn store(&self) -> MutexGuard<'_, Store> {
        self.inner
            .store
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn fault_state(&self) -> MutexGuard<'_, FaultState> {
        self.inner
            .faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
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

    /// Every live connection, oldest first.
    pub fn connections(&self) -> Vec<ConnectionRecord> {
        let store = self.store();
        store
            .all()
            .into_iter()
            .map(|c| {
                let tags = store.tags_of(&c.arn);
                record(c, tags)
            })
            .collect()
    }

    /// Accepts a connection as the management account would (same rules as the API).
    pub fn accept(&self, id: &str) -> Result<(), String> {
        self.store()
            .accept(id, now_millis())
            .map(|_| ())
            .map_err(|e| e.message)
    }

    /// Rejects a connection as the management account would (same rules as the API).
    pub fn reject(&self, id: &str) -> Result<(), String> {
        self.store()
            .reject(id, now_millis())
            .map(|_| ())
            .map_err(|e| e.message)
    }

    /// Deletes a connection behind the API's back; false when there was none.
    pub fn delete_out_of_band(&self, id: &str) -> bool {
        self.store().delete(id).is_ok()
    }

    /// Answers one API request: `target` is the `X-Amz-Target` header.
    pub(crate) fn handle(&self, target: Option<&str>, body: &[u8]) -> Answer {
        let latency = self.fault_state().faults().latency;
        let Some(op) = target.and_then(Operation::from_target) else {
            let message = match target {
                Some(target) => format!("Operation '{target}' is not supported"),
                None => "Missing X-Amz-Target header".to_string(),
            };
            return Answer {
                operation: None,
                result: Err(ApiError::new(ErrorKind::UnknownOperation, message)),
                latency,
            };
        };
        let admitted = self
            .fault_state()
            .admit(op.name(), Instant::now(), rand::random::<f64>());
        let result = admitted
            .and_then(|()| validate::parse_body(body))
            .and_then(|body| operations::execute(&mut self.store(), op, &body, now_millis()));
        Answer {
            operation: Some(op),
            result,
            latency,
        }
    }
}

fn record(c: Connection, tags: BTreeMap<String, String>) -> ConnectionRecord {
    ConnectionRecord {
        status: c.status.as_str().to_string(),
        id: c.id,
        arn: c.arn,
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

fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX))
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
        let answer = state.handle(Some("AwsProton20200720.CreateService"), b"{}");
        assert_eq!(answer.result.unwrap_err().kind, ErrorKind::UnknownOperation);
        let answer = state.handle(None, b"{}");
        assert_eq!(answer.result.unwrap_err().kind, ErrorKind::UnknownOperation);
        assert_eq!(state.calls().total(), 0);
        let answer = state.handle(Some(&target("GetEnvironmentAccountConnection")), b"{oops");
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
}
