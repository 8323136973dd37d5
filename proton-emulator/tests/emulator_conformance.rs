//! The Proton emulator, driven through the real `aws-sdk-proton` client (and boto3 when present):
//! every operation, every error type of the model, idempotency (lenient and strict), regions,
//! list lag, pagination, tags, fault injection, call accounting, STS GetCallerIdentity through
//! `aws-sdk-sts`, and the `proton-emulator` binary.
#![allow(deprecated)] // every operation of aws-sdk-proton is deprecated (Proton closed to new customers)

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_proton::Client;
use aws_sdk_proton::config::retry::RetryConfig;
use aws_sdk_proton::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_proton::error::ProvideErrorMetadata;
use aws_sdk_proton::operation::accept_environment_account_connection::AcceptEnvironmentAccountConnectionError;
use aws_sdk_proton::operation::create_environment_account_connection::CreateEnvironmentAccountConnectionError;
use aws_sdk_proton::operation::delete_environment_account_connection::DeleteEnvironmentAccountConnectionError;
use aws_sdk_proton::operation::get_environment_account_connection::GetEnvironmentAccountConnectionError;
use aws_sdk_proton::operation::list_environment_account_connections::ListEnvironmentAccountConnectionsError;
use aws_sdk_proton::operation::list_tags_for_resource::ListTagsForResourceError;
use aws_sdk_proton::operation::reject_environment_account_connection::RejectEnvironmentAccountConnectionError;
use aws_sdk_proton::operation::tag_resource::TagResourceError;
use aws_sdk_proton::operation::untag_resource::UntagResourceError;
use aws_sdk_proton::operation::update_environment_account_connection::UpdateEnvironmentAccountConnectionError;
use aws_sdk_proton::types::{
    EnvironmentAccountConnection, EnvironmentAccountConnectionRequesterAccountType as RequestedBy,
    EnvironmentAccountConnectionStatus as Status, Tag,
};
use proton_emulator::{EmulatorConfig, Faults, Idempotency, RunningEmulator, Settings};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const MGMT: &str = "111122223333";
const ACCOUNT: &str = "444455556666";
const ROLE: &str = "arn:aws:iam::444455556666:role/proton-env";
const CODEBUILD_ROLE: &str = "arn:aws:iam::444455556666:role/proton-codebuild";
const COMPONENT_ROLE: &str = "arn:aws:iam::444455556666:role/proton-component";
const MISSING_ID: &str = "00000000-0000-4000-8000-000000000000";
const CREATE: &str = "CreateEnvironmentAccountConnection";
const GET: &str = "GetEnvironmentAccountConnection";

// ---- harness -------------------------------------------------------------------------------

struct Emu {
    emu: RunningEmulator,
    client: Client,
}

async fn start() -> Emu {
    start_with(EmulatorConfig::default()).await
}

async fn start_with(config: EmulatorConfig) -> Emu {
    let emu = RunningEmulator::start("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    let client = sdk_client(&emu.url());
    Emu { emu, client }
}

fn sdk_client(url: &str) -> Client {
    sdk_client_in(url, "us-east-1")
}

/// A client whose requests are signed for `region`, so the emulator serves them there.
fn sdk_client_in(url: &str, region: &str) -> Client {
    let config = aws_sdk_proton::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .endpoint_url(url)
        .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
        .retry_config(RetryConfig::disabled())
        .build();
    Client::from_conf(config)
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build().unwrap()
}

async fn create(client: &Client, env: &str) -> EnvironmentAccountConnection {
    client
        .create_environment_account_connection()
        .environment_name(env)
        .management_account_id(MGMT)
        .role_arn(ROLE)
        .send()
        .await
        .unwrap()
        .environment_account_connection
        .unwrap()
}

async fn get(client: &Client, id: &str) -> EnvironmentAccountConnection {
    client
        .get_environment_account_connection()
        .id(id)
        .send()
        .await
        .unwrap()
        .environment_account_connection
        .unwrap()
}

async fn tags_of(client: &Client, arn: &str) -> Vec<(String, String)> {
    client
        .list_tags_for_resource()
        .resource_arn(arn)
        .send()
        .await
        .unwrap()
        .tags
        .into_iter()
        .map(|t| (t.key, t.value))
        .collect()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The message of a service error, checked to carry `code` as its error code.
fn message_of(err: &impl ProvideErrorMetadata, code: &str) -> String {
    assert_eq!(err.code(), Some(code), "{:?}", err.message());
    err.message().unwrap_or_default().to_string()
}

struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// A minimal HTTP/1.1 exchange: the project has no HTTP client dependency, and the SDK cannot
/// send what it would never send (no token, missing members, bad JSON).
async fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    RawResponse {
        status,
        headers,
        body: body.to_string(),
    }
}

/// An API call the way any awsJson client makes it.
async fn raw_call(addr: SocketAddr, operation: &str, body: &str) -> RawResponse {
    let target = format!("AwsProton20200720.{operation}");
    raw(
        addr,
        "POST",
        "/",
        &[
            ("X-Amz-Target", &target),
            ("Content-Type", "application/x-amz-json-1.0"),
        ],
        body,
    )
    .await
}

// ---- happy paths ---------------------------------------------------------------------------

#[tokio::test]
async fn create_returns_a_pending_connection_with_every_field() {
    let Emu { emu: _emu, client } = start().await;
    let before = now_secs();
    let out = client
        .create_environment_account_connection()
        .environment_name("prod-eu")
        .management_account_id(MGMT)
        .role_arn(ROLE)
        .codebuild_role_arn(CODEBUILD_ROLE)
        .component_role_arn(COMPONENT_ROLE)
        .client_token("uid-1")
        .send()
        .await
        .unwrap();
    let c = out.environment_account_connection.unwrap();
    assert_eq!(c.status, Status::Pending);
    assert_eq!(c.environment_name, "prod-eu");
    assert_eq!(c.management_account_id, MGMT);
    assert_eq!(c.environment_account_id, ACCOUNT);
    assert_eq!(c.role_arn, ROLE);
    assert_eq!(c.codebuild_role_arn.as_deref(), Some(CODEBUILD_ROLE));
    assert_eq!(c.component_role_arn.as_deref(), Some(COMPONENT_ROLE));
    assert!(uuid::Uuid::parse_str(&c.id).is_ok(), "{}", c.id);
    assert_eq!(c.id, c.id.to_lowercase());
    assert_eq!(
        c.arn,
        format!(
            "arn:aws:proton:us-east-1:{ACCOUNT}:environment-account-connection/{}",
            c.id
        )
    );
    assert!(c.requested_at.secs() >= before && c.requested_at.secs() <= now_secs());
    assert_eq!(c.last_modified_at, c.requested_at);
}

#[tokio::test]
async fn get_returns_what_create_made() {
    let Emu { emu: _emu, client } = start().await;
    let created = create(&client, "dev").await;
    assert_eq!(get(&client, &created.id).await, created);
}

#[tokio::test]
async fn update_replaces_the_optional_roles_and_keeps_an_absent_service_role() {
    let Emu { emu: _emu, client } = start().await;
    let created = create(&client, "dev").await;
    let updated = client
        .update_environment_account_connection()
        .id(&created.id)
        .component_role_arn(COMPONENT_ROLE)
        .send()
        .await
        .unwrap()
        .environment_account_connection
        .unwrap();
    assert_eq!(
        updated.role_arn, ROLE,
        "an absent roleArn is left unchanged"
    );
    assert_eq!(updated.component_role_arn.as_deref(), Some(COMPONENT_ROLE));
    assert_eq!(updated.codebuild_role_arn, None);
    assert_eq!(updated.requested_at, created.requested_at);
    assert!(updated.last_modified_at > created.last_modified_at);
    assert_eq!(get(&client, &created.id).await, updated);

    let new_role = "arn:aws:iam::444455556666:role/other";
    let again = client
        .update_environment_account_connection()
        .id(&created.id)
        .role_arn(new_role)
        .codebuild_role_arn(CODEBUILD_ROLE)
        .send()
        .await
        .unwrap()
        .environment_account_connection
        .unwrap();
    assert_eq!(again.role_arn, new_role);
    assert_eq!(again.codebuild_role_arn.as_deref(), Some(CODEBUILD_ROLE));
    assert_eq!(
        again.component_role_arn, None,
        "an optional role absent from the request is cleared"
    );
}

#[tokio::test]
async fn accept_connects_a_pending_connection() {
    let Emu { emu: _emu, client } = start().await;
    let created = create(&client, "dev").await;
    let accepted = client
        .accept_environment_account_connection()
        .id(&created.id)
        .send()
        .await
        .unwrap()
        .environment_account_connection
        .unwrap();
    assert_eq!(accepted.status, Status::Connected);
    assert_eq!(accepted.id, created.id);
    assert!(accepted.last_modified_at > created.last_modified_at);
    assert_eq!(get(&client, &created.id).await.status, Status::Connected);
}

#[tokio::test]
async fn reject_works_from_pending_and_from_connected() {
    let Emu { emu, client } = start().await;
    let pending = create(&client, "a").await;
    let rejected = client
        .reject_environment_account_connection()
        .id(&pending.id)
        .send()
        .await
        .unwrap()
        .environment_account_connection
        .unwrap();
    assert_eq!(rejected.status, Status::Rejected);

    let connected = create(&client, "b").await;
    emu.state().accept(&connected.id).unwrap();
    let rejected = client
        .reject_environment_account_connection()
        .id(&connected.id)
        .send()
        .await
        .unwrap()
        .environment_account_connection
        .unwrap();
    assert_eq!(rejected.status, Status::Rejected);
}

#[tokio::test]
async fn delete_returns_the_connection_and_forgets_it_and_its_tags() {
    let Emu { emu, client } = start().await;
    let created = client
        .create_environment_account_connection()
        .environment_name("dev")
        .management_account_id(MGMT)
        .tags(tag("team", "payments"))
        .send()
        .await
        .unwrap()
        .environment_account_connection
        .unwrap();
    let deleted = client
        .delete_environment_account_connection()
        .id(&created.id)
        .send()
        .await
        .unwrap()
        .environment_account_connection
        .unwrap();
    assert_eq!(deleted, created);
    assert!(emu.state().connections().is_empty());

    let err = client
        .get_environment_account_connection()
        .id(&created.id)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(
            err,
            GetEnvironmentAccountConnectionError::ResourceNotFoundException(_)
        ),
        "{err:?}"
    );
    let err = client
        .list_tags_for_resource()
        .resource_arn(&created.arn)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(err, ListTagsForResourceError::ResourceNotFoundException(_)),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_connection_created_without_role_reads_back_with_an_empty_role() {
    // roleArn is required in the output shape but optional on Create: the SDK fills in "".
    let Emu { emu: _emu, client } = start().await;
    let created = client
        .create_environment_account_connection()
        .environment_name("dev")
        .management_account_id(MGMT)
        .send()
        .await
        .unwrap()
        .environment_account_connection
        .unwrap();
    assert_eq!(created.role_arn, "");
    assert_eq!(get(&client, &created.id).await.role_arn, "");
}

// ---- idempotency and conflicts ---------------------------------------------------------------

#[tokio::test]
async fn same_client_token_returns_the_same_connection_until_it_is_deleted() {
    let Emu { emu, client } = start().await;
    let send = || {
        client
            .create_environment_account_connection()
            .environment_name("prod")
            .management_account_id(MGMT)
            .role_arn(ROLE)
            .client_token("5f0c9d4e-uid")
            .send()
    };
    let first = send()
        .await
        .unwrap()
        .environment_account_connection
        .unwrap();
    let second = send()
        .await
        .unwrap()
        .environment_account_connection
        .unwrap();
    assert_eq!(first.id, second.id);
    assert_eq!(emu.state().connections().len(), 1);
    assert_eq!(emu.state().calls().count(CREATE), 2);

    client
        .delete_environment_account_connection()
        .id(&first.id)
        .send()
        .await
        .unwrap();
    let third = send()
        .await
        .unwrap()
        .environment_account_connection
        .unwrap();
    assert_ne!(third.id, first.id, "a deleted connection frees its token");
    assert_eq!(emu.state().connections().len(), 1);
}

#[tokio::test]
async fn concurrent_creates_with_one_token_make_one_connection() {
    let Emu { emu, client } = start().await;
    let sends = (0..8).map(|_| {
        client
            .create_environment_account_connection()
            .environment_name("race")
            .management_account_id(MGMT)
            .client_token("same-uid")
            .send()
    });
    let ids: Vec<String> = futures::future::join_all(sends)
        .await
        .into_iter()
        .map(|out| out.unwrap().environment_account_connection.unwrap().id)
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_eq!(emu.state().connections().len(), 1);
    assert_eq!(emu.state().calls().count(CREATE), 8);
}

#[tokio::test]
async fn create_without_client_token_always_creates() {
    // The SDK invents a token when none is set, so this goes over raw HTTP.
    let Emu { emu, client } = start().await;
    let body = json!({"environmentName": "dev", "managementAccountId": MGMT}).to_string();
    let first = raw_call(emu.addr(), CREATE, &body).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let first_id = first.json()["environmentAccountConnection"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    client
        .reject_environment_account_connection()
        .id(&first_id)
        .send()
        .await
        .unwrap();
    let second = raw_call(emu.addr(), CREATE, &body).await;
    assert_eq!(second.status, 200, "{}", second.body);
    assert_ne!(
        second.json()["environmentAccountConnection"]["id"],
        first_id.as_str()
    );
    assert_eq!(emu.state().connections().len(), 2);
}

#[tokio::test]
async fn a_second_connection_for_the_same_environment_is_a_conflict_until_rejected() {
    let Emu { emu: _emu, client } = start().await;
    let first = create(&client, "prod").await;
    let err = client
        .create_environment_account_connection()
        .environment_name("prod")
        .management_account_id(MGMT)
        .client_token("another-token")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(
            err,
            CreateEnvironmentAccountConnectionError::ConflictException(_)
        ),
        "{err:?}"
    );
    let message = message_of(&err, "ConflictException");
    assert!(message.contains("already exists"), "{message}");
    assert!(message.contains(&first.id), "{message}");

    // Another management account is another connection.
    client
        .create_environment_account_connection()
        .environment_name("prod")
        .management_account_id("999988887777")
        .send()
        .await
        .unwrap();

    client
        .reject_environment_account_connection()
        .id(&first.id)
        .send()
        .await
        .unwrap();
    create(&client, "prod").await;
}

#[tokio::test]
async fn status_conflicts_name_the_state() {
    let Emu { emu: _emu, client } = start().await;
    let c = create(&client, "dev").await;
    client
        .reject_environment_account_connection()
        .id(&c.id)
        .send()
        .await
        .unwrap();

    let err = client
        .accept_environment_account_connection()
        .id(&c.id)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(
            err,
            AcceptEnvironmentAccountConnectionError::ConflictException(_)
        ),
        "{err:?}"
    );
    assert!(message_of(&err, "ConflictException").contains("REJECTED"));

    let err = client
        .reject_environment_account_connection()
        .id(&c.id)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(
            err,
            RejectEnvironmentAccountConnectionError::ConflictException(_)
        ),
        "{err:?}"
    );

    let err = client
        .update_environment_account_connection()
        .id(&c.id)
        .role_arn(ROLE)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(
            err,
            UpdateEnvironmentAccountConnectionError::ConflictException(_)
        ),
        "{err:?}"
    );
    assert!(message_of(&err, "ConflictException").contains("REJECTED"));

    let connected = create(&client, "other").await;
    client
        .accept_environment_account_connection()
        .id(&connected.id)
        .send()
        .await
        .unwrap();
    let err = client
        .accept_environment_account_connection()
        .id(&connected.id)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(message_of(&err, "ConflictException").contains("CONNECTED"));
}

// ---- not found -----------------------------------------------------------------------------

#[tokio::test]
async fn unknown_ids_and_arns_are_not_found_for_every_operation() {
    let Emu { emu: _emu, client } = start().await;
    let err = client
        .get_environment_account_connection()
        .id(MISSING_ID)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(matches!(
        err,
        GetEnvironmentAccountConnectionError::ResourceNotFoundException(_)
    ));
    assert!(message_of(&err, "ResourceNotFoundException").contains(MISSING_ID));

    let err = client
        .update_environment_account_connection()
        .id(MISSING_ID)
        .role_arn(ROLE)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(matches!(
        err,
        UpdateEnvironmentAccountConnectionError::ResourceNotFoundException(_)
    ));

    let err = client
        .delete_environment_account_connection()
        .id(MISSING_ID)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(matches!(
        err,
        DeleteEnvironmentAccountConnectionError::ResourceNotFoundException(_)
    ));

    let err = client
        .accept_environment_account_connection()
        .id(MISSING_ID)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(matches!(
        err,
        AcceptEnvironmentAccountConnectionError::ResourceNotFoundException(_)
    ));

    let err = client
        .reject_environment_account_connection()
        .id(MISSING_ID)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(matches!(
        err,
        RejectEnvironmentAccountConnectionError::ResourceNotFoundException(_)
    ));

    let arn =
        format!("arn:aws:proton:us-east-1:{ACCOUNT}:environment-account-connection/{MISSING_ID}");
    let err = client
        .tag_resource()
        .resource_arn(&arn)
        .tags(tag("a", "b"))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(err, TagResourceError::ResourceNotFoundException(_)),
        "{err:?}"
    );
    let err = client
        .untag_resource()
        .resource_arn(&arn)
        .tag_keys("a")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(err, UntagResourceError::ResourceNotFoundException(_)),
        "{err:?}"
    );
    let err = client
        .list_tags_for_resource()
        .resource_arn(&arn)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(err, ListTagsForResourceError::ResourceNotFoundException(_)),
        "{err:?}"
    );
}

// ---- validation ----------------------------------------------------------------------------

fn create_validation_message(err: CreateEnvironmentAccountConnectionError) -> String {
    assert!(
        matches!(
            err,
            CreateEnvironmentAccountConnectionError::ValidationException(_)
        ),
        "{err:?}"
    );
    message_of(&err, "ValidationException")
}

#[tokio::test]
async fn create_validation_errors_name_the_field_and_the_constraint() {
    let Emu { emu, client } = start().await;
    let base = || {
        client
            .create_environment_account_connection()
            .environment_name("dev")
            .management_account_id(MGMT)
    };

    let err = base()
        .environment_name("bad name")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    let message = create_validation_message(err);
    assert!(
        message.starts_with("1 validation error detected: Value 'bad name' at 'environmentName'"),
        "{message}"
    );
    assert!(
        message.contains("^[0-9A-Za-z]+[0-9A-Za-z_\\-]*$"),
        "{message}"
    );

    let err = base()
        .environment_name("x".repeat(101))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    let message = create_validation_message(err);
    assert!(
        message.contains("length less than or equal to 100"),
        "{message}"
    );

    let err = base()
        .management_account_id("12345")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(create_validation_message(err).contains("'managementAccountId'"));

    let err = base()
        .role_arn("arn:aws:iam::444455556666:user/someone")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(create_validation_message(err).contains("'roleArn'"));

    let err = base()
        .component_role_arn("not-an-arn")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(create_validation_message(err).contains("'componentRoleArn'"));

    let err = base()
        .client_token("t".repeat(65))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    let message = create_validation_message(err);
    assert!(message.contains("'clientToken'"), "{message}");
    assert!(
        message.contains("length less than or equal to 64"),
        "{message}"
    );

    let err = base()
        .client_token("has space")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(create_validation_message(err).contains("^[!-~]*$"));

    let many: Vec<Tag> = (0..51).map(|i| tag(&format!("k{i}"), "v")).collect();
    let err = base()
        .set_tags(Some(many))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    let message = create_validation_message(err);
    assert!(message.contains("at 'tags'"), "{message}");
    assert!(message.contains("less than or equal to 50"), "{message}");

    let err = base()
        .tags(tag(&"k".repeat(129), "v"))
        .tags(tag("ok", &"v".repeat(257)))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    let message = create_validation_message(err);
    assert!(
        message.starts_with("2 validation errors detected"),
        "{message}"
    );
    assert!(message.contains("'tags.1.member.key'"), "{message}");
    assert!(message.contains("'tags.2.member.value'"), "{message}");

    assert!(
        emu.state().connections().is_empty(),
        "nothing invalid was created"
    );
}

#[tokio::test]
async fn other_validation_errors_map_to_each_operation_s_type() {
    let Emu { emu: _emu, client } = start().await;
    let err = client
        .get_environment_account_connection()
        .id("NOT-A-UUID")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(matches!(
        err,
        GetEnvironmentAccountConnectionError::ValidationException(_)
    ));
    assert!(message_of(&err, "ValidationException").contains("Value 'NOT-A-UUID' at 'id'"));

    for bad in [0, 101] {
        let err = client
            .list_environment_account_connections()
            .requested_by(RequestedBy::EnvironmentAccount)
            .max_results(bad)
            .send()
            .await
            .unwrap_err()
            .into_service_error();
        assert!(matches!(
            err,
            ListEnvironmentAccountConnectionsError::ValidationException(_)
        ));
        assert!(message_of(&err, "ValidationException").contains("'maxResults'"));
    }

    let err = client
        .list_environment_account_connections()
        .requested_by(RequestedBy::EnvironmentAccount)
        .next_token("not a token!")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(message_of(&err, "ValidationException").contains("'nextToken'"));

    let err = client
        .list_environment_account_connections()
        .requested_by(RequestedBy::EnvironmentAccount)
        .next_token("AAAA")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(message_of(&err, "ValidationException").contains("nextToken"));

    let err = client
        .list_environment_account_connections()
        .requested_by(RequestedBy::from("SOMEONE_ELSE"))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        message_of(&err, "ValidationException").contains("enum value set"),
        "{err:?}"
    );

    let err = client
        .list_tags_for_resource()
        .resource_arn("arn:aws:proton:us-east-1:123:x")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(matches!(
        err,
        ListTagsForResourceError::ValidationException(_)
    ));
    assert!(message_of(&err, "ValidationException").contains("'resourceArn'"));

    let err = client
        .update_environment_account_connection()
        .id(MISSING_ID)
        .codebuild_role_arn("arn:aws:iam::444455556666:role/")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(matches!(
        err,
        UpdateEnvironmentAccountConnectionError::ValidationException(_)
    ));
    assert!(message_of(&err, "ValidationException").contains("'codebuildRoleArn'"));

    let err = client
        .untag_resource()
        .resource_arn(format!(
            "arn:aws:proton:us-east-1:{ACCOUNT}:environment-account-connection/{MISSING_ID}"
        ))
        .tag_keys("")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(err, UntagResourceError::ValidationException(_)),
        "{err:?}"
    );
    assert!(message_of(&err, "ValidationException").contains("'tagKeys.1.member'"));
}

#[tokio::test]
async fn missing_required_members_are_validation_errors() {
    let Emu { emu, .. } = start().await;
    for (operation, body, field) in [
        (GET, "{}", "id"),
        ("DeleteEnvironmentAccountConnection", "{}", "id"),
        ("AcceptEnvironmentAccountConnection", "{\"id\": null}", "id"),
        ("ListEnvironmentAccountConnections", "{}", "requestedBy"),
        (
            CREATE,
            "{\"environmentName\": \"e\"}",
            "managementAccountId",
        ),
        (
            "TagResource",
            "{\"resourceArn\": \"arn:aws:iam::444455556666:role/x\"}",
            "tags",
        ),
        ("UntagResource", "{\"tagKeys\": []}", "resourceArn"),
        ("ListTagsForResource", "", "resourceArn"),
    ] {
        let response = raw_call(emu.addr(), operation, body).await;
        assert_eq!(response.status, 400, "{operation}: {}", response.body);
        assert_eq!(
            response.header("x-amzn-ErrorType"),
            Some("ValidationException")
        );
        let error = response.json();
        assert_eq!(error["__type"], "ValidationException");
        let expected = format!(
            "Value null at '{field}' failed to satisfy constraint: Member must not be null"
        );
        assert!(
            error["message"].as_str().unwrap().contains(&expected),
            "{operation}: {error}"
        );
    }
}

#[tokio::test]
async fn unknown_operations_and_malformed_bodies_are_protocol_errors() {
    let Emu { emu, .. } = start().await;
    let response = raw_call(emu.addr(), "CreateService", "{}").await;
    assert_eq!(response.status, 400);
    assert_eq!(response.json()["__type"], "UnknownOperationException");
    assert_eq!(
        response.header("x-amzn-ErrorType"),
        Some("UnknownOperationException")
    );

    let response = raw(emu.addr(), "POST", "/", &[], "{}").await;
    assert_eq!(response.json()["__type"], "UnknownOperationException");

    let response = raw_call(emu.addr(), GET, "{\"id\": ").await;
    assert_eq!(response.status, 400);
    assert_eq!(response.json()["__type"], "SerializationException");

    let response = raw_call(emu.addr(), GET, "{\"id\": 42}").await;
    assert_eq!(response.json()["__type"], "SerializationException");
    assert!(
        response.json()["message"]
            .as_str()
            .unwrap()
            .contains("'id'")
    );

    let response = raw_call(emu.addr(), GET, &format!("{{\"id\": \"{MISSING_ID}\"}}")).await;
    assert_eq!(response.status, 400);
    assert_eq!(
        response.header("content-type"),
        Some("application/x-amz-json-1.0")
    );
    assert!(response.header("x-amzn-RequestId").is_some());
}

// ---- listing -------------------------------------------------------------------------------

#[tokio::test]
async fn list_pages_through_every_connection_exactly_once() {
    let Emu { emu: _emu, client } = start().await;
    let mut ids = vec![];
    for i in 0..7 {
        ids.push(create(&client, &format!("env{i}")).await.id);
    }
    let mut seen = vec![];
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let out = client
            .list_environment_account_connections()
            .requested_by(RequestedBy::EnvironmentAccount)
            .max_results(3)
            .set_next_token(token.clone())
            .send()
            .await
            .unwrap();
        pages += 1;
        assert!(out.environment_account_connections.len() <= 3);
        for summary in &out.environment_account_connections {
            assert_eq!(summary.status, Status::Pending);
            assert_eq!(summary.role_arn, ROLE);
            assert_eq!(summary.environment_account_id, ACCOUNT);
            assert_eq!(summary.management_account_id, MGMT);
            assert!(summary.arn.ends_with(&summary.id));
        }
        seen.extend(
            out.environment_account_connections
                .into_iter()
                .map(|s| s.id),
        );
        token = out.next_token;
        if token.is_none() {
            break;
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids, "every id once, in creation order");

    // The SDK's paginator follows the same tokens.
    let all: Vec<_> = client
        .list_environment_account_connections()
        .requested_by(RequestedBy::ManagementAccount)
        .max_results(2)
        .into_paginator()
        .items()
        .send()
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .map(|item| item.unwrap().id)
        .collect();
    assert_eq!(all, ids);
}

#[tokio::test]
async fn list_filters_by_environment_and_status() {
    let Emu { emu: _emu, client } = start().await;
    let a = create(&client, "alpha").await;
    let b = create(&client, "beta").await;
    let c = create(&client, "gamma").await;
    client
        .accept_environment_account_connection()
        .id(&b.id)
        .send()
        .await
        .unwrap();
    client
        .reject_environment_account_connection()
        .id(&c.id)
        .send()
        .await
        .unwrap();

    let list = |env: Option<&str>, statuses: Vec<Status>| {
        client
            .list_environment_account_connections()
            .requested_by(RequestedBy::EnvironmentAccount)
            .set_environment_name(env.map(str::to_string))
            .set_statuses(Some(statuses))
            .send()
    };
    let ids = |out: aws_sdk_proton::operation::list_environment_account_connections::ListEnvironmentAccountConnectionsOutput| {
        out.environment_account_connections
            .into_iter()
            .map(|s| s.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(list(Some("alpha"), vec![]).await.unwrap()),
        vec![a.id.clone()]
    );
    assert_eq!(
        ids(list(None, vec![Status::Connected]).await.unwrap()),
        vec![b.id.clone()]
    );
    assert_eq!(
        ids(list(None, vec![Status::Pending, Status::Rejected])
            .await
            .unwrap()),
        vec![a.id.clone(), c.id.clone()]
    );
    assert!(ids(list(Some("beta"), vec![Status::Pending]).await.unwrap()).is_empty());
    assert_eq!(ids(list(None, vec![]).await.unwrap()).len(), 3);
}

// ---- tags ----------------------------------------------------------------------------------

#[tokio::test]
async fn tags_given_on_create_then_tag_and_untag() {
    let Emu { emu, client } = start().await;
    let c = client
        .create_environment_account_connection()
        .environment_name("dev")
        .management_account_id(MGMT)
        .tags(tag("eac.dev/uid", "1234"))
        .tags(tag("team", "payments"))
        .send()
        .await
        .unwrap()
        .environment_account_connection
        .unwrap();
    assert_eq!(
        tags_of(&client, &c.arn).await,
        pairs(&[("eac.dev/uid", "1234"), ("team", "payments")])
    );

    client
        .tag_resource()
        .resource_arn(&c.arn)
        .tags(tag("team", "core"))
        .tags(tag("tier", ""))
        .send()
        .await
        .unwrap();
    assert_eq!(
        tags_of(&client, &c.arn).await,
        pairs(&[("eac.dev/uid", "1234"), ("team", "core"), ("tier", "")])
    );

    client
        .untag_resource()
        .resource_arn(&c.arn)
        .tag_keys("tier")
        .tag_keys("never-there")
        .send()
        .await
        .unwrap();
    assert_eq!(
        tags_of(&client, &c.arn).await,
        pairs(&[("eac.dev/uid", "1234"), ("team", "core")])
    );
    assert_eq!(
        emu.state().connections()[0]
            .tags
            .get("team")
            .map(String::as_str),
        Some("core")
    );
}

#[tokio::test]
async fn list_tags_pages() {
    let Emu { emu: _emu, client } = start().await;
    let c = create(&client, "dev").await;
    let tags: Vec<Tag> = (0..5)
        .map(|i| tag(&format!("k{i}"), &format!("v{i}")))
        .collect();
    client
        .tag_resource()
        .resource_arn(&c.arn)
        .set_tags(Some(tags))
        .send()
        .await
        .unwrap();
    let mut keys = vec![];
    let mut token = None;
    let mut pages = 0;
    loop {
        let out = client
            .list_tags_for_resource()
            .resource_arn(&c.arn)
            .max_results(2)
            .set_next_token(token)
            .send()
            .await
            .unwrap();
        pages += 1;
        keys.extend(out.tags.into_iter().map(|t| t.key));
        token = out.next_token;
        if token.is_none() {
            break;
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(keys, ["k0", "k1", "k2", "k3", "k4"]);
}

#[tokio::test]
async fn a_resource_holds_at_most_fifty_tags() {
    let Emu { emu: _emu, client } = start().await;
    let c = client
        .create_environment_account_connection()
        .environment_name("dev")
        .management_account_id(MGMT)
        .set_tags(Some((0..45).map(|i| tag(&format!("k{i}"), "v")).collect()))
        .send()
        .await
        .unwrap()
        .environment_account_connection
        .unwrap();
    let err = client
        .tag_resource()
        .resource_arn(&c.arn)
        .set_tags(Some(
            (100..106).map(|i| tag(&format!("k{i}"), "v")).collect(),
        ))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(err, TagResourceError::ValidationException(_)),
        "{err:?}"
    );
    assert!(message_of(&err, "ValidationException").contains("at most 50"));
    assert_eq!(tags_of(&client, &c.arn).await.len(), 45);
    // Up to the limit is fine.
    client
        .tag_resource()
        .resource_arn(&c.arn)
        .set_tags(Some(
            (100..105).map(|i| tag(&format!("k{i}"), "v")).collect(),
        ))
        .send()
        .await
        .unwrap();
}

// ---- faults --------------------------------------------------------------------------------

#[tokio::test]
async fn denied_operations_get_access_denied() {
    let Emu { emu, client } = start_with(EmulatorConfig {
        faults: Faults {
            deny: [CREATE.to_string()].into(),
            ..Faults::default()
        },
        ..EmulatorConfig::default()
    })
    .await;
    let err = client
        .create_environment_account_connection()
        .environment_name("dev")
        .management_account_id(MGMT)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(
            err,
            CreateEnvironmentAccountConnectionError::AccessDeniedException(_)
        ),
        "{err:?}"
    );
    assert!(message_of(&err, "AccessDeniedException").contains(&format!("proton:{CREATE}")));
    assert!(emu.state().connections().is_empty());

    // Other operations still work, and the deny list can be lifted at run time.
    client
        .list_environment_account_connections()
        .requested_by(RequestedBy::EnvironmentAccount)
        .send()
        .await
        .unwrap();
    emu.state().set_faults(Faults::default());
    create(&client, "dev").await;

    let counts = emu.state().calls();
    assert_eq!(counts.count(CREATE), 2);
    assert_eq!(counts.injected_errors, 1);
}

#[tokio::test]
async fn requests_above_the_rate_limit_are_throttled() {
    let Emu { emu, client } = start_with(EmulatorConfig {
        faults: Faults {
            throttle_rps: Some(1),
            ..Faults::default()
        },
        ..EmulatorConfig::default()
    })
    .await;
    // The limit is one per sliding second: within a bounded number of back-to-back calls one
    // must be throttled, however slow the machine.
    let mut throttled = None;
    let mut ok = 0;
    for _ in 0..50 {
        match client
            .get_environment_account_connection()
            .id(MISSING_ID)
            .send()
            .await
            .unwrap_err()
            .into_service_error()
        {
            GetEnvironmentAccountConnectionError::ResourceNotFoundException(_) => ok += 1,
            err @ GetEnvironmentAccountConnectionError::ThrottlingException(_) => {
                throttled = Some(err);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let err = throttled.expect("no request was throttled");
    assert!(ok >= 1, "the first request is within the limit");
    assert_eq!(message_of(&err, "ThrottlingException"), "Rate exceeded");
    let counts = emu.state().calls();
    assert_eq!(counts.throttled, 1);
    assert_eq!(counts.count(GET), ok + 1);
}

#[tokio::test]
async fn fail_next_scripts_errors_for_the_next_calls_only() {
    let Emu { emu, client } = start().await;
    let state = emu.state();
    state.fail_next(CREATE, "ThrottlingException", 2);
    state.fail_next(CREATE, "InternalServerException", 1);
    let send = || {
        client
            .create_environment_account_connection()
            .environment_name("dev")
            .management_account_id(MGMT)
            .client_token("tok")
            .send()
    };
    for _ in 0..2 {
        let err = send().await.unwrap_err().into_service_error();
        assert!(
            matches!(
                err,
                CreateEnvironmentAccountConnectionError::ThrottlingException(_)
            ),
            "{err:?}"
        );
        assert_eq!(err.code(), Some("ThrottlingException"));
    }
    let err = send().await.unwrap_err().into_service_error();
    assert!(
        matches!(
            err,
            CreateEnvironmentAccountConnectionError::InternalServerException(_)
        ),
        "{err:?}"
    );
    assert!(message_of(&err, "InternalServerException").contains("injected"));
    assert!(
        state.connections().is_empty(),
        "faulted requests change nothing"
    );

    // Other operations were never affected; the next Create goes through.
    get_missing_is_not_found(&client).await;
    send().await.unwrap();
    let counts = state.calls();
    assert_eq!(counts.count(CREATE), 4);
    assert_eq!((counts.throttled, counts.injected_errors), (2, 1));
    assert_eq!(state.connections().len(), 1);
}

async fn get_missing_is_not_found(client: &Client) {
    let err = client
        .get_environment_account_connection()
        .id(MISSING_ID)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(matches!(
        err,
        GetEnvironmentAccountConnectionError::ResourceNotFoundException(_)
    ));
}

#[tokio::test]
async fn error_rate_one_fails_every_request_with_a_500() {
    let Emu { emu, client } = start_with(EmulatorConfig {
        faults: Faults {
            error_rate: 1.0,
            ..Faults::default()
        },
        ..EmulatorConfig::default()
    })
    .await;
    for _ in 0..3 {
        let err = client
            .list_environment_account_connections()
            .requested_by(RequestedBy::EnvironmentAccount)
            .send()
            .await
            .unwrap_err()
            .into_service_error();
        assert!(
            matches!(
                err,
                ListEnvironmentAccountConnectionsError::InternalServerException(_)
            ),
            "{err:?}"
        );
        assert_eq!(err.code(), Some("InternalServerException"));
    }
    let response = raw_call(emu.addr(), GET, &format!("{{\"id\": \"{MISSING_ID}\"}}")).await;
    assert_eq!(response.status, 500);
    assert_eq!(response.json()["__type"], "InternalServerException");
    assert_eq!(emu.state().calls().injected_errors, 4);
}

#[tokio::test]
async fn creating_beyond_max_connections_exceeds_the_quota() {
    let Emu { emu: _emu, client } = start_with(EmulatorConfig {
        max_connections: Some(2),
        ..EmulatorConfig::default()
    })
    .await;
    let first = create(&client, "a").await;
    create(&client, "b").await;
    let err = client
        .create_environment_account_connection()
        .environment_name("c")
        .management_account_id(MGMT)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(
            err,
            CreateEnvironmentAccountConnectionError::ServiceQuotaExceededException(_)
        ),
        "{err:?}"
    );
    assert!(message_of(&err, "ServiceQuotaExceededException").contains("quota of 2"));
    client
        .delete_environment_account_connection()
        .id(&first.id)
        .send()
        .await
        .unwrap();
    create(&client, "c").await;
}

#[tokio::test]
async fn latency_is_added_to_every_answer() {
    let latency = Duration::from_millis(300);
    let Emu { emu: _emu, client } = start_with(EmulatorConfig {
        faults: Faults {
            latency,
            ..Faults::default()
        },
        ..EmulatorConfig::default()
    })
    .await;
    let started = Instant::now();
    get_missing_is_not_found(&client).await;
    assert!(started.elapsed() >= latency, "{:?}", started.elapsed());
}

// ---- accounting and the emulator's own endpoints ----------------------------------------------

#[tokio::test]
async fn calls_endpoint_reports_counts_throttles_and_peak() {
    let Emu { emu, client } = start().await;
    let c = create(&client, "dev").await;
    for _ in 0..3 {
        get(&client, &c.id).await;
    }
    emu.state().fail_next(GET, "ThrottlingException", 1);
    assert!(
        client
            .get_environment_account_connection()
            .id(&c.id)
            .send()
            .await
            .is_err()
    );

    let response = raw(emu.addr(), "GET", "/_emulator/calls", &[], "").await;
    assert_eq!(response.status, 200);
    let calls = response.json();
    assert_eq!(calls["calls"][CREATE], 1);
    assert_eq!(calls["calls"][GET], 4);
    assert_eq!(calls["throttled"], 1);
    assert_eq!(calls["injectedErrors"], 0);
    let peak = calls["peakRequestsPerSecond"].as_u64().unwrap();
    assert!((1..=5).contains(&peak), "{peak}");
    // The endpoint itself is not an API call.
    assert_eq!(emu.state().calls().total(), 5);
    assert_eq!(serde_json::to_value(emu.state().calls()).unwrap(), calls);
}

#[tokio::test]
async fn faults_and_fail_next_can_be_set_over_http() {
    let Emu { emu, client } = start().await;
    let response = raw(
        emu.addr(),
        "PUT",
        "/_emulator/faults",
        &[("Content-Type", "application/json")],
        r#"{"throttleRps": null, "errorRate": 0, "latencyMs": 0, "deny": ["GetEnvironmentAccountConnection"]}"#,
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(emu.state().faults().deny.contains(GET));
    let err = client
        .get_environment_account_connection()
        .id(MISSING_ID)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(matches!(
        err,
        GetEnvironmentAccountConnectionError::AccessDeniedException(_)
    ));

    let response = raw(emu.addr(), "GET", "/_emulator/faults", &[], "").await;
    assert_eq!(response.json()["deny"], json!([GET]));

    let response = raw(
        emu.addr(),
        "PUT",
        "/_emulator/faults",
        &[],
        r#"{"errorRate": 2}"#,
    )
    .await;
    assert_eq!(response.status, 400);
    assert!(
        response.json()["message"]
            .as_str()
            .unwrap()
            .contains("errorRate")
    );
    assert!(
        emu.state().faults().deny.contains(GET),
        "a refused document changes nothing"
    );

    let response = raw(emu.addr(), "PUT", "/_emulator/faults", &[], "{}").await;
    assert_eq!(response.status, 200);
    get_missing_is_not_found(&client).await;

    let response = raw(
        emu.addr(),
        "POST",
        "/_emulator/fail-next",
        &[],
        r#"{"operation": "GetEnvironmentAccountConnection", "errorType": "InternalServerException", "count": 1}"#,
    )
    .await;
    assert_eq!(response.status, 204, "{}", response.body);
    let err = client
        .get_environment_account_connection()
        .id(MISSING_ID)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(matches!(
        err,
        GetEnvironmentAccountConnectionError::InternalServerException(_)
    ));
    get_missing_is_not_found(&client).await;

    // A misspelt operation would never fire: refused, naming the operations that exist, and
    // nothing is set.
    for (method, path, body) in [
        (
            "POST",
            "/_emulator/fail-next",
            r#"{"operation": "GetConnection", "errorType": "InternalServerException", "count": 1}"#,
        ),
        ("PUT", "/_emulator/faults", r#"{"deny": ["Create"]}"#),
    ] {
        let response = raw(emu.addr(), method, path, &[], body).await;
        assert_eq!(response.status, 400, "{path}: {}", response.body);
        let message = response.json()["message"].as_str().unwrap().to_string();
        assert!(message.contains("unknown operation"), "{path}: {message}");
        assert!(message.contains(GET), "{path}: {message}");
    }
    assert!(emu.state().faults().deny.is_empty());
    get_missing_is_not_found(&client).await;
}

#[tokio::test]
async fn changes_made_behind_the_api_s_back_show_through_it() {
    let Emu { emu, client } = start().await;
    let c = create(&client, "dev").await;
    emu.state().accept(&c.id).unwrap();
    assert_eq!(get(&client, &c.id).await.status, Status::Connected);
    assert!(emu.state().accept(&c.id).is_err());
    emu.state().reject(&c.id).unwrap();
    assert_eq!(get(&client, &c.id).await.status, Status::Rejected);
    assert!(emu.state().delete_out_of_band(&c.id));
    get_missing_is_not_found(&client).await;
    assert!(
        emu.state()
            .accept(MISSING_ID)
            .unwrap_err()
            .contains("could not be found")
    );
}

#[tokio::test]
async fn start_refuses_an_account_id_that_cannot_make_arns() {
    let config = EmulatorConfig {
        account_id: "not-an-account".into(),
        ..EmulatorConfig::default()
    };
    let Err(err) = RunningEmulator::start("127.0.0.1:0".parse().unwrap(), config).await else {
        panic!("a bad account id was accepted");
    };
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let Emu { emu, client } = start().await;
    let addr = emu.addr();
    create(&client, "dev").await;
    emu.shutdown().await;
    assert!(TcpStream::connect(addr).await.is_err());
}

// ---- regions ----------------------------------------------------------------------------------

#[tokio::test]
async fn clients_of_two_regions_see_disjoint_connections() {
    let Emu { emu, client: us } = start().await;
    let eu = sdk_client_in(&emu.url(), "eu-west-1");
    // Same environment, management account and token: in two regions, two connections.
    let create_in = |client: &Client| {
        client
            .create_environment_account_connection()
            .environment_name("prod")
            .management_account_id(MGMT)
            .role_arn(ROLE)
            .client_token("one-token")
            .tags(tag("team", "payments"))
            .send()
    };
    let in_us = create_in(&us)
        .await
        .unwrap()
        .environment_account_connection
        .unwrap();
    let in_eu = create_in(&eu)
        .await
        .unwrap()
        .environment_account_connection
        .unwrap();
    assert_ne!(in_us.id, in_eu.id);
    assert_eq!(
        in_us.arn,
        format!(
            "arn:aws:proton:us-east-1:{ACCOUNT}:environment-account-connection/{}",
            in_us.id
        )
    );
    assert_eq!(
        in_eu.arn,
        format!(
            "arn:aws:proton:eu-west-1:{ACCOUNT}:environment-account-connection/{}",
            in_eu.id
        )
    );
    assert_eq!(listed_ids(&us).await, [in_us.id.as_str()]);
    assert_eq!(listed_ids(&eu).await, [in_eu.id.as_str()]);

    // A connection of another region is unknown, exactly like an id that never existed.
    let err = us
        .get_environment_account_connection()
        .id(&in_eu.id)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(
            err,
            GetEnvironmentAccountConnectionError::ResourceNotFoundException(_)
        ),
        "{err:?}"
    );
    assert!(message_of(&err, "ResourceNotFoundException").contains("could not be found"));
    let err = us
        .accept_environment_account_connection()
        .id(&in_eu.id)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    message_of(&err, "ResourceNotFoundException");
    let err = us
        .delete_environment_account_connection()
        .id(&in_eu.id)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    message_of(&err, "ResourceNotFoundException");
    let err = us
        .list_tags_for_resource()
        .resource_arn(&in_eu.arn)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    message_of(&err, "ResourceNotFoundException");
    let err = us
        .tag_resource()
        .resource_arn(&in_eu.arn)
        .tags(tag("a", "b"))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    message_of(&err, "ResourceNotFoundException");
    assert_eq!(
        tags_of(&eu, &in_eu.arn).await,
        pairs(&[("team", "payments")])
    );

    // The test helpers find a connection by id in any region.
    let records = emu.state().connections();
    let region_of = |id: &str| {
        records
            .iter()
            .find(|r| r.id == id)
            .map(|r| r.region.clone())
            .unwrap()
    };
    assert_eq!(region_of(&in_us.id), "us-east-1");
    assert_eq!(region_of(&in_eu.id), "eu-west-1");
    emu.state().accept(&in_eu.id).unwrap();
    assert_eq!(get(&eu, &in_eu.id).await.status, Status::Connected);
    assert_eq!(get(&us, &in_us.id).await.status, Status::Pending);
    assert!(emu.state().delete_out_of_band(&in_eu.id));
    assert!(listed_ids(&eu).await.is_empty());
    assert_eq!(listed_ids(&us).await, [in_us.id]);
}

#[tokio::test]
async fn unsigned_requests_are_served_in_the_default_region() {
    let Emu { emu, client: _ } = start_with(EmulatorConfig {
        region: "ap-southeast-2".into(),
        ..EmulatorConfig::default()
    })
    .await;
    let body = json!({"environmentName": "dev", "managementAccountId": MGMT}).to_string();
    let unsigned = raw_call(emu.addr(), CREATE, &body).await;
    assert_eq!(unsigned.status, 200, "{}", unsigned.body);
    let arn = unsigned.json()["environmentAccountConnection"]["arn"].clone();
    assert!(
        arn.as_str()
            .unwrap()
            .starts_with("arn:aws:proton:ap-southeast-2:"),
        "{arn}"
    );

    // What decides is the credential scope of the signature (which is not checked).
    let signed = raw(
        emu.addr(),
        "POST",
        "/",
        &[
            (
                "X-Amz-Target",
                "AwsProton20200720.CreateEnvironmentAccountConnection",
            ),
            ("Content-Type", "application/x-amz-json-1.0"),
            (
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDRAW/20261123/sa-east-1/proton/aws4_request, \
                 SignedHeaders=host;x-amz-date, Signature=0123456789abcdef",
            ),
        ],
        &body,
    )
    .await;
    assert_eq!(signed.status, 200, "{}", signed.body);
    let arn = signed.json()["environmentAccountConnection"]["arn"].clone();
    assert!(
        arn.as_str()
            .unwrap()
            .starts_with("arn:aws:proton:sa-east-1:"),
        "{arn}"
    );
    let mut regions: Vec<String> = emu
        .state()
        .connections()
        .into_iter()
        .map(|c| c.region)
        .collect();
    regions.sort();
    assert_eq!(regions, ["ap-southeast-2", "sa-east-1"]);
}

// ---- strict idempotency ---------------------------------------------------------------------

async fn create_with_token(
    client: &Client,
    env: &str,
    token: &str,
    tags: &[(&str, &str)],
) -> Result<EnvironmentAccountConnection, CreateEnvironmentAccountConnectionError> {
    let mut request = client
        .create_environment_account_connection()
        .environment_name(env)
        .management_account_id(MGMT)
        .role_arn(ROLE)
        .client_token(token);
    for (key, value) in tags {
        request = request.tags(tag(key, value));
    }
    request
        .send()
        .await
        .map(|out| out.environment_account_connection.unwrap())
        .map_err(|e| e.into_service_error())
}

#[tokio::test]
async fn strict_idempotency_refuses_a_token_reused_with_other_parameters() {
    let Emu { emu, client } = start_with(EmulatorConfig {
        idempotency: Idempotency::Strict,
        ..EmulatorConfig::default()
    })
    .await;
    let tags = [("team", "payments"), ("tier", "gold")];
    let first = create_with_token(&client, "prod", "tok-1", &tags)
        .await
        .unwrap();
    // Same parameters (tags in another order): the same connection.
    let again = create_with_token(&client, "prod", "tok-1", &[tags[1], tags[0]])
        .await
        .unwrap();
    assert_eq!(again.id, first.id);

    let err = create_with_token(&client, "staging", "tok-1", &tags)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CreateEnvironmentAccountConnectionError::ConflictException(_)
        ),
        "{err:?}"
    );
    let message = message_of(&err, "ConflictException");
    assert!(message.contains("'tok-1'"), "{message}");
    assert!(
        message.contains("already used with different parameters"),
        "{message}"
    );
    assert!(message.contains("environmentName"), "{message}");
    let err = create_with_token(&client, "prod", "tok-1", &tags[..1])
        .await
        .unwrap_err();
    assert!(message_of(&err, "ConflictException").contains("tags"));
    assert_eq!(emu.state().connections().len(), 1);

    // Flipped at run time, the same reuse is replayed.
    emu.state().set_idempotency(Idempotency::Lenient);
    let replayed = create_with_token(&client, "staging", "tok-1", &[])
        .await
        .unwrap();
    assert_eq!(replayed.id, first.id);
    assert_eq!(replayed.environment_name, "prod");
    assert_eq!(emu.state().connections().len(), 1);
}

#[tokio::test]
async fn lenient_idempotency_is_the_default_and_replays_a_reused_token() {
    let Emu { emu, client } = start().await;
    assert_eq!(emu.state().settings().idempotency, Idempotency::Lenient);
    let first = create_with_token(&client, "prod", "tok-2", &[])
        .await
        .unwrap();
    let replayed = create_with_token(&client, "staging", "tok-2", &[("a", "b")])
        .await
        .unwrap();
    assert_eq!(replayed, first);

    emu.state().set_idempotency(Idempotency::Strict);
    let err = create_with_token(&client, "staging", "tok-2", &[])
        .await
        .unwrap_err();
    message_of(&err, "ConflictException");
}

// ---- list lag -------------------------------------------------------------------------------

async fn listed_ids(client: &Client) -> Vec<String> {
    client
        .list_environment_account_connections()
        .requested_by(RequestedBy::EnvironmentAccount)
        .send()
        .await
        .unwrap()
        .environment_account_connections
        .into_iter()
        .map(|c| c.id)
        .collect()
}

#[tokio::test]
async fn list_lags_behind_creates_and_deletes_while_get_does_not() {
    // The emulator's clock is moved instead of waiting for the lag to pass.
    let lag = Duration::from_secs(600);
    let Emu { emu, client } = start_with(EmulatorConfig {
        list_lag: lag,
        ..EmulatorConfig::default()
    })
    .await;
    let c = client
        .create_environment_account_connection()
        .environment_name("dev")
        .management_account_id(MGMT)
        .role_arn(ROLE)
        .tags(tag("team", "payments"))
        .send()
        .await
        .unwrap()
        .environment_account_connection
        .unwrap();
    assert!(
        listed_ids(&client).await.is_empty(),
        "not listed within the lag"
    );
    assert_eq!(get(&client, &c.id).await, c, "Get is strongly consistent");

    emu.state().advance_clock(lag);
    assert_eq!(listed_ids(&client).await, [c.id.as_str()]);

    client
        .accept_environment_account_connection()
        .id(&c.id)
        .send()
        .await
        .unwrap();
    client
        .delete_environment_account_connection()
        .id(&c.id)
        .send()
        .await
        .unwrap();
    // Still listed, as it was when deleted...
    let listed = client
        .list_environment_account_connections()
        .requested_by(RequestedBy::EnvironmentAccount)
        .send()
        .await
        .unwrap()
        .environment_account_connections;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, c.id);
    assert_eq!(listed[0].status, Status::Connected);
    // ... while everything else knows it is gone.
    get_missing_is_not_found(&client).await;
    let err = client
        .get_environment_account_connection()
        .id(&c.id)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    message_of(&err, "ResourceNotFoundException");
    let err = client
        .list_tags_for_resource()
        .resource_arn(&c.arn)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    message_of(&err, "ResourceNotFoundException");

    emu.state().advance_clock(lag);
    assert!(listed_ids(&client).await.is_empty());
}

#[tokio::test]
async fn without_a_lag_list_shows_changes_at_once() {
    let Emu { emu, client } = start().await;
    assert_eq!(emu.state().settings().list_lag, Duration::ZERO);
    let c = create(&client, "dev").await;
    assert_eq!(listed_ids(&client).await, [c.id.as_str()]);
    client
        .delete_environment_account_connection()
        .id(&c.id)
        .send()
        .await
        .unwrap();
    assert!(listed_ids(&client).await.is_empty());

    // A long lag set at run time hides the next connection.
    emu.state().set_list_lag(Duration::from_secs(3600));
    let hidden = create(&client, "dev").await;
    assert!(listed_ids(&client).await.is_empty());
    emu.state().set_list_lag(Duration::ZERO);
    assert_eq!(listed_ids(&client).await, [hidden.id]);
}

#[tokio::test]
async fn config_can_be_read_and_set_over_http() {
    let Emu { emu, client } = start().await;
    let response = raw(emu.addr(), "GET", "/_emulator/config", &[], "").await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.json(),
        json!({"idempotency": "lenient", "listLagMs": 0})
    );

    let response = raw(
        emu.addr(),
        "PUT",
        "/_emulator/config",
        &[("Content-Type", "application/json")],
        r#"{"idempotency": "strict", "listLagMs": 3600000}"#,
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(
        response.json(),
        json!({"idempotency": "strict", "listLagMs": 3_600_000})
    );
    assert_eq!(
        emu.state().settings(),
        Settings {
            idempotency: Idempotency::Strict,
            list_lag: Duration::from_secs(3600),
        }
    );
    create_with_token(&client, "dev", "http-token", &[])
        .await
        .unwrap();
    let err = create_with_token(&client, "prod", "http-token", &[])
        .await
        .unwrap_err();
    message_of(&err, "ConflictException");
    assert!(listed_ids(&client).await.is_empty());

    for (document, member) in [
        (r#"{"idempotency": "sometimes"}"#, "sometimes"),
        (r#"{"listLagMs": "soon"}"#, "invalid config document"),
        (r#"{"lagMs": 1}"#, "lagMs"),
    ] {
        let response = raw(emu.addr(), "PUT", "/_emulator/config", &[], document).await;
        assert_eq!(response.status, 400, "{document}");
        let message = response.json()["message"].as_str().unwrap().to_string();
        assert!(message.contains(member), "{message}");
    }
    assert_eq!(
        emu.state().settings().idempotency,
        Idempotency::Strict,
        "a refused document changes nothing"
    );

    // Members left out take their defaults.
    let response = raw(emu.addr(), "PUT", "/_emulator/config", &[], "{}").await;
    assert_eq!(response.status, 200);
    assert_eq!(emu.state().settings(), Settings::default());
    assert_eq!(listed_ids(&client).await.len(), 1);
}

// ---- STS ------------------------------------------------------------------------------------

fn sts_client(url: &str) -> aws_sdk_sts::Client {
    let config = aws_sdk_sts::Config::builder()
        .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
        .region(aws_sdk_sts::config::Region::new("eu-west-1"))
        .endpoint_url(url)
        .credentials_provider(Credentials::new("AKIDSTS", "secret", None, None, "test"))
        .retry_config(RetryConfig::disabled())
        .build();
    aws_sdk_sts::Client::from_conf(config)
}

/// STS has a latency of its own (a slow or retried AssumeRole), set over HTTP like the others;
/// Proton's latency leaves STS alone.
#[tokio::test]
async fn sts_answers_come_after_the_sts_latency_only() {
    let Emu { emu, .. } = start().await;
    let response = raw(
        emu.addr(),
        "PUT",
        "/_emulator/faults",
        &[("Content-Type", "application/json")],
        r#"{"latencyMs": 5000, "stsLatencyMs": 300}"#,
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.json()["stsLatencyMs"], json!(300));
    let started = std::time::Instant::now();
    sts_client(&emu.url())
        .get_caller_identity()
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "answered after {took:?}, before the STS latency"
    );
    assert!(
        took < Duration::from_millis(5000),
        "answered after {took:?}: Proton's latency was added"
    );
}

#[tokio::test]
async fn sts_get_caller_identity_answers_the_configured_account() {
    let Emu { emu, client } = start_with(EmulatorConfig {
        account_id: "210987654321".into(),
        ..EmulatorConfig::default()
    })
    .await;
    let identity = sts_client(&emu.url())
        .get_caller_identity()
        .send()
        .await
        .unwrap();
    assert_eq!(identity.account(), Some("210987654321"));
    assert_eq!(identity.user_id(), Some("AKIDSTS"));
    assert_eq!(
        identity.arn(),
        Some("arn:aws:iam::210987654321:user/proton-emulator")
    );
    // Proton on the same port is unaffected.
    let c = create(&client, "dev").await;
    assert_eq!(c.environment_account_id, "210987654321");

    let calls = emu.state().calls();
    assert_eq!(calls.count("GetCallerIdentity"), 1);
    assert_eq!(calls.count(CREATE), 1);
    let response = raw(emu.addr(), "GET", "/_emulator/calls", &[], "").await;
    assert_eq!(response.json()["calls"]["GetCallerIdentity"], 1);
}

#[tokio::test]
async fn sts_errors_are_awsquery_xml() {
    let Emu { emu, client: _ } = start().await;
    let form = [(
        "Content-Type",
        "application/x-www-form-urlencoded; charset=utf-8",
    )];
    let unknown = raw(
        emu.addr(),
        "POST",
        "/",
        &form,
        "Action=GetSessionToken&Version=2011-06-15",
    )
    .await;
    assert_eq!(unknown.status, 400);
    assert_eq!(unknown.header("content-type"), Some("text/xml"));
    assert!(unknown.header("x-amzn-requestid").is_some());
    assert!(
        unknown.body.starts_with("<ErrorResponse"),
        "{}",
        unknown.body
    );
    assert!(
        unknown
            .body
            .contains("<Error><Type>Sender</Type><Code>InvalidAction</Code><Message>"),
        "{}",
        unknown.body
    );
    assert!(unknown.body.contains("GetSessionToken"), "{}", unknown.body);
    assert!(unknown.body.contains("<RequestId>"), "{}", unknown.body);

    let unsigned = raw(
        emu.addr(),
        "POST",
        "/",
        &form,
        "Action=GetCallerIdentity&Version=2011-06-15",
    )
    .await;
    assert_eq!(unsigned.status, 200, "{}", unsigned.body);
    assert!(
        unsigned.body.contains("<UserId>anonymous</UserId>"),
        "{}",
        unsigned.body
    );
    assert!(
        unsigned
            .body
            .contains(&format!("<Account>{ACCOUNT}</Account>")),
        "{}",
        unsigned.body
    );
    assert_eq!(
        emu.state().calls().count("GetCallerIdentity"),
        1,
        "unknown actions are not counted"
    );

    // A scripted failure reaches the SDK as STS's error code.
    emu.state()
        .fail_next("GetCallerIdentity", "ThrottlingException", 1);
    let err = sts_client(&emu.url())
        .get_caller_identity()
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert_eq!(err.code(), Some("Throttling"), "{err:?}");

    // A body that is no form, without a target, is still a Proton protocol error.
    let json = raw(
        emu.addr(),
        "POST",
        "/",
        &[("Content-Type", "application/x-amz-json-1.0")],
        "{}",
    )
    .await;
    assert_eq!(json.status, 400);
    assert_eq!(json.json()["__type"], "UnknownOperationException");
}

// ---- the binary and a second client ----------------------------------------------------------

/// Starts the binary with `args` and `env` and reads the URL it announces; the process is
/// killed when the handle is dropped.
async fn spawn_binary(args: &[&str], env: &[(&str, &str)]) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_proton-emulator"))
        .args(args)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(60),
        BufReader::new(stdout).read_line(&mut line),
    )
    .await
    .expect("the emulator did not announce itself")
    .unwrap();
    let url = line
        .trim_end()
        .strip_prefix("proton-emulator listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    (child, url)
}

fn addr_of(url: &str) -> SocketAddr {
    url.strip_prefix("http://").unwrap().parse().unwrap()
}

#[tokio::test]
async fn binary_announces_its_port_serves_the_api_and_exits_on_sigterm() {
    let (mut child, url) = spawn_binary(
        &["--listen", "127.0.0.1:0", "--account-id", "123456789012"],
        &[("PROTON_EMULATOR_REGION", "eu-west-1")],
    )
    .await;

    let client = sdk_client_in(&url, "eu-west-1");
    get_missing_is_not_found(&client).await;
    let c = create(&client, "dev").await;
    assert!(
        c.arn
            .starts_with("arn:aws:proton:eu-west-1:123456789012:environment-account-connection/"),
        "{}",
        c.arn
    );
    // An unsigned request is served in the default region, where that connection lives.
    let response = raw_call(addr_of(&url), GET, &json!({"id": c.id}).to_string()).await;
    assert_eq!(response.status, 200, "{}", response.body);
    let identity = sts_client(&url).get_caller_identity().send().await.unwrap();
    assert_eq!(identity.account(), Some("123456789012"));

    let pid = child.id().unwrap().to_string();
    let status = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the emulator did not stop on SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn binary_takes_idempotency_and_list_lag_from_flags_or_env() {
    let (_child, url) = spawn_binary(
        &[
            "--listen",
            "127.0.0.1:0",
            "--idempotency",
            "strict",
            "--list-lag-ms",
            "3600000",
        ],
        &[],
    )
    .await;
    let response = raw(addr_of(&url), "GET", "/_emulator/config", &[], "").await;
    assert_eq!(
        response.json(),
        json!({"idempotency": "strict", "listLagMs": 3_600_000})
    );
    // And they are in force.
    let client = sdk_client(&url);
    let send = |env: &str| {
        client
            .create_environment_account_connection()
            .environment_name(env)
            .management_account_id(MGMT)
            .client_token("binary-token")
            .send()
    };
    let created = send("dev")
        .await
        .unwrap()
        .environment_account_connection
        .unwrap();
    let err = send("prod").await.unwrap_err().into_service_error();
    message_of(&err, "ConflictException");
    assert!(
        listed_ids(&client).await.is_empty(),
        "listed within the lag"
    );
    get(&client, &created.id).await;

    let (_child, url) = spawn_binary(
        &["--listen", "127.0.0.1:0"],
        &[
            ("PROTON_EMULATOR_IDEMPOTENCY", "strict"),
            ("PROTON_EMULATOR_LIST_LAG_MS", "250"),
        ],
    )
    .await;
    let response = raw(addr_of(&url), "GET", "/_emulator/config", &[], "").await;
    assert_eq!(
        response.json(),
        json!({"idempotency": "strict", "listLagMs": 250})
    );

    let (_child, url) = spawn_binary(&["--listen", "127.0.0.1:0"], &[]).await;
    let response = raw(addr_of(&url), "GET", "/_emulator/config", &[], "").await;
    assert_eq!(
        response.json(),
        json!({"idempotency": "lenient", "listLagMs": 0}),
        "the defaults"
    );
}

#[tokio::test]
async fn binary_refuses_bad_flags_naming_them() {
    for (args, flag) in [
        (vec!["--account-id", "12"], "--account-id"),
        (vec!["--error-rate", "1.5"], "--error-rate"),
        (vec!["--listen", "nowhere"], "--listen"),
        (vec!["--idempotency", "sometimes"], "--idempotency"),
        (vec!["--list-lag-ms", "soon"], "--list-lag-ms"),
        (vec!["--list-lag-ms=-5"], "--list-lag-ms"),
    ] {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_proton-emulator"))
            .args(&args)
            .env_remove("PROTON_EMULATOR_IDEMPOTENCY")
            .env_remove("PROTON_EMULATOR_LIST_LAG_MS")
            .output()
            .await
            .unwrap();
        assert!(!output.status.success(), "{args:?} was accepted");
        assert!(output.stdout.is_empty(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_proton-emulator"))
        .env("PROTON_EMULATOR_IDEMPOTENCY", "eventually")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success(), "a bad env value was accepted");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--idempotency"), "{stderr}");
    assert!(stderr.contains("eventually"), "{stderr}");
}

const BOTO3_SCRIPT: &str = r#"
import sys
import boto3

client = boto3.client(
    "proton",
    region_name="us-east-1",
    endpoint_url=sys.argv[1],
    aws_access_key_id="AKIDTEST",
    aws_secret_access_key="secret",
)
created = client.create_environment_account_connection(
    environmentName="boto",
    managementAccountId="111122223333",
    roleArn="arn:aws:iam::444455556666:role/r",
    clientToken="boto-token",
    tags=[{"key": "team", "value": "payments"}],
)["environmentAccountConnection"]
again = client.create_environment_account_connection(
    environmentName="boto", managementAccountId="111122223333", clientToken="boto-token"
)["environmentAccountConnection"]
assert again["id"] == created["id"], (again, created)
got = client.get_environment_account_connection(id=created["id"])["environmentAccountConnection"]
assert got["status"] == "PENDING", got
assert got["requestedAt"].year >= 2024, got
assert created["arn"].startswith("arn:aws:proton:us-east-1:"), created
eu = boto3.client(
    "proton",
    region_name="eu-west-1",
    endpoint_url=sys.argv[1],
    aws_access_key_id="AKIDTEST",
    aws_secret_access_key="secret",
)
assert eu.list_environment_account_connections(requestedBy="ENVIRONMENT_ACCOUNT")["environmentAccountConnections"] == []
try:
    eu.get_environment_account_connection(id=created["id"])
    raise SystemExit("expected ResourceNotFoundException in another region")
except eu.exceptions.ResourceNotFoundException:
    pass
sts = boto3.client(
    "sts",
    region_name="eu-west-1",
    endpoint_url=sys.argv[1],
    aws_access_key_id="AKIDBOTO",
    aws_secret_access_key="secret",
)
identity = sts.get_caller_identity()
assert identity["Account"] == "444455556666", identity
assert identity["UserId"] == "AKIDBOTO", identity
client.accept_environment_account_connection(id=created["id"])
listed = client.list_environment_account_connections(requestedBy="ENVIRONMENT_ACCOUNT", statuses=["CONNECTED"])
assert [c["id"] for c in listed["environmentAccountConnections"]] == [created["id"]], listed
client.tag_resource(resourceArn=created["arn"], tags=[{"key": "tier", "value": "gold"}])
client.untag_resource(resourceArn=created["arn"], tagKeys=["team"])
tags = client.list_tags_for_resource(resourceArn=created["arn"])["tags"]
assert tags == [{"key": "tier", "value": "gold"}], tags
try:
    client.reject_environment_account_connection(id="00000000-0000-4000-8000-000000000000")
    raise SystemExit("expected ResourceNotFoundException")
except client.exceptions.ResourceNotFoundException:
    pass
try:
    client.accept_environment_account_connection(id=created["id"])
    raise SystemExit("expected ConflictException")
except client.exceptions.ConflictException as e:
    assert "CONNECTED" in str(e), e
client.delete_environment_account_connection(id=created["id"])
print("boto3 ok")
"#;

#[tokio::test]
async fn boto3_is_a_second_independent_client() {
    let has_boto3 = std::process::Command::new("python3")
        .args(["-c", "import boto3"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !has_boto3 {
        println!("skipped: python3 with boto3 is not available");
        return;
    }
    let Emu { emu, .. } = start().await;
    let output = tokio::process::Command::new("python3")
        .args(["-c", BOTO3_SCRIPT, &emu.url()])
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_ENDPOINT_URL_PROTON")
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "boto3 script failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("boto3 ok"));
    assert!(emu.state().connections().is_empty());
}
