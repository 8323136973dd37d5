//! STS on the emulator's port, in its own protocol (awsQuery): form-encoded bodies
//! (`Action=GetCallerIdentity&Version=2011-06-15`) answered with XML documents. SDKs reach it
//! through `AWS_ENDPOINT_URL_STS` (or `endpoint_url`) set to the emulator's URL.
//!
//! Served: GetCallerIdentity (who the caller is, see [`super::caller::Identities`]) and
//! AssumeRole (temporary credentials for a role, see [`super::roles`] and [`super::sessions`]).
//! This module reads requests and writes documents; the decisions are made elsewhere.

use super::caller::Principal;
use super::error::{ApiError, ErrorKind};
use super::roles::{self, RoleArn};
use super::sessions::Session;
use super::store::Millis;
use super::validate::{Violations, length, pattern, quoted, required};

/// The only API version STS has.
const NAMESPACE: &str = "https://sts.amazonaws.com/doc/2011-06-15/";
pub const CONTENT_TYPE: &str = "text/xml";
const FORM_CONTENT_TYPE: &str = "application/x-www-form-urlencoded";

/// AssumeRole's default session length, and its bounds (a role's maximum session duration can
/// be set up to 12 hours; the emulator allows that much for every role).
const DEFAULT_DURATION_SECONDS: u32 = 3600;
const MIN_DURATION_SECONDS: u32 = 900;
const MAX_DURATION_SECONDS: u32 = 43_200;
/// A session assumed with another session's credentials ("role chaining") lasts an hour at most.
pub const MAX_CHAINED_DURATION_SECONDS: u32 = 3600;

/// The STS actions served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    GetCallerIdentity,
    AssumeRole,
}

impl Action {
    pub const ALL: [Action; 2] = [Action::GetCallerIdentity, Action::AssumeRole];

    /// Also the operation name in the call accounting.
    pub fn name(self) -> &'static str {
        match self {
            Action::GetCallerIdentity => "GetCallerIdentity",
            Action::AssumeRole => "AssumeRole",
        }
    }
}

/// Whether a request's `Content-Type` is a form, i.e. an awsQuery request. (Proton's awsJson
/// requests are told apart by their `X-Amz-Target`.)
pub fn is_form(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case(FORM_CONTENT_TYPE))
}

/// The value of the form member `name`, if present.
fn member(body: &[u8], name: &str) -> Option<String> {
    url::form_urlencoded::parse(body)
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// The action a form body asks for, with STS's own errors for a missing or unknown one.
pub fn action(body: &[u8]) -> Result<Action, ApiError> {
    let Some(name) = member(body, "Action") else {
        return Err(ApiError::new(
            ErrorKind::Other("MissingAction".into()),
            "Missing Action",
        ));
    };
    Action::ALL
        .into_iter()
        .find(|action| action.name() == name)
        .ok_or_else(|| {
            ApiError::new(
                ErrorKind::Other("InvalidAction".into()),
                format!("Could not find operation {name} for version 2011-06-15"),
            )
        })
}

/// What AssumeRole asks for. (Policies, tags and MFA members are accepted and ignored.)
#[derive(Clone, PartialEq, Eq)]
pub struct AssumeRoleRequest {
    pub role: RoleArn,
    pub session_name: String,
    pub duration_seconds: u32,
    pub external_id: Option<String>,
}

/// The external id is left out: it guards a role, and logs are read by more people than roles.
impl std::fmt::Debug for AssumeRoleRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssumeRoleRequest")
            .field("role", &self.role.arn)
            .field("session_name", &self.session_name)
            .field("duration_seconds", &self.duration_seconds)
            .finish_non_exhaustive()
    }
}

/// Reads an AssumeRole form with STS's constraints (AWS's "N validation errors detected"
/// message, every violation at once); a well-formed string that is no role ARN is
/// `ValidationError: Request ARN is invalid`, as STS answers it.
pub fn assume_role_input(body: &[u8]) -> Result<AssumeRoleRequest, ApiError> {
    let mut v = Violations::default();
    let role_arn = required(&mut v, "roleArn", member(body, "RoleArn"));
    if let Some(arn) = &role_arn {
        length(&mut v, "roleArn", arn, 20, 2048);
    }
    let session_name = required(&mut v, "roleSessionName", member(body, "RoleSessionName"));
    if let Some(name) = &session_name {
        length(&mut v, "roleSessionName", name, 2, 64);
        pattern(
            &mut v,
            "roleSessionName",
            name,
            name.chars().all(super::validate::is_arn_word),
            r"[\w+=,.@-]*",
        );
    }
    let duration_seconds = match member(body, "DurationSeconds") {
        None => DEFAULT_DURATION_SECONDS,
        Some(text) => match text.trim().parse::<i64>() {
            Ok(n) if n < i64::from(MIN_DURATION_SECONDS) => {
                v.add(
                    &quoted(&text),
                    "durationSeconds",
                    &format!("have value greater than or equal to {MIN_DURATION_SECONDS}"),
                );
                DEFAULT_DURATION_SECONDS
            }
            Ok(n) if n > i64::from(MAX_DURATION_SECONDS) => {
                v.add(
                    &quoted(&text),
                    "durationSeconds",
                    &format!("have value less than or equal to {MAX_DURATION_SECONDS}"),
                );
                DEFAULT_DURATION_SECONDS
            }
            Ok(n) => u32::try_from(n).unwrap_or(DEFAULT_DURATION_SECONDS),
            Err(_) => {
                v.add(&quoted(&text), "durationSeconds", "be a whole number");
                DEFAULT_DURATION_SECONDS
            }
        },
    };
    let external_id = member(body, "ExternalId");
    if let Some(id) = &external_id {
        // The value is not echoed: it guards a role.
        if !roles::is_external_id(id) {
            v.add(
                "'***'",
                "externalId",
                r"satisfy regular expression pattern: [\w+=,.@:\/-]* and have length between 2 and 1224",
            );
        }
    }
    v.finish()?;
    let role = role_arn
        .unwrap_or_default()
        .parse::<RoleArn>()
        .map_err(|_| ApiError::validation("Request ARN is invalid"))?;
    Ok(AssumeRoleRequest {
        role,
        session_name: session_name.unwrap_or_default(),
        duration_seconds,
        external_id,
    })
}

/// What STS answers, ready to be written as its document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    CallerIdentity(CallerIdentity),
    AssumedRole(AssumedRole),
}

impl Output {
    pub fn to_xml(&self, request_id: &str) -> String {
        match self {
            Output::CallerIdentity(identity) => identity.to_xml(request_id),
            Output::AssumedRole(assumed) => assumed.to_xml(request_id),
        }
    }
}

/// What GetCallerIdentity answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallerIdentity {
    pub arn: String,
    pub user_id: String,
    pub account: String,
}

impl From<&Principal> for CallerIdentity {
    fn from(principal: &Principal) -> CallerIdentity {
        CallerIdentity {
            arn: principal.arn(),
            user_id: principal.user_id(),
            account: principal.account().to_string(),
        }
    }
}

impl CallerIdentity {
    /// The `GetCallerIdentityResponse` document.
    pub fn to_xml(&self, request_id: &str) -> String {
        format!(
            "<GetCallerIdentityResponse xmlns=\"{NAMESPACE}\">\
             <GetCallerIdentityResult>\
             <Arn>{}</Arn><UserId>{}</UserId><Account>{}</Account>\
             </GetCallerIdentityResult>\
             <ResponseMetadata><RequestId>{}</RequestId></ResponseMetadata>\
             </GetCallerIdentityResponse>",
            escape(&self.arn),
            escape(&self.user_id),
            escape(&self.account),
            escape(request_id),
        )
    }
}

/// What AssumeRole answers: the session's credentials and who they act as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssumedRole {
    pub session: Session,
}

impl AssumedRole {
    /// The `AssumeRoleResponse` document. It carries the secret and the token: it goes to the
    /// caller only, never to a log.
    pub fn to_xml(&self, request_id: &str) -> String {
        let s = &self.session;
        let principal = Principal::from(s);
        format!(
            "<AssumeRoleResponse xmlns=\"{NAMESPACE}\">\
             <AssumeRoleResult>\
             <AssumedRoleUser><AssumedRoleId>{}</AssumedRoleId><Arn>{}</Arn></AssumedRoleUser>\
             <Credentials>\
             <AccessKeyId>{}</AccessKeyId><SecretAccessKey>{}</SecretAccessKey>\
             <SessionToken>{}</SessionToken><Expiration>{}</Expiration>\
             </Credentials>\
             </AssumeRoleResult>\
             <ResponseMetadata><RequestId>{}</RequestId></ResponseMetadata>\
             </AssumeRoleResponse>",
            escape(&principal.user_id()),
            escape(&principal.arn()),
            escape(&s.access_key_id),
            escape(&s.secret_access_key),
            escape(&s.session_token),
            iso8601(s.expires_at),
            escape(request_id),
        )
    }
}

/// `2026-11-23T10:00:00Z`, as STS writes timestamps.
fn iso8601(millis: Millis) -> String {
    jiff::Timestamp::from_millisecond(millis)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string())
}

/// The code an error has in STS, which names some shapes differently from Proton.
fn code(kind: &ErrorKind) -> &str {
    match kind {
        ErrorKind::AccessDenied => "AccessDenied",
        ErrorKind::Throttling => "Throttling",
        ErrorKind::InternalServer => "InternalFailure",
        ErrorKind::Validation => "ValidationError",
        ErrorKind::ExpiredToken => "ExpiredToken",
        ErrorKind::InvalidClientToken => "InvalidClientTokenId",
        other => other.type_name(),
    }
}

/// The awsQuery `ErrorResponse` document; `Type` says whose fault it is.
pub fn error_xml(err: &ApiError, request_id: &str) -> String {
    let fault = if err.kind.http_status() >= 500 {
        "Receiver"
    } else {
        "Sender"
    };
    format!(
        "<ErrorResponse xmlns=\"{NAMESPACE}\"><Error>\
         <Type>{fault}</Type><Code>{}</Code><Message>{}</Message></Error>\
         <RequestId>{}</RequestId></ErrorResponse>",
        escape(code(&err.kind)),
        escape(&err.message),
        escape(request_id),
    )
}

/// Request data ends up in the documents (the access key, an unknown action's name).
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_requests_are_recognised_by_media_type() {
        assert!(is_form(Some("application/x-www-form-urlencoded")));
        assert!(is_form(Some(
            "Application/X-WWW-Form-Urlencoded; charset=utf-8"
        )));
        assert!(!is_form(Some("application/x-amz-json-1.0")));
        assert!(!is_form(None));
    }

    #[test]
    fn actions() {
        assert_eq!(
            action(b"Action=GetCallerIdentity&Version=2011-06-15"),
            Ok(Action::GetCallerIdentity)
        );
        assert_eq!(
            action(b"Version=2011-06-15&Action=GetCallerIdentity"),
            Ok(Action::GetCallerIdentity)
        );
        assert_eq!(
            action(b"Action=AssumeRole&Version=2011-06-15"),
            Ok(Action::AssumeRole)
        );
        let unknown = action(b"Action=GetSessionToken&Version=2011-06-15").unwrap_err();
        assert_eq!(unknown.kind.type_name(), "InvalidAction");
        assert!(
            unknown.message.contains("GetSessionToken"),
            "{}",
            unknown.message
        );
        assert_eq!(
            action(b"Version=2011-06-15").unwrap_err().kind.type_name(),
            "MissingAction"
        );
        assert_eq!(action(b"").unwrap_err().kind.type_name(), "MissingAction");
    }

    const ROLE: &str = "arn%3Aaws%3Aiam%3A%3A111122223333%3Arole%2Fdeployer";

    #[test]
    fn assume_role_input_reads_the_form() {
        let body = format!(
            "Action=AssumeRole&Version=2011-06-15&RoleArn={ROLE}&RoleSessionName=ci-run\
             &DurationSeconds=900&ExternalId=team-42"
        );
        let req = assume_role_input(body.as_bytes()).unwrap();
        assert_eq!(req.role.arn, "arn:aws:iam::111122223333:role/deployer");
        assert_eq!(req.session_name, "ci-run");
        assert_eq!(req.duration_seconds, 900);
        assert_eq!(req.external_id.as_deref(), Some("team-42"));
        assert!(!format!("{req:?}").contains("team-42"));

        let body = format!("RoleArn={ROLE}&RoleSessionName=s1");
        let req = assume_role_input(body.as_bytes()).unwrap();
        assert_eq!(req.duration_seconds, 3600, "the default");
        assert_eq!(req.external_id, None);
    }

    #[test]
    fn assume_role_input_reports_every_violation() {
        let err = assume_role_input(b"Action=AssumeRole").unwrap_err();
        assert_eq!(err.kind, ErrorKind::Validation);
        assert!(
            err.message.starts_with("2 validation errors detected"),
            "{}",
            err.message
        );
        assert!(err.message.contains("'roleArn'"), "{}", err.message);
        assert!(err.message.contains("'roleSessionName'"), "{}", err.message);

        for (duration, must) in [
            ("899", "greater than or equal to 900"),
            ("43201", "less than or equal to 43200"),
            ("soon", "whole number"),
        ] {
            let body = format!("RoleArn={ROLE}&RoleSessionName=s1&DurationSeconds={duration}");
            let err = assume_role_input(body.as_bytes()).unwrap_err();
            assert!(err.message.contains("'durationSeconds'"), "{}", err.message);
            assert!(err.message.contains(must), "{}", err.message);
        }
        let body = format!("RoleArn={ROLE}&RoleSessionName=has%20space");
        let err = assume_role_input(body.as_bytes()).unwrap_err();
        assert!(
            err.message.contains("regular expression"),
            "{}",
            err.message
        );

        let body = format!("RoleArn={ROLE}&RoleSessionName=s1&ExternalId=x%3Csecret%3E");
        let err = assume_role_input(body.as_bytes()).unwrap_err();
        assert!(err.message.contains("'externalId'"), "{}", err.message);
        assert!(!err.message.contains("secret"), "{}", err.message);

        let err =
            assume_role_input(b"RoleArn=arn:aws:iam::111122223333:user/bob&RoleSessionName=s1")
                .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Validation);
        assert_eq!(err.message, "Request ARN is invalid");
    }

    #[test]
    fn caller_identity_document() {
        let identity = CallerIdentity::from(&Principal::User {
            account: "123456789012".into(),
            access_key_id: Some("AKIDEXAMPLE".into()),
        });
        assert_eq!(
            identity.to_xml("req-1"),
            "<GetCallerIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
             <GetCallerIdentityResult><Arn>arn:aws:iam::123456789012:user/proton-emulator</Arn>\
             <UserId>AKIDEXAMPLE</UserId><Account>123456789012</Account>\
             </GetCallerIdentityResult><ResponseMetadata><RequestId>req-1</RequestId>\
             </ResponseMetadata></GetCallerIdentityResponse>"
        );
        let odd = CallerIdentity::from(&Principal::User {
            account: "1".into(),
            access_key_id: Some("<K&'\">".into()),
        })
        .to_xml("r");
        assert!(
            odd.contains("<UserId>&lt;K&amp;&apos;&quot;&gt;</UserId>"),
            "{odd}"
        );
    }

    #[test]
    fn assume_role_document() {
        let mut sessions = super::super::sessions::Sessions::default();
        let role: RoleArn = "arn:aws:iam::111122223333:role/deployer".parse().unwrap();
        // 2026-11-23T10:00:00Z plus 15 minutes.
        let session = sessions.issue(&role, "ci", 900, 1_795_428_000_000);
        let xml = AssumedRole {
            session: session.clone(),
        }
        .to_xml("req-3");
        assert!(
            xml.starts_with(
                "<AssumeRoleResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">"
            ),
            "{xml}"
        );
        for part in [
            format!(
                "<AssumedRoleUser><AssumedRoleId>{}:ci</AssumedRoleId>\
                 <Arn>arn:aws:sts::111122223333:assumed-role/deployer/ci</Arn></AssumedRoleUser>",
                session.role_id
            ),
            format!("<AccessKeyId>{}</AccessKeyId>", session.access_key_id),
            format!(
                "<SecretAccessKey>{}</SecretAccessKey>",
                session.secret_access_key
            ),
            format!("<SessionToken>{}</SessionToken>", session.session_token),
            "<Expiration>2026-11-23T10:15:00Z</Expiration>".to_string(),
            "<RequestId>req-3</RequestId>".to_string(),
        ] {
            assert!(xml.contains(&part), "{part} missing from {xml}");
        }
    }

    #[test]
    fn error_documents() {
        let err = ApiError::new(ErrorKind::Other("InvalidAction".into()), "no <such>");
        assert_eq!(
            error_xml(&err, "req-2"),
            "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error>\
             <Type>Sender</Type><Code>InvalidAction</Code><Message>no &lt;such&gt;</Message>\
             </Error><RequestId>req-2</RequestId></ErrorResponse>"
        );
        let internal = error_xml(&ApiError::new(ErrorKind::InternalServer, "x"), "r");
        assert!(internal.contains("<Type>Receiver</Type><Code>InternalFailure</Code>"));
        let denied = error_xml(&ApiError::new(ErrorKind::AccessDenied, "x"), "r");
        assert!(denied.contains("<Code>AccessDenied</Code>"));
        let expired = error_xml(&ApiError::new(ErrorKind::ExpiredToken, "x"), "r");
        assert!(expired.contains("<Code>ExpiredToken</Code>"));
        let invalid = error_xml(&ApiError::new(ErrorKind::InvalidClientToken, "x"), "r");
        assert!(invalid.contains("<Code>InvalidClientTokenId</Code>"));
    }
}
