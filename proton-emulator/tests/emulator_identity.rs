//! The Proton emulator as AWS's identity model sees it, through the real `aws-sdk-proton` and
//! `aws-sdk-sts` clients over HTTP (and boto3 when present): caller identity per access key,
//! STS AssumeRole (external ids, registered roles, expiry), Proton's two-account rules, and the
//! state file across restarts (in process and with the `proton-emulator` binary).
#![allow(deprecated)] // every operation of aws-sdk-proton is deprecated (Proton closed to new customers)

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use aws_sdk_proton::Client;
use aws_sdk_proton::config::retry::RetryConfig;
use aws_sdk_proton::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_proton::error::ProvideErrorMetadata;
use aws_sdk_proton::types::{
    EnvironmentAccountConnection, EnvironmentAccountConnectionRequesterAccountType as RequestedBy,
    EnvironmentAccountConnectionStatus as Status, Tag,
};
use proton_emulator::{EmulatorConfig, Idempotency, RoleSpec, RunningEmulator};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The default account: keys no `--account` names act in it.
const ENV: &str = "444455556666";
const MGMT: &str = "111122223333";
const THIRD: &str = "777788889999";
const ENV_KEY: &str = "AKIDENVIRONMENT";
const MGMT_KEY: &str = "AKIDMANAGEMENT";
const THIRD_KEY: &str = "AKIDTHIRD";
const MGMT_ROLE: &str = "arn:aws:iam::111122223333:role/proton-management";
const ROLE: &str = "arn:aws:iam::444455556666:role/proton-env";

// ---- harness -------------------------------------------------------------------------------

/// An emulator where MGMT_KEY acts in MGMT and THIRD_KEY in THIRD (ENV_KEY, being unmapped,
/// acts in the default account ENV).
fn two_accounts() -> EmulatorConfig {
    EmulatorConfig {
        accounts: BTreeMap::from([
            (MGMT_KEY.to_string(), MGMT.to_string()),
            (THIRD_KEY.to_string(), THIRD.to_string()),
        ]),
        ..EmulatorConfig::default()
    }
}

async fn start(config: EmulatorConfig) -> RunningEmulator {
    RunningEmulator::start("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap()
}

fn key(access_key_id: &str) -> Credentials {
    Credentials::new(access_key_id, "secret", None, None, "test")
}

/// The credentials AssumeRole handed out, as an SDK would use them.
fn temporary(credentials: &aws_sdk_sts::types::Credentials) -> Credentials {
    Credentials::new(
        credentials.access_key_id(),
        credentials.secret_access_key(),
        Some(credentials.session_token().to_string()),
        None,
        "assumed",
    )
}

fn proton(url: &str, credentials: Credentials) -> Client {
    proton_in(url, credentials, "us-east-1")
}

fn proton_in(url: &str, credentials: Credentials, region: &str) -> Client {
    let config = aws_sdk_proton::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .endpoint_url(url)
        .credentials_provider(credentials)
        .retry_config(RetryConfig::disabled())
        .build();
    Client::from_conf(config)
}

fn sts(url: &str, credentials: Credentials) -> aws_sdk_sts::Client {
    let config = aws_sdk_sts::Config::builder()
        .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
        .region(aws_sdk_sts::config::Region::new("us-east-1"))
        .endpoint_url(url)
        .credentials_provider(credentials)
        .retry_config(aws_sdk_sts::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_sts::Client::from_conf(config)
}

async fn assume(
    url: &str,
    as_key: &str,
    role: &str,
    external_id: Option<&str>,
) -> aws_sdk_sts::operation::assume_role::AssumeRoleOutput {
    sts(url, key(as_key))
        .assume_role()
        .role_arn(role)
        .role_session_name("ci-run")
        .set_external_id(external_id.map(str::to_string))
        .send()
        .await
        .unwrap()
}

/// The temporary credentials of `role`, assumed by `as_key`.
async fn assumed(url: &str, as_key: &str, role: &str) -> Credentials {
    temporary(assume(url, as_key, role, None).await.credentials().unwrap())
}

/// The error code and message of a failed SDK call, whatever the operation.
fn code_and_message(err: &impl ProvideErrorMetadata) -> (String, String) {
    (
        err.code().unwrap_or_default().to_string(),
        err.message().unwrap_or_default().to_string(),
    )
}

async fn create(client: &Client, env: &str, management: &str) -> EnvironmentAccountConnection {
    client
        .create_environment_account_connection()
        .environment_name(env)
        .management_account_id(management)
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

async fn listed(client: &Client, side: RequestedBy) -> Vec<String> {
    client
        .list_environment_account_connections()
        .requested_by(side)
        .into_paginator()
        .items()
        .send()
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .map(|item| item.unwrap().id)
        .collect()
}

async fn accept(
    client: &Client,
    id: &str,
) -> Result<EnvironmentAccountConnection, (String, String)> {
    client
        .accept_environment_account_connection()
        .id(id)
        .send()
        .await
        .map(|out| out.environment_account_connection.unwrap())
        .map_err(|e| code_and_message(&e.into_service_error()))
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build().unwrap()
}

struct RawResponse {
    status: u16,
    body: String,
}

/// A minimal HTTP/1.1 exchange, for what no SDK sends (the emulator's own endpoints, bodies
/// looked at byte for byte).
async fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    RawResponse {
        status,
        body: body.to_string(),
    }
}

// ---- identity ------------------------------------------------------------------------------

#[tokio::test]
async fn each_access_key_acts_in_its_mapped_account_and_any_other_in_the_default_one() {
    let emu = start(two_accounts()).await;
    for (access_key, account) in [
        (MGMT_KEY, MGMT),
        (THIRD_KEY, THIRD),
        (ENV_KEY, ENV),
        ("AKIDANY", ENV),
    ] {
        let identity = sts(&emu.url(), key(access_key))
            .get_caller_identity()
            .send()
            .await
            .unwrap();
        assert_eq!(identity.account(), Some(account), "{access_key}");
        assert_eq!(identity.user_id(), Some(access_key));
        assert_eq!(
            identity.arn(),
            Some(format!("arn:aws:iam::{account}:user/proton-emulator").as_str())
        );
    }

    // A connection is created in the caller's account, in the region the request is signed for.
    let third = create(
        &proton_in(&emu.url(), key(THIRD_KEY), "eu-west-1"),
        "dev",
        MGMT,
    )
    .await;
    assert_eq!(third.environment_account_id, THIRD);
    assert!(
        third
            .arn
            .starts_with("arn:aws:proton:eu-west-1:777788889999:environment-account-connection/"),
        "{}",
        third.arn
    );
    let env = create(&proton(&emu.url(), key("AKIDANY")), "dev", MGMT).await;
    assert_eq!(env.environment_account_id, ENV);
    assert!(
        env.arn
            .starts_with("arn:aws:proton:us-east-1:444455556666:"),
        "{}",
        env.arn
    );
}

// ---- STS AssumeRole ------------------------------------------------------------------------

#[tokio::test]
async fn assume_role_gives_temporary_credentials_that_act_in_the_role_s_account() {
    let emu = start(EmulatorConfig::default()).await;
    let before = SystemTime::now();
    let out = sts(&emu.url(), key(ENV_KEY))
        .assume_role()
        .role_arn(MGMT_ROLE)
        .role_session_name("ci-run")
        .duration_seconds(900)
        .send()
        .await
        .unwrap();
    let credentials = out.credentials().unwrap();
    assert!(
        credentials.access_key_id().starts_with("ASIA"),
        "{}",
        credentials.access_key_id()
    );
    assert_eq!(credentials.access_key_id().len(), 20);
    assert_eq!(credentials.secret_access_key().len(), 40);
    assert!(!credentials.session_token().is_empty());
    let expiration = SystemTime::try_from(*credentials.expiration()).unwrap();
    let lifetime = expiration.duration_since(before).unwrap();
    assert!(
        (Duration::from_secs(898)..=Duration::from_secs(905)).contains(&lifetime),
        "{lifetime:?}"
    );
    let user = out.assumed_role_user().unwrap();
    assert_eq!(
        user.arn(),
        "arn:aws:sts::111122223333:assumed-role/proton-management/ci-run"
    );
    assert!(
        user.assumed_role_id().starts_with("AROA"),
        "{}",
        user.assumed_role_id()
    );
    assert!(
        user.assumed_role_id().ends_with(":ci-run"),
        "{}",
        user.assumed_role_id()
    );

    // Requests signed with them act as the role, in its account.
    let session = temporary(credentials);
    let identity = sts(&emu.url(), session.clone())
        .get_caller_identity()
        .send()
        .await
        .unwrap();
    assert_eq!(identity.account(), Some(MGMT));
    assert_eq!(identity.arn(), Some(user.arn()));
    assert_eq!(identity.user_id(), Some(user.assumed_role_id()));
    let created = create(&proton(&emu.url(), session), "dev", ENV).await;
    assert_eq!(created.environment_account_id, MGMT);

    // The default is an hour.
    let out = assume(&emu.url(), ENV_KEY, MGMT_ROLE, None).await;
    let expiration = SystemTime::try_from(*out.credentials().unwrap().expiration()).unwrap();
    let lifetime = expiration.duration_since(before).unwrap();
    assert!(
        (Duration::from_secs(3598)..=Duration::from_secs(3605)).contains(&lifetime),
        "{lifetime:?}"
    );
    assert_eq!(emu.state().calls().count("AssumeRole"), 2);
}

#[tokio::test]
async fn duration_seconds_must_be_between_900_and_43200_and_an_hour_when_chained() {
    let emu = start(EmulatorConfig::default()).await;
    let client = sts(&emu.url(), key(ENV_KEY));
    let send = |seconds: i32| {
        client
            .assume_role()
            .role_arn(MGMT_ROLE)
            .role_session_name("s1")
            .duration_seconds(seconds)
            .send()
    };
    send(900).await.unwrap();
    send(43_200).await.unwrap();
    for (seconds, must) in [
        (899, "greater than or equal to 900"),
        (43_201, "less than or equal to 43200"),
    ] {
        let err = send(seconds).await.unwrap_err().into_service_error();
        let (code, message) = code_and_message(&err);
        assert_eq!(code, "ValidationError", "{seconds}");
        assert!(message.contains("'durationSeconds'"), "{message}");
        assert!(message.contains(must), "{message}");
    }

    // A role session assuming another role gets an hour at most.
    let chained = sts(&emu.url(), assumed(&emu.url(), ENV_KEY, MGMT_ROLE).await);
    let err = chained
        .assume_role()
        .role_arn(ROLE)
        .role_session_name("s2")
        .duration_seconds(3601)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    let (code, message) = code_and_message(&err);
    assert_eq!(code, "ValidationError");
    assert!(message.contains("role chaining"), "{message}");
    let out = chained
        .assume_role()
        .role_arn(ROLE)
        .role_session_name("s2")
        .send()
        .await
        .unwrap();
    assert_eq!(
        out.assumed_role_user().unwrap().arn(),
        "arn:aws:sts::444455556666:assumed-role/proton-env/s2"
    );
}

#[tokio::test]
async fn a_role_registered_with_an_external_id_is_refused_without_that_id() {
    let emu = start(EmulatorConfig {
        roles: vec![format!("{MGMT_ROLE},external-id=team-42").parse().unwrap()],
        ..EmulatorConfig::default()
    })
    .await;
    let client = sts(&emu.url(), key(ENV_KEY));
    for external_id in [None, Some("team-41")] {
        let err = client
            .assume_role()
            .role_arn(MGMT_ROLE)
            .role_session_name("s1")
            .set_external_id(external_id.map(str::to_string))
            .send()
            .await
            .unwrap_err()
            .into_service_error();
        let (code, message) = code_and_message(&err);
        assert_eq!(code, "AccessDenied", "{external_id:?}");
        assert_eq!(
            message,
            format!(
                "User: arn:aws:iam::444455556666:user/proton-emulator is not authorized to \
                 perform: sts:AssumeRole on resource: {MGMT_ROLE}"
            )
        );
    }
    assume(&emu.url(), ENV_KEY, MGMT_ROLE, Some("team-42")).await;
    // Other roles need none.
    assume(&emu.url(), ENV_KEY, ROLE, None).await;

    // The refusal is STS's XML ErrorResponse, with a 403.
    let body = format!(
        "Action=AssumeRole&Version=2011-06-15&RoleArn={}&RoleSessionName=s1",
        MGMT_ROLE.replace(':', "%3A").replace('/', "%2F")
    );
    let response = raw(
        emu.addr(),
        "POST",
        "/",
        "application/x-www-form-urlencoded",
        &body,
    )
    .await;
    assert_eq!(response.status, 403, "{}", response.body);
    assert!(
        response.body.starts_with(
            "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error>\
             <Type>Sender</Type><Code>AccessDenied</Code><Message>User: "
        ),
        "{}",
        response.body
    );
}

#[tokio::test]
async fn with_required_registration_only_registered_roles_can_be_assumed() {
    let emu = start(EmulatorConfig {
        roles: vec![MGMT_ROLE.parse::<RoleSpec>().unwrap()],
        require_registered_roles: true,
        ..EmulatorConfig::default()
    })
    .await;
    assume(&emu.url(), ENV_KEY, MGMT_ROLE, None).await;
    let err = sts(&emu.url(), key(ENV_KEY))
        .assume_role()
        .role_arn("arn:aws:iam::111122223333:role/not-registered")
        .role_session_name("s1")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    let (code, message) = code_and_message(&err);
    assert_eq!(code, "AccessDenied");
    assert!(message.contains("role/not-registered"), "{message}");

    // Without the requirement, any well-formed role works.
    let open = start(EmulatorConfig::default()).await;
    assume(
        &open.url(),
        ENV_KEY,
        "arn:aws:iam::111122223333:role/not-registered",
        None,
    )
    .await;
}

#[tokio::test]
async fn malformed_role_arns_are_validation_errors() {
    let emu = start(EmulatorConfig::default()).await;
    let client = sts(&emu.url(), key(ENV_KEY));
    for (arn, expected) in [
        (
            "arn:aws:iam::1234:role/short-account",
            "Request ARN is invalid",
        ),
        (
            "arn:aws:iam::111122223333:user/bob",
            "Request ARN is invalid",
        ),
        ("arn:aws:s3:::a-bucket-of-roles", "Request ARN is invalid"),
        (
            "not-an-arn",
            "'roleArn' failed to satisfy constraint: Member must have length greater than or equal to 20",
        ),
    ] {
        let err = client
            .assume_role()
            .role_arn(arn)
            .role_session_name("s1")
            .send()
            .await
            .unwrap_err()
            .into_service_error();
        let (code, message) = code_and_message(&err);
        assert_eq!(code, "ValidationError", "{arn}");
        assert!(message.contains(expected), "{arn}: {message}");
    }
    assert!(emu.state().connections().is_empty());
}

#[tokio::test]
async fn expired_temporary_credentials_are_refused_with_expired_token() {
    let emu = start(EmulatorConfig::default()).await;
    let out = sts(&emu.url(), key(ENV_KEY))
        .assume_role()
        .role_arn(MGMT_ROLE)
        .role_session_name("short")
        .duration_seconds(900)
        .send()
        .await
        .unwrap();
    let session = temporary(out.credentials().unwrap());
    let client = proton(&emu.url(), session.clone());
    let created = create(&client, "dev", ENV).await;

    // 890 s later they still work; 900 s later they are expired, for STS and Proton alike. (The
    // emulator's clock runs on in real time too: a margin of a second, with expiry counted in
    // whole seconds, failed on a loaded machine.)
    emu.state().advance_clock(Duration::from_secs(890));
    get(&client, &created.id).await;
    let response = raw(
        emu.addr(),
        "POST",
        "/_emulator/clock",
        "application/json",
        r#"{"advanceMs": 10000}"#,
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.body);

    let err = sts(&emu.url(), session.clone())
        .get_caller_identity()
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    let (code, message) = code_and_message(&err);
    assert_eq!(code, "ExpiredToken");
    assert_eq!(
        message,
        "The security token included in the request is expired"
    );
    let err = client
        .get_environment_account_connection()
        .id(&created.id)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert_eq!(code_and_message(&err).0, "ExpiredTokenException");

    // A new AssumeRole gives working credentials again.
    let fresh = proton(&emu.url(), assumed(&emu.url(), ENV_KEY, MGMT_ROLE).await);
    assert_eq!(get(&fresh, &created.id).await.id, created.id);
}

#[tokio::test]
async fn a_temporary_key_without_its_session_token_is_refused() {
    let emu = start(EmulatorConfig::default()).await;
    let out = assume(&emu.url(), ENV_KEY, MGMT_ROLE, None).await;
    let issued = out.credentials().unwrap();
    for token in [None, Some("forged".to_string())] {
        let forged = Credentials::new(
            issued.access_key_id(),
            issued.secret_access_key(),
            token,
            None,
            "forged",
        );
        let err = sts(&emu.url(), forged.clone())
            .get_caller_identity()
            .send()
            .await
            .unwrap_err()
            .into_service_error();
        assert_eq!(code_and_message(&err).0, "InvalidClientTokenId");
        let err = proton(&emu.url(), forged)
            .list_environment_account_connections()
            .requested_by(RequestedBy::EnvironmentAccount)
            .send()
            .await
            .unwrap_err()
            .into_service_error();
        assert_eq!(code_and_message(&err).0, "UnrecognizedClientException");
    }
}

// ---- the two-account rules -------------------------------------------------------------------

#[tokio::test]
async fn only_the_management_account_accepts_or_rejects() {
    let emu = start(two_accounts()).await;
    let env = proton(&emu.url(), key(ENV_KEY));
    let mgmt = proton(&emu.url(), key(MGMT_KEY));
    let first = create(&env, "first", MGMT).await;

    let (code, message) = accept(&env, &first.id).await.unwrap_err();
    assert_eq!(code, "AccessDeniedException");
    assert_eq!(
        message,
        format!(
            "Account {ENV} is the environment account of environment account connection {} and \
             cannot accept it: only its management account {MGMT} can",
            first.id
        )
    );
    let err = env
        .reject_environment_account_connection()
        .id(&first.id)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    let (code, message) = code_and_message(&err);
    assert_eq!(code, "AccessDeniedException");
    assert!(message.contains("cannot reject it"), "{message}");
    assert_eq!(
        get(&env, &first.id).await.status,
        Status::Pending,
        "nothing changed"
    );

    let accepted = accept(&mgmt, &first.id).await.unwrap();
    assert_eq!(accepted.status, Status::Connected);
    assert_eq!(accepted.environment_account_id, ENV);
    assert_eq!(get(&env, &first.id).await.status, Status::Connected);

    let second = create(&env, "second", MGMT).await;
    let rejected = mgmt
        .reject_environment_account_connection()
        .id(&second.id)
        .send()
        .await
        .unwrap()
        .environment_account_connection
        .unwrap();
    assert_eq!(rejected.status, Status::Rejected);
}

#[tokio::test]
async fn the_management_account_reads_but_cannot_update_delete_or_tag() {
    let emu = start(two_accounts()).await;
    let env = proton(&emu.url(), key(ENV_KEY));
    let mgmt = proton(&emu.url(), key(MGMT_KEY));
    let c = env
        .create_environment_account_connection()
        .environment_name("dev")
        .management_account_id(MGMT)
        .tags(tag("team", "payments"))
        .send()
        .await
        .unwrap()
        .environment_account_connection
        .unwrap();
    assert_eq!(get(&mgmt, &c.id).await, get(&env, &c.id).await);
    let tags = mgmt
        .list_tags_for_resource()
        .resource_arn(&c.arn)
        .send()
        .await
        .unwrap();
    assert_eq!(tags.tags().len(), 1);

    let denied = |err: &dyn ProvideErrorMetadata, verb: &str| {
        assert_eq!(err.code(), Some("AccessDeniedException"), "{verb}");
        let message = err.message().unwrap_or_default();
        assert!(
            message.contains(&format!(
                "cannot {verb} it: only its environment account {ENV} can"
            )),
            "{message}"
        );
    };
    let err = mgmt
        .update_environment_account_connection()
        .id(&c.id)
        .role_arn(ROLE)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    denied(&err, "update");
    let err = mgmt
        .delete_environment_account_connection()
        .id(&c.id)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    denied(&err, "delete");
    let err = mgmt
        .tag_resource()
        .resource_arn(&c.arn)
        .tags(tag("owner", "mgmt"))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    denied(&err, "tag");
    let err = mgmt
        .untag_resource()
        .resource_arn(&c.arn)
        .tag_keys("team")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    denied(&err, "untag");

    // The environment account does all of that.
    env.tag_resource()
        .resource_arn(&c.arn)
        .tags(tag("owner", "env"))
        .send()
        .await
        .unwrap();
    env.untag_resource()
        .resource_arn(&c.arn)
        .tag_keys("team")
        .send()
        .await
        .unwrap();
    env.update_environment_account_connection()
        .id(&c.id)
        .role_arn(ROLE)
        .send()
        .await
        .unwrap();
    env.delete_environment_account_connection()
        .id(&c.id)
        .send()
        .await
        .unwrap();
    assert!(emu.state().connections().is_empty());
}

#[tokio::test]
async fn each_side_lists_its_connections_by_requested_by() {
    let emu = start(two_accounts()).await;
    let env = proton(&emu.url(), key(ENV_KEY));
    let third = proton(&emu.url(), key(THIRD_KEY));
    let mgmt = proton(&emu.url(), key(MGMT_KEY));
    let a = create(&env, "a", MGMT).await.id;
    let b = create(&env, "b", MGMT).await.id;
    let c = create(&third, "c", MGMT).await.id;
    // A connection of MGMT's own, to THIRD as its management account.
    let own = create(&mgmt, "own", THIRD).await.id;

    assert_eq!(
        listed(&mgmt, RequestedBy::ManagementAccount).await,
        [a.clone(), b.clone(), c.clone()]
    );
    assert_eq!(
        listed(&mgmt, RequestedBy::EnvironmentAccount).await,
        std::slice::from_ref(&own)
    );
    assert_eq!(listed(&env, RequestedBy::EnvironmentAccount).await, [a, b]);
    assert!(
        listed(&env, RequestedBy::ManagementAccount)
            .await
            .is_empty()
    );
    assert_eq!(listed(&third, RequestedBy::EnvironmentAccount).await, [c]);
    assert_eq!(listed(&third, RequestedBy::ManagementAccount).await, [own]);
}

#[tokio::test]
async fn any_other_account_finds_nothing() {
    let emu = start(two_accounts()).await;
    let env = proton(&emu.url(), key(ENV_KEY));
    let stranger = proton(&emu.url(), key(THIRD_KEY));
    let c = create(&env, "dev", MGMT).await;
    let err = stranger
        .get_environment_account_connection()
        .id(&c.id)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    let (code, message) = code_and_message(&err);
    assert_eq!(code, "ResourceNotFoundException");
    assert!(message.contains(&c.id), "{message}");
    let (code, _) = accept(&stranger, &c.id).await.unwrap_err();
    assert_eq!(code, "ResourceNotFoundException");
    let err = stranger
        .delete_environment_account_connection()
        .id(&c.id)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert_eq!(code_and_message(&err).0, "ResourceNotFoundException");
    let err = stranger
        .list_tags_for_resource()
        .resource_arn(&c.arn)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert_eq!(code_and_message(&err).0, "ResourceNotFoundException");
    assert!(
        listed(&stranger, RequestedBy::ManagementAccount)
            .await
            .is_empty()
    );
    assert_eq!(emu.state().connections().len(), 1);
}

#[tokio::test]
async fn a_connection_whose_two_accounts_are_one_is_accepted_by_that_account() {
    let emu = start(two_accounts()).await;
    let env = proton(&emu.url(), key(ENV_KEY));
    let c = create(&env, "self", ENV).await;
    assert_eq!(accept(&env, &c.id).await.unwrap().status, Status::Connected);
    assert_eq!(
        listed(&env, RequestedBy::ManagementAccount).await,
        std::slice::from_ref(&c.id)
    );
    assert_eq!(listed(&env, RequestedBy::EnvironmentAccount).await, [c.id]);
}

#[tokio::test]
async fn a_management_account_no_identity_can_act_as_is_played_by_the_environment_account() {
    // Nothing tells the emulator of MGMT: a single-account demo.
    let emu = start(EmulatorConfig::default()).await;
    let env = proton(&emu.url(), key(ENV_KEY));
    let c = create(&env, "demo", MGMT).await;
    assert_eq!(
        listed(&env, RequestedBy::ManagementAccount).await,
        std::slice::from_ref(&c.id)
    );
    assert_eq!(accept(&env, &c.id).await.unwrap().status, Status::Connected);

    // Once a key for it is configured, the rules are strict.
    let strict = start(two_accounts()).await;
    let env = proton(&strict.url(), key(ENV_KEY));
    let c = create(&env, "demo", MGMT).await;
    assert_eq!(
        accept(&env, &c.id).await.unwrap_err().0,
        "AccessDeniedException"
    );
}

#[tokio::test]
async fn the_management_account_reached_through_assume_role_accepts() {
    // A registered role makes its account known, so the environment account no longer plays it.
    let emu = start(EmulatorConfig {
        roles: vec![MGMT_ROLE.parse().unwrap()],
        ..EmulatorConfig::default()
    })
    .await;
    let env = proton(&emu.url(), key(ENV_KEY));
    let c = create(&env, "prod", MGMT).await;
    assert_eq!(
        accept(&env, &c.id).await.unwrap_err().0,
        "AccessDeniedException"
    );
    let mgmt = proton(&emu.url(), assumed(&emu.url(), ENV_KEY, MGMT_ROLE).await);
    assert_eq!(
        listed(&mgmt, RequestedBy::ManagementAccount).await,
        std::slice::from_ref(&c.id)
    );
    assert_eq!(
        accept(&mgmt, &c.id).await.unwrap().status,
        Status::Connected
    );
}

#[tokio::test]
async fn the_back_door_answers_as_the_management_account_for_anyone() {
    let emu = start(two_accounts()).await;
    let env = proton(&emu.url(), key(ENV_KEY));
    let a = create(&env, "a", MGMT).await;
    let b = create(&env, "b", MGMT).await;

    let accepted = raw(
        emu.addr(),
        "POST",
        &format!("/_emulator/connections/{}/accept", a.id),
        "application/json",
        "",
    )
    .await;
    assert_eq!(accepted.status, 200, "{}", accepted.body);
    let body: serde_json::Value = serde_json::from_str(&accepted.body).unwrap();
    assert_eq!(body["environmentAccountConnection"]["status"], "CONNECTED");
    assert_eq!(get(&env, &a.id).await.status, Status::Connected);

    let rejected = raw(
        emu.addr(),
        "POST",
        &format!("/_emulator/connections/{}/reject", b.id),
        "application/json",
        "",
    )
    .await;
    assert_eq!(rejected.status, 200, "{}", rejected.body);
    assert_eq!(get(&env, &b.id).await.status, Status::Rejected);

    let again = raw(
        emu.addr(),
        "POST",
        &format!("/_emulator/connections/{}/accept", b.id),
        "application/json",
        "",
    )
    .await;
    assert_eq!(again.status, 409, "{}", again.body);
    assert!(again.body.contains("ConflictException"), "{}", again.body);
    let missing = raw(
        emu.addr(),
        "POST",
        "/_emulator/connections/00000000-0000-4000-8000-000000000000/accept",
        "application/json",
        "",
    )
    .await;
    assert_eq!(missing.status, 404, "{}", missing.body);

    // The in-process helpers too.
    let c = create(&env, "c", MGMT).await;
    emu.state().accept(&c.id).unwrap();
    assert_eq!(get(&env, &c.id).await.status, Status::Connected);
}

// ---- the state file --------------------------------------------------------------------------

fn with_state_file(path: &Path) -> EmulatorConfig {
    EmulatorConfig {
        state_file: Some(path.to_path_buf()),
        ..two_accounts()
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_restart_keeps_connections_ids_tags_and_client_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let emu = start(with_state_file(&path)).await;
    let env = proton(&emu.url(), key(ENV_KEY));
    let create_with_token = |client: &Client, name: &str| {
        client
            .create_environment_account_connection()
            .client_token("uid-1")
            .environment_name(name)
            .management_account_id(MGMT)
            .role_arn(ROLE)
            .tags(tag("team", "payments"))
            .send()
    };
    let created = create_with_token(&env, "dev")
        .await
        .unwrap()
        .environment_account_connection
        .unwrap();
    accept(&proton(&emu.url(), key(MGMT_KEY)), &created.id)
        .await
        .unwrap();
    let eu = create(
        &proton_in(&emu.url(), key(THIRD_KEY), "eu-west-1"),
        "eu",
        MGMT,
    )
    .await;
    let before = get(&env, &created.id).await;
    // As after a crash: no shutdown, nothing flushed on the way out. Every answer given is on
    // disk already.
    drop(emu);

    let emu = start(EmulatorConfig {
        idempotency: Idempotency::Strict,
        ..with_state_file(&path)
    })
    .await;
    let env = proton(&emu.url(), key(ENV_KEY));
    assert_eq!(get(&env, &created.id).await, before);
    let tags = env
        .list_tags_for_resource()
        .resource_arn(&created.arn)
        .send()
        .await
        .unwrap();
    assert_eq!(tags.tags(), [tag("team", "payments")]);
    assert_eq!(
        get(&proton_in(&emu.url(), key(THIRD_KEY), "eu-west-1"), &eu.id).await,
        eu
    );
    // The client token still names the same connection, and is still compared with its Create.
    let replayed = create_with_token(&env, "dev")
        .await
        .unwrap()
        .environment_account_connection
        .unwrap();
    assert_eq!(replayed.id, created.id);
    let err = create_with_token(&env, "other")
        .await
        .unwrap_err()
        .into_service_error();
    assert_eq!(code_and_message(&err).0, "ConflictException");
    // New timestamps come after the old ones.
    let later = create(&env, "later", MGMT).await;
    assert!(later.requested_at.secs() >= before.last_modified_at.secs());
    assert_eq!(emu.state().connections().len(), 3);
    emu.shutdown().await;
    assert_eq!(
        files_in(dir.path()),
        [".state.json.lock", "state.json"],
        "no temporary file left"
    );
}

#[tokio::test]
async fn credentials_from_before_a_restart_keep_their_identity_and_their_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let emu = start(with_state_file(&path)).await;
    let out = sts(&emu.url(), key(ENV_KEY))
        .assume_role()
        .role_arn(MGMT_ROLE)
        .role_session_name("long-running")
        .duration_seconds(900)
        .send()
        .await
        .unwrap();
    let session = temporary(out.credentials().unwrap());
    emu.state().advance_clock(Duration::from_secs(600));
    emu.shutdown().await;

    let emu = start(with_state_file(&path)).await;
    let identity = sts(&emu.url(), session.clone())
        .get_caller_identity()
        .send()
        .await
        .unwrap();
    assert_eq!(identity.account(), Some(MGMT));
    assert_eq!(
        identity.arn(),
        Some("arn:aws:sts::111122223333:assumed-role/proton-management/long-running")
    );
    // The clock moved on before the restart, so 300 more seconds expire them.
    emu.state().advance_clock(Duration::from_secs(300));
    let err = sts(&emu.url(), session)
        .get_caller_identity()
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        code_and_message(&err.into_service_error()).0,
        "ExpiredToken"
    );
}

#[tokio::test]
async fn a_missing_state_file_starts_empty_and_is_written_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.json");
    let emu = start(with_state_file(&path)).await;
    assert!(emu.state().connections().is_empty());
    assert!(
        path.exists(),
        "written at start, so an unwritable place is found at once"
    );
    let env = proton(&emu.url(), key(ENV_KEY));
    // Every answer that shows a change is preceded by its write: no temporary file lingers.
    for i in 0..5 {
        let c = create(&env, &format!("env{i}"), MGMT).await;
        if i % 2 == 0 {
            env.delete_environment_account_connection()
                .id(&c.id)
                .send()
                .await
                .unwrap();
        }
        assert_eq!(files_in(dir.path()), [".new.json.lock", "new.json"]);
    }
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(saved["version"], 1);
    assert_eq!(saved["connections"].as_array().unwrap().len(), 2);
}

async fn start_error(config: EmulatorConfig) -> std::io::Error {
    match RunningEmulator::start("127.0.0.1:0".parse().unwrap(), config).await {
        Ok(_) => panic!("the emulator started"),
        Err(err) => err,
    }
}

/// One emulator per state file: a second one would delete the first one's temporary files at
/// its start and then overwrite its state. It is refused while the first runs (the file left as
/// it is), and starts once the first has stopped.
#[tokio::test]
async fn a_second_emulator_on_a_state_file_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let first = start(with_state_file(&path)).await;
    create(&proton(&first.url(), key(ENV_KEY)), "dev", MGMT).await;
    let before = std::fs::read(&path).unwrap();

    let err = start_error(with_state_file(&path)).await;
    let message = err.to_string();
    assert!(message.contains("in use by another emulator"), "{message}");
    assert!(message.contains("state.json"), "{message}");
    assert_eq!(std::fs::read(&path).unwrap(), before, "left as it was");
    assert_eq!(first.state().connections().len(), 1);

    first.shutdown().await;
    let second = start(with_state_file(&path)).await;
    assert_eq!(second.state().connections().len(), 1);
}

#[tokio::test]
async fn a_damaged_state_file_stops_the_start_naming_the_file_and_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    for (content, problem) in [
        (
            "{\"version\": 1, \"clock\": 5, \"connections\": [",
            "not a valid state document",
        ),
        ("", "not a valid state document"),
        ("{\"version\": 2, \"clock\": 0}", "format version 2"),
        (
            "{\"version\": 1, \"clock\": 0, \"connections\": [{\"connection\": {\"id\": \"x\", \
             \"arn\": \"a\", \"region\": \"us-east-1\", \"environmentName\": \"e\", \
             \"managementAccountId\": \"111122223333\", \"environmentAccountId\": \"444455556666\", \
             \"roleArn\": null, \"codebuildRoleArn\": null, \"componentRoleArn\": null, \
             \"status\": \"PENDING\", \"requestedAt\": 0, \"lastModifiedAt\": 0, \
             \"clientToken\": null}, \"tags\": {}}]}",
            "impossible state: connection \"x\": the id is not a connection id",
        ),
    ] {
        std::fs::write(&path, content).unwrap();
        let err = start_error(with_state_file(&path)).await;
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains(problem), "{message}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            content,
            "never emptied"
        );
    }

    let unwritable = dir.path().join("no-such-directory").join("state.json");
    let err = start_error(with_state_file(&unwritable)).await;
    assert!(
        err.to_string().contains("cannot write the state file"),
        "{err}"
    );
    assert!(err.to_string().contains("no-such-directory"), "{err}");
}

// ---- the binary ------------------------------------------------------------------------------

/// Starts the binary with `args` and `env` and reads the URL it announces; the process is
/// killed when the handle is dropped.
async fn spawn_binary(args: &[&str], env: &[(&str, &str)]) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_proton-emulator"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env_remove("PROTON_EMULATOR_ACCOUNT")
        .env_remove("PROTON_EMULATOR_ROLE")
        .env_remove("PROTON_EMULATOR_STATE_FILE")
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
    (child, url)
}

async fn binary_output(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_proton-emulator"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn binary_maps_keys_and_registers_roles_from_flags() {
    let role = format!("{MGMT_ROLE},external-id=ext-1");
    let (_child, url) = spawn_binary(
        &[
            "--account",
            &format!("{MGMT_KEY}={MGMT}"),
            "--account",
            &format!("{THIRD_KEY}={THIRD}"),
            "--role",
            &role,
            "--require-registered-roles",
        ],
        &[],
    )
    .await;
    for (access_key, account) in [(MGMT_KEY, MGMT), (THIRD_KEY, THIRD), (ENV_KEY, ENV)] {
        let identity = sts(&url, key(access_key))
            .get_caller_identity()
            .send()
            .await
            .unwrap();
        assert_eq!(identity.account(), Some(account));
    }
    let denied = sts(&url, key(ENV_KEY))
        .assume_role()
        .role_arn(ROLE)
        .role_session_name("s1")
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        code_and_message(&denied.into_service_error()).0,
        "AccessDenied"
    );
    assume(&url, ENV_KEY, MGMT_ROLE, Some("ext-1")).await;
    // MGMT is known, so the environment account cannot accept.
    let c = create(&proton(&url, key(ENV_KEY)), "dev", MGMT).await;
    assert_eq!(
        accept(&proton(&url, key(ENV_KEY)), &c.id)
            .await
            .unwrap_err()
            .0,
        "AccessDeniedException"
    );
    assert_eq!(
        accept(&proton(&url, key(MGMT_KEY)), &c.id)
            .await
            .unwrap()
            .status,
        Status::Connected
    );
}

#[tokio::test]
async fn binary_takes_identities_from_the_environment_too() {
    let roles = format!("{MGMT_ROLE},external-id=ext-1 {ROLE}");
    let accounts = format!("{MGMT_KEY}={MGMT},{THIRD_KEY}={THIRD}");
    let (_child, url) = spawn_binary(
        &[],
        &[
            ("PROTON_EMULATOR_ACCOUNT", &accounts),
            ("PROTON_EMULATOR_ROLE", &roles),
            ("PROTON_EMULATOR_REQUIRE_REGISTERED_ROLES", "true"),
        ],
    )
    .await;
    let identity = sts(&url, key(THIRD_KEY))
        .get_caller_identity()
        .send()
        .await
        .unwrap();
    assert_eq!(identity.account(), Some(THIRD));
    assume(&url, ENV_KEY, ROLE, None).await;
    assume(&url, ENV_KEY, MGMT_ROLE, Some("ext-1")).await;
    let err = sts(&url, key(ENV_KEY))
        .assume_role()
        .role_arn("arn:aws:iam::111122223333:role/unregistered")
        .role_session_name("s1")
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        code_and_message(&err.into_service_error()).0,
        "AccessDenied"
    );
}

#[tokio::test]
async fn binary_refuses_bad_identity_flags_naming_them() {
    for (args, expected) in [
        (vec!["--account", "AKID"], "--account"),
        (vec!["--account", "AKID=123"], "12 digits"),
        (
            vec![
                "--account",
                "AKID=111122223333",
                "--account",
                "AKID=444455556666",
            ],
            "mapped to both",
        ),
        (vec!["--role", "arn:aws:iam::1:role/x"], "--role"),
        (
            vec!["--role", &format!("{MGMT_ROLE},external-id=x")],
            "external id",
        ),
        (
            vec!["--role", &format!("{MGMT_ROLE},session=x")],
            "external-id=VALUE",
        ),
    ] {
        let output = binary_output(&args, &[]).await;
        assert!(!output.status.success(), "{args:?} was accepted");
        assert!(output.stdout.is_empty(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn binary_keeps_its_connections_across_a_kill_and_refuses_a_damaged_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let path_arg = path.display().to_string();
    let (mut child, url) = spawn_binary(&["--state-file", &path_arg], &[]).await;
    let created = create(&proton(&url, key(ENV_KEY)), "dev", MGMT).await;
    // SIGKILL: no chance to write anything on the way out.
    child.kill().await.unwrap();

    let (mut child, url) = spawn_binary(&[], &[("PROTON_EMULATOR_STATE_FILE", &path_arg)]).await;
    let env = proton(&url, key(ENV_KEY));
    assert_eq!(get(&env, &created.id).await, created);
    child.kill().await.unwrap();
    assert_eq!(files_in(dir.path()), [".state.json.lock", "state.json"]);

    std::fs::write(&path, "{ not json").unwrap();
    let output = binary_output(&["--state-file", &path_arg], &[]).await;
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "never announced");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&path_arg), "{stderr}");
    assert!(stderr.contains("not a valid state document"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "{ not json");
}

// ---- boto3 -----------------------------------------------------------------------------------

const BOTO3_SCRIPT: &str = r#"
import sys
import boto3

url = sys.argv[1]
def client(service, **credentials):
    return boto3.client(service, region_name="us-east-1", endpoint_url=url, **credentials)

env_keys = dict(aws_access_key_id="AKIDENVIRONMENT", aws_secret_access_key="secret")
assumed = client("sts", **env_keys).assume_role(
    RoleArn="arn:aws:iam::111122223333:role/proton-management",
    RoleSessionName="boto",
    ExternalId="boto-ext",
    DurationSeconds=900,
)
creds = assumed["Credentials"]
assert creds["AccessKeyId"].startswith("ASIA"), creds["AccessKeyId"]
assert assumed["AssumedRoleUser"]["Arn"] == "arn:aws:sts::111122223333:assumed-role/proton-management/boto", assumed
mgmt_keys = dict(
    aws_access_key_id=creds["AccessKeyId"],
    aws_secret_access_key=creds["SecretAccessKey"],
    aws_session_token=creds["SessionToken"],
)
identity = client("sts", **mgmt_keys).get_caller_identity()
assert identity["Account"] == "111122223333", identity

env = client("proton", **env_keys)
mgmt = client("proton", **mgmt_keys)
created = env.create_environment_account_connection(
    environmentName="boto", managementAccountId="111122223333", clientToken="boto-token"
)["environmentAccountConnection"]
assert created["environmentAccountId"] == "444455556666", created
try:
    env.accept_environment_account_connection(id=created["id"])
    raise SystemExit("the environment account accepted")
except env.exceptions.AccessDeniedException as e:
    assert "only its management account 111122223333" in str(e), e
requests = mgmt.list_environment_account_connections(requestedBy="MANAGEMENT_ACCOUNT")
assert [c["id"] for c in requests["environmentAccountConnections"]] == [created["id"]], requests
accepted = mgmt.accept_environment_account_connection(id=created["id"])["environmentAccountConnection"]
assert accepted["status"] == "CONNECTED", accepted
try:
    mgmt.delete_environment_account_connection(id=created["id"])
    raise SystemExit("the management account deleted")
except mgmt.exceptions.AccessDeniedException:
    pass
assert env.get_environment_account_connection(id=created["id"])["environmentAccountConnection"]["status"] == "CONNECTED"
try:
    client("sts", **env_keys).assume_role(
        RoleArn="arn:aws:iam::111122223333:role/proton-management", RoleSessionName="boto"
    )
    raise SystemExit("assumed without the external id")
except Exception as e:
    assert "AccessDenied" in str(e), e
env.delete_environment_account_connection(id=created["id"])
print("boto3 ok")
"#;

#[tokio::test]
async fn boto3_assumes_a_role_and_plays_both_accounts() {
    let has_boto3 = std::process::Command::new("python3")
        .args(["-c", "import boto3"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !has_boto3 {
        println!("skipped: boto3 not installed (python3 -c 'import boto3' failed)");
        return;
    }
    let emu = start(EmulatorConfig {
        roles: vec![format!("{MGMT_ROLE},external-id=boto-ext").parse().unwrap()],
        ..EmulatorConfig::default()
    })
    .await;
    let output = tokio::process::Command::new("python3")
        .args(["-c", BOTO3_SCRIPT, &emu.url()])
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_ENDPOINT_URL_PROTON")
        .env_remove("AWS_ENDPOINT_URL_STS")
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
