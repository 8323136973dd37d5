//! HTTP: the APIs on `POST /` (Proton's awsJson, STS's awsQuery) and the emulator's own
//! endpoints under `/_emulator/`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::caller::Caller;
use super::faults::FaultsDocument;
use super::settings::ConfigDocument;
use super::state_file::{self, StateFileError};
use super::store::Status;
use super::{ApiError, EmulatorConfig, EmulatorState};
use super::{sts, wire};

/// The routes of the emulator, over `state`.
pub fn router(state: EmulatorState) -> Router {
    Router::new()
        .route("/", post(api))
        .route("/_emulator/calls", get(get_calls))
        .route("/_emulator/faults", get(get_faults).put(put_faults))
        .route("/_emulator/fail-next", post(post_fail_next))
        .route("/_emulator/config", get(get_config).put(put_config))
        .route("/_emulator/connections/{id}/accept", post(post_accept))
        .route("/_emulator/connections/{id}/reject", post(post_reject))
        .route("/_emulator/clock", post(post_clock))
        .with_state(state)
}

async fn api(State(state): State<EmulatorState>, headers: HeaderMap, body: Bytes) -> Response {
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let target = value("x-amz-target");
    // Only the credential scope and the session token are read: the signature is neither kept
    // nor logged, and the token is only compared.
    let caller = Caller::from_headers(
        value(header::AUTHORIZATION.as_str()),
        value("x-amz-security-token"),
    );
    if target.is_none() && sts::is_form(value(header::CONTENT_TYPE.as_str())) {
        return sts_api(&state, &caller, &body).await;
    }
    let answer = state.handle(target, &caller, &body);
    let operation = answer.operation.map_or("unknown", |op| op.name());
    let region = answer.region.as_str();
    // The answer may show a change: it goes out only once that change is on disk.
    let result = match state.durable(answer.version).await {
        Ok(()) => answer.result,
        Err(err) => Err(err),
    };
    match &result {
        Ok(_) => tracing::debug!(operation, region, "answered"),
        Err(err) => {
            tracing::debug!(operation, region, error = err.kind.type_name(), message = %err.message, "failed")
        }
    }
    if !answer.latency.is_zero() {
        tokio::time::sleep(answer.latency).await;
    }
    match result {
        Ok(output) => aws_response(StatusCode::OK, None, &output),
        Err(err) => error_response(&err),
    }
}

async fn sts_api(state: &EmulatorState, caller: &Caller, body: &[u8]) -> Response {
    let latency = state.faults().sts_latency;
    let answer = state.handle_sts(caller, body);
    let action = answer.action.map_or("unknown", |action| action.name());
    let request_id = uuid::Uuid::new_v4().to_string();
    // Credentials handed out must still work after a restart.
    let result = match state.durable(answer.version).await {
        Ok(()) => answer.result,
        Err(err) => Err(err),
    };
    let (status, document) = match &result {
        Ok(output) => {
            // The document may hold credentials: it is sent, never logged.
            tracing::debug!(action, "answered");
            (StatusCode::OK, output.to_xml(&request_id))
        }
        Err(err) => {
            tracing::debug!(action, error = err.kind.type_name(), message = %err.message, "failed");
            let status = StatusCode::from_u16(err.kind.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, sts::error_xml(err, &request_id))
        }
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let mut headers = request_id_header(&request_id);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(sts::CONTENT_TYPE),
    );
    (status, headers, document).into_response()
}

fn request_id_header(id: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(id) = HeaderValue::from_str(id) {
        headers.insert(HeaderName::from_static("x-amzn-requestid"), id);
    }
    headers
}

fn aws_response(status: StatusCode, error_type: Option<&str>, body: &Value) -> Response {
    let mut headers = request_id_header(&uuid::Uuid::new_v4().to_string());
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(wire::CONTENT_TYPE),
    );
    // A scripted error type is free text: leave the header out rather than fail the answer.
    if let Some(value) = error_type.and_then(|t| HeaderValue::from_str(t).ok()) {
        headers.insert(HeaderName::from_static("x-amzn-errortype"), value);
    }
    (status, headers, body.to_string()).into_response()
}

fn error_response(err: &ApiError) -> Response {
    let status =
        StatusCode::from_u16(err.kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    aws_response(status, Some(err.kind.type_name()), &wire::error_body(err))
}

fn admin_error(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({ "message": message })),
    )
        .into_response()
}

async fn get_calls(State(state): State<EmulatorState>) -> Response {
    axum::Json(state.calls()).into_response()
}

async fn get_faults(State(state): State<EmulatorState>) -> Response {
    axum::Json(FaultsDocument::from(&state.faults())).into_response()
}

async fn put_faults(State(state): State<EmulatorState>, body: Bytes) -> Response {
    let faults = serde_json::from_slice::<FaultsDocument>(&body)
        .map_err(|e| format!("invalid faults document: {e}"))
        .and_then(FaultsDocument::into_faults);
    match faults {
        Ok(faults) => {
            tracing::info!(?faults, "faults replaced");
            let document = FaultsDocument::from(&faults);
            state.set_faults(faults);
            axum::Json(document).into_response()
        }
        Err(message) => admin_error(message),
    }
}

async fn get_config(State(state): State<EmulatorState>) -> Response {
    axum::Json(ConfigDocument::from(&state.settings())).into_response()
}

async fn put_config(State(state): State<EmulatorState>, body: Bytes) -> Response {
    let settings = serde_json::from_slice::<ConfigDocument>(&body)
        .map_err(|e| format!("invalid config document: {e}"))
        .and_then(ConfigDocument::into_settings);
    match settings {
        Ok(settings) => {
            tracing::info!(?settings, "settings replaced");
            state.set_settings(settings);
            axum::Json(ConfigDocument::from(&settings)).into_response()
        }
        Err(message) => admin_error(message),
    }
}

async fn post_accept(State(state): State<EmulatorState>, Path(id): Path<String>) -> Response {
    answer_as_management(&state, &id, Status::Connected).await
}

async fn post_reject(State(state): State<EmulatorState>, Path(id): Path<String>) -> Response {
    answer_as_management(&state, &id, Status::Rejected).await
}

/// The back door: the management account's answer, whoever asks. Answered once it is on disk,
/// like the API's, with the connection as the API shows it (or the API's error and status).
async fn answer_as_management(state: &EmulatorState, id: &str, answer: Status) -> Response {
    let result = match state.answer_as_management(id, answer) {
        Ok((connection, version)) => state.durable(version).await.map(|()| connection),
        Err(err) => Err(err),
    };
    match result {
        Ok(connection) => {
            tracing::info!(
                id,
                status = connection.status.as_str(),
                "answered as the management account"
            );
            axum::Json(wire::connection_output(&connection)).into_response()
        }
        Err(err) => {
            let status = match err.kind {
                super::ErrorKind::ResourceNotFound => StatusCode::NOT_FOUND,
                super::ErrorKind::Conflict => StatusCode::CONFLICT,
                _ => StatusCode::from_u16(err.kind.http_status())
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            };
            (status, axum::Json(wire::error_body(&err))).into_response()
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AdvanceClock {
    advance_ms: u64,
}

async fn post_clock(State(state): State<EmulatorState>, body: Bytes) -> Response {
    match serde_json::from_slice::<AdvanceClock>(&body) {
        Ok(req) => {
            let (offset, version) =
                state.advance_clock_versioned(Duration::from_millis(req.advance_ms));
            if let Err(err) = state.durable(version).await {
                return error_response(&err);
            }
            tracing::info!(
                advanced_ms = req.advance_ms,
                offset_ms = offset,
                "clock advanced"
            );
            axum::Json(json!({ "offsetMs": offset })).into_response()
        }
        Err(e) => admin_error(format!("invalid clock request: {e}")),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FailNext {
    operation: String,
    error_type: String,
    count: u32,
}

async fn post_fail_next(State(state): State<EmulatorState>, body: Bytes) -> Response {
    match serde_json::from_slice::<FailNext>(&body) {
        Ok(req) => {
            if let Err(e) = crate::faults::check_operation(&req.operation) {
                return admin_error(format!("invalid fail-next request: {e}"));
            }
            state.fail_next(&req.operation, &req.error_type, req.count);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => admin_error(format!("invalid fail-next request: {e}")),
    }
}

/// How long a graceful shutdown may wait for in-flight requests before the server is stopped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// An emulator serving on a tokio task. Dropping it stops the server at once (and the state
/// writer, after what it is writing: every answer already given is on disk).
pub struct RunningEmulator {
    addr: SocketAddr,
    state: EmulatorState,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    stop_writer: Option<oneshot::Sender<()>>,
    writer: Option<JoinHandle<()>>,
    /// Held while the emulator runs (and by a write still under way after it was dropped): no
    /// other emulator uses its state file meanwhile.
    _state_lock: Option<Arc<std::fs::File>>,
}

impl RunningEmulator {
    /// Binds `listen` (port 0 picks a free port) and serves until shut down or dropped. With a
    /// state file, its state is loaded first; a file that cannot be read, understood or written
    /// is an error (of kind `InvalidData`, whose inner error is a [`StateFileError`] naming the
    /// file), never an empty start.
    pub async fn start(
        listen: SocketAddr,
        config: EmulatorConfig,
    ) -> std::io::Result<RunningEmulator> {
        config
            .check()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let state = EmulatorState::new(&config);
        let state_lock = match &config.state_file {
            Some(path) => Some(
                lock_state_file(path)
                    .await
                    .map(Arc::new)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?,
            ),
            None => None,
        };
        let loaded = match &config.state_file {
            Some(path) => Some(
                load_state(&state, path)
                    .await
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?,
            ),
            None => None,
        };
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (stop_writer, writer) = match &state.inner.durability {
            Some(durability) => {
                let (stop, stopped) = oneshot::channel::<()>();
                let snapshot_of = state.clone();
                // A write runs on a blocking thread that outlives an abort of the writer (a
                // dropped emulator): the lock goes with it, so it is held until that write ends.
                let lock = state_lock.clone();
                let writer = tokio::spawn(Arc::clone(durability).run_writer(
                    move || {
                        let _held = &lock;
                        snapshot_of.snapshot()
                    },
                    stopped,
                ));
                (Some(stop), Some(writer))
            }
            None => (None, None),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let app = router(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    // A dropped sender stops the server too.
                    let _ = stopped.await;
                })
                .await
        });
        tracing::info!(
            %addr,
            account_id = %config.account_id,
            mapped_keys = config.accounts.len(),
            registered_roles = config.roles.len(),
            require_registered_roles = config.require_registered_roles,
            default_region = %config.region,
            idempotency = %config.idempotency,
            list_lag_ms = config.list_lag.as_millis(),
            state_file = config.state_file.as_ref().map(|p| p.display().to_string()),
            loaded_connections = loaded,
            "proton emulator listening"
        );
        Ok(RunningEmulator {
            addr,
            state,
            stop: Some(stop),
            task: Some(task),
            stop_writer,
            writer,
            _state_lock: state_lock,
        })
    }

    /// The address actually bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A URL clients can use: an unspecified bind address is reached through loopback.
    pub fn url(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, self.addr.port()))
    }

    pub fn state(&self) -> EmulatorState {
        self.state.clone()
    }

    /// Stops accepting, lets in-flight requests finish (for a few seconds at most), writes the
    /// state file one last time, and returns.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take() {
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(err))) => tracing::warn!(%err, "emulator server failed"),
                Ok(Err(err)) => tracing::warn!(%err, "emulator server task failed"),
                Err(_) => {
                    tracing::warn!("emulator still busy after the grace period: stopping it");
                    task.abort();
                }
            }
        }
        // After the server: in-flight requests wait for the writer.
        if let Some(stop) = self.stop_writer.take() {
            let _ = stop.send(());
        }
        if let Some(writer) = self.writer.take()
            && let Err(err) = writer.await
        {
            tracing::warn!(%err, "state writer task failed");
        }
    }
}

impl Drop for RunningEmulator {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        // A write under way still completes (it runs on a blocking thread); the file is never
        // left half-written.
        if let Some(writer) = self.writer.take() {
            writer.abort();
        }
    }
}

/// How long a start waits for the lock of a state file that an emulator stopping in this process
/// still holds: a write of its state may still be ending on a blocking thread.
const STATE_LOCK_WAIT: Duration = Duration::from_secs(2);

/// The state file's lock ([`state_file::lock`]), waited for up to [`STATE_LOCK_WAIT`].
async fn lock_state_file(path: &std::path::Path) -> Result<std::fs::File, StateFileError> {
    let deadline = tokio::time::Instant::now() + STATE_LOCK_WAIT;
    loop {
        match state_file::lock(path) {
            Err(StateFileError::InUse { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            locked => return locked,
        }
    }
}

/// Loads the state file into `state` (a missing file is an empty state) and writes it back at
/// once, so a file that cannot be written is found now rather than at the first change.
/// Answers how many connections were loaded.
async fn load_state(
    state: &EmulatorState,
    path: &std::path::Path,
) -> Result<usize, StateFileError> {
    let path = path.to_path_buf();
    let failed_path = path.clone();
    let state = state.clone();
    tokio::task::spawn_blocking(move || {
        state_file::remove_leftovers(&path);
        let mut loaded = 0;
        if let Some(document) = state_file::load(&path)? {
            loaded = document.connections.len();
            state
                .restore(document)
                .map_err(|problem| StateFileError::Invalid {
                    path: path.clone(),
                    problem,
                })?;
        }
        let (_, document) = state.snapshot();
        state_file::write(&path, &document)?;
        Ok(loaded)
    })
    .await
    .unwrap_or_else(|err| {
        Err(StateFileError::Write {
            path: failed_path,
            source: std::io::Error::other(err),
        })
    })
}
