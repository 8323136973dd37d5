//! STS on the emulator's port, in its own protocol (awsQuery): form-encoded bodies
//! (`Action=GetCallerIdentity&Version=2011-06-15`) answered with XML documents. SDKs reach it
//! through `AWS_ENDPOINT_URL_STS` (or `endpoint_url`) set to the emulator's URL.
//!
//! Only GetCallerIdentity is served; the account it answers comes from
//! [`super::caller::Identities`].

use super::error::{ApiError, ErrorKind};

/// The only API version STS has.
const NAMESPACE: &str = "https://sts.amazonaws.com/doc/2011-06-15/";
pub const CONTENT_TYPE: &str = "text/xml";
const FORM_CONTENT_TYPE: &str = "application/x-www-form-urlencoded";

/// The STS actions served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    GetCallerIdentity,
}

impl Action {
    pub const ALL: [Action; 1] = [Action::GetCallerIdentity];

    /// Also the operation name in the call accounting.
    pub fn name(self) -> &'static str {
        match self {
            Action::GetCallerIdentity => "GetCallerIdentity",
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

/// The action a form body asks for, with STS's own errors for a missing or unknown one.
pub fn action(body: &[u8]) -> Result<Action, ApiError> {
    let Some(name) = url::form_urlencoded::parse(body)
        .find(|(key, _)| key == "Action")
        .map(|(_, value)| value.into_owned())
    else {
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

/// What GetCallerIdentity answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallerIdentity {
    pub arn: String,
    pub user_id: String,
    pub account: String,
}

impl CallerIdentity {
    /// Every caller is the same IAM user of `account`; its user id is the access key, as near
    /// to AWS (which answers the user's unique id) as an emulator without users gets.
    pub fn new(account: &str, access_key_id: Option<&str>) -> CallerIdentity {
        CallerIdentity {
            arn: format!("arn:aws:iam::{account}:user/proton-emulator"),
            user_id: access_key_id.unwrap_or("anonymous").to_string(),
            account: account.to_string(),
        }
    }

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

/// The code an error has in STS, which names some shapes differently from Proton.
fn code(kind: &ErrorKind) -> &str {
    match kind {
        ErrorKind::AccessDenied => "AccessDenied",
        ErrorKind::Throttling => "Throttling",
        ErrorKind::InternalServer => "InternalFailure",
        ErrorKind::Validation => "ValidationError",
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
        let unknown = action(b"Action=AssumeRole&Version=2011-06-15").unwrap_err();
        assert_eq!(unknown.kind.type_name(), "InvalidAction");
        assert!(
            unknown.message.contains("AssumeRole"),
            "{}",
            unknown.message
        );
        assert_eq!(
            action(b"Version=2011-06-15").unwrap_err().kind.type_name(),
            "MissingAction"
        );
        assert_eq!(action(b"").unwrap_err().kind.type_name(), "MissingAction");
    }

    #[test]
    fn caller_identity_document() {
        let identity = CallerIdentity::new("123456789012", Some("AKIDEXAMPLE"));
        assert_eq!(
            identity.to_xml("req-1"),
            "<GetCallerIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
             <GetCallerIdentityResult><Arn>arn:aws:iam::123456789012:user/proton-emulator</Arn>\
             <UserId>AKIDEXAMPLE</UserId><Account>123456789012</Account>\
             </GetCallerIdentityResult><ResponseMetadata><RequestId>req-1</RequestId>\
             </ResponseMetadata></GetCallerIdentityResponse>"
        );
        assert_eq!(CallerIdentity::new("1", None).user_id, "anonymous");
        let odd = CallerIdentity::new("1", Some("<K&'\">")).to_xml("r");
        assert!(
            odd.contains("<UserId>&lt;K&amp;&apos;&quot;&gt;</UserId>"),
            "{odd}"
        );
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
    }
}
