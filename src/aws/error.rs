//! Errors of AWS calls (Proton and STS) and how the controller reacts to each class: retried
//! with backoff, retried slowly, or terminal for the current generation.

use std::time::Duration;

use aws_sdk_proton::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_types::retry::ErrorKind;

/// How the controller should react to a failed call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// ThrottlingException: retry with backoff, and slow all callers down.
    Throttled,
    /// An answer that is a passing fault of the service's own (InternalServerException, a 500
    /// or another 5xx but a gateway's), or expired temporary credentials: retry with backoff.
    Transient,
    /// Nothing answered for the service: a connection refused, reset or timed out, a connection
    /// closed before or during the answer, a gateway's 502, 503 or 504 (or the service's own
    /// word that it is unavailable); or a call not sent as its region does not answer
    /// ([`ProtonError::unreached`]): retry with backoff, and at once when the service answers
    /// again (`aws::reach`).
    Unanswered,
    /// AccessDeniedException: IAM is fixed elsewhere, so retry slowly.
    AccessDenied,
    /// ValidationException: the request cannot succeed as sent.
    Validation,
    /// ServiceQuotaExceededException.
    QuotaExceeded,
    /// ConflictException: the connection is in a state that forbids the call.
    Conflict,
    /// ResourceNotFoundException.
    NotFound,
    /// The endpoint does not serve the call as AWS does: it does not know the operation
    /// (awsJson's UnknownOperationException, STS's InvalidAction) or cannot read the request,
    /// or write its answer, as the protocol has them (SerializationException: a body or a
    /// member's type it does not take). A Proton-compatible endpoint short of this call; its fix
    /// is the endpoint's (an upgrade, or another `--proton-endpoint`), so it is terminal:
    /// retried with backoff, each resource would spend a call every few minutes on it for as
    /// long as the endpoint stays as it is.
    Unsupported,
    /// Anything else: unknown error codes, requests the SDK could not build, calls that failed
    /// in the client ([`ProtonError::failed_in_client`]).
    Other,
    /// Not sent: the call budget has no room for this class of call now.
    Deferred,
}

/// How soon a failed call may be tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Exponential backoff with jitter.
    Backoff,
    /// A long, fixed interval: the fix happens outside Kubernetes (IAM).
    Slow,
    /// Retrying the same generation will not help; wait for a spec change (or a resync).
    Terminal,
}

impl ErrorClass {
    pub fn retry(self) -> Retry {
        match self {
            ErrorClass::Throttled
            | ErrorClass::Transient
            | ErrorClass::Unanswered
            | ErrorClass::Other
            | ErrorClass::Deferred => Retry::Backoff,
            ErrorClass::AccessDenied => Retry::Slow,
            ErrorClass::Validation
            | ErrorClass::QuotaExceeded
            | ErrorClass::Conflict
            | ErrorClass::NotFound
            | ErrorClass::Unsupported => Retry::Terminal,
        }
    }

    /// The condition reason (and Event reason) naming this class.
    pub fn reason(self) -> &'static str {
        match self {
            ErrorClass::Throttled => "Throttled",
            ErrorClass::Transient => "AwsServerError",
            ErrorClass::Unanswered => "AwsUnavailable",
            ErrorClass::AccessDenied => "AccessDenied",
            ErrorClass::Validation => "InvalidSpec",
            ErrorClass::QuotaExceeded => "QuotaExceeded",
            ErrorClass::Conflict => "Conflict",
            ErrorClass::NotFound => "NotFound",
            ErrorClass::Unsupported => "UnsupportedByEndpoint",
            ErrorClass::Other => "AwsError",
            ErrorClass::Deferred => "Deferred",
        }
    }

    /// Classifies an AWS error code (the `__type` of the response).
    pub fn from_code(code: &str) -> ErrorClass {
        match code {
            "ThrottlingException" | "Throttling" | "TooManyRequestsException" => {
                ErrorClass::Throttled
            }
            "InternalServerException"
            | "ServiceUnavailable"
            | "ServiceUnavailableException"
            // The common error of every AWS service for its own failure (STS's included).
            | "InternalFailure" => ErrorClass::Transient,
            // Temporary credentials that expired (STS's awsQuery code, Proton's): a role's
            // session is dropped on it (`Proton::call`) and the SDK renews the controller's own,
            // so the next try signs with fresh ones. Nothing to fix in IAM.
            "ExpiredTokenException" | "ExpiredToken" => ErrorClass::Transient,
            "AccessDeniedException"
            | "AccessDenied"
            | "UnrecognizedClientException"
            | "InvalidSignatureException"
            // STS's awsQuery code for credentials it does not know.
            | "InvalidClientTokenId"
            // STS: the region is not enabled for the account; an admin enables it.
            | "RegionDisabledException"
            // Common errors: the account is not subscribed, or the request is not signed as
            // AWS expects. Fixed outside Kubernetes as IAM is.
            | "OptInRequired"
            | "NotAuthorized"
            | "SignatureDoesNotMatch"
            | "IncompleteSignature"
            | "MissingAuthenticationToken" => ErrorClass::AccessDenied,
            "ValidationException"
            // STS's awsQuery codes for a request it refuses as sent (an external ID or a session
            // name it does not take, say): AssumeRoleFailed, not retried.
            | "ValidationError"
            | "MalformedPolicyDocument"
            | "PackedPolicyTooLarge"
            | "InvalidParameterValue"
            | "InvalidParameterCombination"
            | "MissingParameter" => ErrorClass::Validation,
            "ServiceQuotaExceededException" => ErrorClass::QuotaExceeded,
            "ConflictException" => ErrorClass::Conflict,
            "ResourceNotFoundException" => ErrorClass::NotFound,
            "UnknownOperationException" | SERIALIZATION | "InvalidAction" => ErrorClass::Unsupported,
            _ => ErrorClass::Other,
        }
    }
}

/// awsJson's code for a body it could not read, or an answer it could not write.
const SERIALIZATION: &str = "SerializationException";

/// The code of [`ProtonError::late`].
const SEND_WINDOW_PASSED: &str = "SendWindowPassed";

/// The code of [`ProtonError::unreached`].
const UNREACHED: &str = "Unreached";

/// The code of [`ProtonError::failed_in_client`]'s errors.
const FAILED_IN_CLIENT: &str = "FailedInClient";

/// The service an operation goes to, for messages.
fn service_of(operation: &str) -> &'static str {
    match operation {
        "AssumeRole" | "GetCallerIdentity" => "STS",
        _ => "Proton",
    }
}

/// A failed Proton call: which operation, its class, and AWS's own code and message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{operation} failed: {code}: {message}")]
pub struct ProtonError {
    pub operation: &'static str,
    pub class: ErrorClass,
    pub code: String,
    pub message: String,
    /// For [`ErrorClass::Deferred`]: in how long the call budget has a slot booked for the
    /// caller (`None`: no room now, nothing booked).
    pub retry_in: Option<Duration>,
}

impl ProtonError {
    /// The condition, Event and metric reason naming this error: its class's, but for a role
    /// that cannot be assumed (the fix is in the role's trust policy or the AccountMapping, not
    /// in the connection's permissions) and expired credentials (retried as a passing fault,
    /// but AWS did answer).
    pub fn reason(&self) -> &'static str {
        match (self.operation, self.class) {
            ("AssumeRole", ErrorClass::AccessDenied | ErrorClass::Validation) => "AssumeRoleFailed",
            _ if self.code.starts_with("ExpiredToken") => "CredentialsExpired",
            _ => self.class.reason(),
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.class == ErrorClass::NotFound
    }

    /// The call was not sent: the budget has no room for its class now.
    pub fn deferred(operation: &'static str, retry_in: Option<Duration>) -> Self {
        ProtonError {
            operation,
            class: ErrorClass::Deferred,
            code: "Deferred".into(),
            message: "not sent: no room in the AWS call budget for this class of call now".into(),
            retry_in,
        }
    }

    /// A Create not sent because the window its recorded intent opened has passed (the mapped
    /// role's AssumeRole, or a wait for the budget, took that long): sent now, it could appear
    /// in a List after a deletion's search for it had ended. The intent is written again first.
    pub fn late(operation: &'static str) -> Self {
        ProtonError {
            operation,
            class: ErrorClass::Deferred,
            code: SEND_WINDOW_PASSED.into(),
            message: "not sent: its recorded intent to create is older than the settle window"
                .into(),
            retry_in: Some(Duration::ZERO),
        }
    }

    /// A call not sent because Proton in its region does not answer and another call there
    /// is already waiting for an answer (see [`crate::aws::reach::Reach::trial`]): a passing
    /// fault, as the outage it stands for, but one that sent nothing. The same message through
    /// an outage: a resource's conditions and Events do not change at each try.
    pub fn unreached(operation: &'static str, region: &str) -> Self {
        ProtonError {
            operation,
            class: ErrorClass::Unanswered,
            code: UNREACHED.into(),
            message: format!(
                "not sent: Proton in {region} does not answer; one call at a time goes there until it answers again"
            ),
            retry_in: None,
        }
    }

    /// Whether the call was never sent because its region does not answer
    /// ([`ProtonError::unreached`]): it says nothing of the call itself.
    pub fn is_unreached(&self) -> bool {
        self.class == ErrorClass::Unanswered && self.code == UNREACHED
    }

    /// Whether the call failed in the client with nothing heard of the service (the
    /// controller's credentials could not be loaded, say): another call with the same
    /// credentials would most likely fail the same way.
    pub fn failed_in_client(&self) -> bool {
        self.class == ErrorClass::Other && self.code == FAILED_IN_CLIENT
    }

    /// Whether the endpoint refused the call before anything could act on it: an operation it
    /// does not know (routing fails before any handler runs). A SerializationException is not
    /// one: a server of the awsJson protocol (smithy-rs's, say) answers it also for an answer
    /// it could not write, after the handler acted.
    pub fn refused_unrouted(&self) -> bool {
        self.class == ErrorClass::Unsupported && self.code != SERIALIZATION
    }

    /// Whether this is [`ProtonError::late`]'s.
    pub fn is_late(&self) -> bool {
        self.class == ErrorClass::Deferred && self.code == SEND_WINDOW_PASSED
    }

    /// A final step handed to a kind's executor as if it were a call: a bug in the reconcile
    /// loop (final steps end the loop), reported as an error rather than a panic.
    pub fn final_step(step: &str) -> Self {
        ProtonError {
            operation: "reconcile",
            class: ErrorClass::Other,
            code: "InternalError".into(),
            message: format!("{step} is not executed as an intermediate step"),
            retry_in: None,
        }
    }

    /// The controller's error for a failed SDK call, and what the call heard of the service (for
    /// `aws::reach`): both from one reading of the failure.
    pub(crate) fn from_sdk<E>(
        operation: &'static str,
        err: SdkError<E, aws_smithy_runtime_api::http::Response>,
    ) -> (Self, Heard)
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let heard = heard(&err);
        let error = match &err {
            SdkError::ServiceError(service) => {
                let code = service.err().code().unwrap_or("Unknown").to_string();
                let status = service.raw().status().as_u16();
                let message = service
                    .err()
                    .message()
                    .map(without_signing_details)
                    .unwrap_or_else(|| format!("HTTP {status}"));
                let class = match heard {
                    Heard::Unanswered => ErrorClass::Unanswered,
                    _ => answered_class(&code, status),
                };
                let message = match class {
                    ErrorClass::Unsupported => unsupported(operation, &message),
                    _ => message,
                };
                ProtonError {
                    operation,
                    class,
                    code,
                    message,
                    retry_in: None,
                }
            }
            SdkError::TimeoutError(_) => ProtonError {
                operation,
                class: ErrorClass::Unanswered,
                code: "Timeout".into(),
                message: "the request timed out".into(),
                retry_in: None,
            },
            SdkError::DispatchFailure(_) if heard == Heard::Unanswered => ProtonError {
                operation,
                class: ErrorClass::Unanswered,
                code: "DispatchFailure".into(),
                message: format!(
                    "could not reach {}: {}",
                    service_of(operation),
                    describe(&err)
                ),
                retry_in: None,
            },
            // Failed in the client with nothing heard of the service (credentials or an endpoint
            // that could not be had, an error of the HTTP client's own): no outage, and no
            // answer either.
            SdkError::DispatchFailure(_) => ProtonError {
                operation,
                class: ErrorClass::Other,
                code: FAILED_IN_CLIENT.into(),
                message: format!(
                    "the call failed in the client (nothing heard of {}): {}",
                    service_of(operation),
                    describe(&err)
                ),
                retry_in: None,
            },
            SdkError::ResponseError(_) => ProtonError {
                operation,
                class: ErrorClass::Unanswered,
                code: "ResponseError".into(),
                message: format!(
                    "unreadable response from {}: {}",
                    service_of(operation),
                    describe(&err)
                ),
                retry_in: None,
            },
            _ => ProtonError {
                operation,
                class: ErrorClass::Other,
                code: "ConstructionFailure".into(),
                message: describe(&err),
                retry_in: None,
            },
        };
        (error, heard)
    }
}

/// The message of [`ErrorClass::Unsupported`]: where the fix lies, then the endpoint's own words
/// (often only the operation's name; or a deserializer's, long enough for a condition's cut to
/// take the end).
fn unsupported(operation: &'static str, message: &str) -> String {
    let service = service_of(operation);
    let flag = match service {
        "STS" => "--sts-endpoint",
        _ => "--proton-endpoint",
    };
    format!(
        "the endpoint does not serve this call as AWS {service} does (not {service}-compatible, or not up to date; see {flag}): {message}"
    )
}

/// What a failed call says of the service's reach (see [`crate::aws::reach`]); the class of its
/// error follows from it ([`ProtonError::from_sdk`]), so a resource is told `AwsUnavailable`
/// exactly when its call marked the service away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Heard {
    /// The service answered: a result, or an error of its own (a refusal, throttling, a 500).
    Answered,
    /// Nothing answered for the service: a connection refused, reset or timed out, closed
    /// before or during the answer, or a gateway's 502, 503 or 504.
    Unanswered,
    /// The request did not go out, or failed in the client (credentials that could not be had,
    /// a request that could not be built, an answer the HTTP client could not make out):
    /// nothing is learned of the endpoint.
    NotSent,
}

/// What a failed call says of the service's reach.
fn heard<E: ProvideErrorMetadata>(
    error: &SdkError<E, aws_smithy_runtime_api::http::Response>,
) -> Heard {
    match error {
        SdkError::ServiceError(e) => {
            let status = e.raw().status().as_u16();
            let class = answered_class(e.err().code().unwrap_or("Unknown"), status);
            // A gateway in front of the service (a proxy or load balancer, an endpoint with no
            // pod behind it) fails with 502, 503 or 504 and no code, or one that only says the
            // service is unavailable (a Transient one); an error the service names (throttling,
            // a refusal) is its answer, whatever the status.
            if class == ErrorClass::Transient && matches!(status, 502..=504) {
                Heard::Unanswered
            } else {
                Heard::Answered
            }
        }
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => Heard::Unanswered,
        // A connection closed before the answer began (a pod or proxy going away) is "other",
        // marked transient.
        SdkError::DispatchFailure(f)
            if f.is_io() || f.is_timeout() || f.as_other() == Some(ErrorKind::TransientError) =>
        {
            Heard::Unanswered
        }
        _ => Heard::NotSent,
    }
}

/// The class of an error the service answered with `code` and HTTP `status`: an error of no
/// known code is a passing fault of the service's when its status says so (5xx).
fn answered_class(code: &str, status: u16) -> ErrorClass {
    match ErrorClass::from_code(code) {
        ErrorClass::Other if (500..600).contains(&status) => ErrorClass::Transient,
        class => class,
    }
}

/// An AWS error message as the status, Events and logs may show it. A signature refused
/// (`SignatureDoesNotMatch`, `InvalidSignatureException`) may come with the canonical request and
/// the string to sign that the service expected, whose headers include the session token: that
/// part is left out.
fn without_signing_details(message: &str) -> String {
    const DETAILS: [&str; 3] = [
        "The Canonical String",
        "The String-to-Sign",
        "x-amz-security-token",
    ];
    let cut = DETAILS
        .iter()
        .filter_map(|marker| message.find(marker))
        .min();
    match cut {
        Some(at) => format!(
            "{} (the request's signing details the service returned are left out)",
            message[..at].trim_end()
        ),
        None => message.to_string(),
    }
}

/// The full error chain in one line: SDK errors hide their cause in `source()` (signing details
/// left out, as from a service's message: a credentials provider's refusal may carry them).
fn describe(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    without_signing_details(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As STS and JSON-protocol services answer a signature they refuse: the canonical request
    /// they expected, headers and all.
    #[test]
    fn a_refused_signature_s_message_keeps_no_signing_details() {
        let answered = "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.\n\nThe Canonical String for this request should have been\n'POST\n/\n\ncontent-type:application/x-amz-json-1.0\nhost:proton.us-east-1.amazonaws.com\nx-amz-date:20261207T080000Z\nx-amz-security-token:IQoJb3JpZ2luX2VjSECRET\n\ncontent-type;host;x-amz-date;x-amz-security-token\n0123'\n\nThe String-to-Sign should have been\n'AWS4-HMAC-SHA256\n20261207T080000Z\n20261207/us-east-1/proton/aws4_request\nabcd'\n";
        let shown = without_signing_details(answered);
        assert!(!shown.contains("IQoJb3JpZ2luX2VjSECRET"), "{shown}");
        assert!(!shown.contains("AWS4-HMAC-SHA256"), "{shown}");
        assert!(
            shown.starts_with("The request signature we calculated does not match"),
            "{shown}"
        );
        assert!(
            shown.ends_with("(the request's signing details the service returned are left out)")
        );
        // A header named alone, in whatever form, is cut there too.
        let bare = without_signing_details("denied; x-amz-security-token:abc");
        assert_eq!(
            bare,
            "denied; (the request's signing details the service returned are left out)"
        );
        let plain = "User: arn:aws:sts::1:assumed-role/r/s is not authorized";
        assert_eq!(
            without_signing_details(plain),
            plain,
            "other messages unchanged"
        );
    }

    /// An answer of the service's is told from no answer at all, and the error's class says
    /// what `heard` says: a resource is told `AwsUnavailable` (and waits for the service's
    /// return, `reconciler::tracked`) exactly when its call marked the service away.
    #[test]
    fn what_a_call_heard_of_the_service_and_its_class_agree() {
        use aws_sdk_proton::error::ErrorMetadata;
        use aws_sdk_proton::operation::get_environment_account_connection::GetEnvironmentAccountConnectionError as GetError;
        use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
        use aws_smithy_runtime_api::client::result::ConnectorError;
        use aws_smithy_runtime_api::http::StatusCode;
        use aws_smithy_types::body::SdkBody;

        type Failure = SdkError<GetError, HttpResponse>;
        let raw = |status: u16| {
            HttpResponse::new(
                StatusCode::try_from(status).expect("a status"),
                SdkBody::empty(),
            )
        };
        let answered = |status: u16, code: &str| -> Failure {
            let err = GetError::generic(ErrorMetadata::builder().code(code).message("m").build());
            SdkError::service_error(err, raw(status))
        };
        use ErrorClass as C;
        use Heard as H;
        let cases: Vec<(&str, Failure, Heard, ErrorClass, &str)> = vec![
            (
                "500",
                answered(500, "InternalServerException"),
                H::Answered,
                C::Transient,
                "AwsServerError",
            ),
            (
                "500, no known code",
                answered(500, "SomethingNew"),
                H::Answered,
                C::Transient,
                "AwsServerError",
            ),
            (
                "501",
                answered(501, "Unknown"),
                H::Answered,
                C::Transient,
                "AwsServerError",
            ),
            (
                "a gateway's 502",
                answered(502, "Unknown"),
                H::Unanswered,
                C::Unanswered,
                "AwsUnavailable",
            ),
            (
                "503",
                answered(503, "ServiceUnavailableException"),
                H::Unanswered,
                C::Unanswered,
                "AwsUnavailable",
            ),
            (
                "a gateway's 504",
                answered(504, "Unknown"),
                H::Unanswered,
                C::Unanswered,
                "AwsUnavailable",
            ),
            // A code of the service's own is its answer, whatever the status.
            (
                "throttled with 503",
                answered(503, "ThrottlingException"),
                H::Answered,
                C::Throttled,
                "Throttled",
            ),
            (
                "throttled",
                answered(429, "ThrottlingException"),
                H::Answered,
                C::Throttled,
                "Throttled",
            ),
            (
                "denied",
                answered(403, "AccessDeniedException"),
                H::Answered,
                C::AccessDenied,
                "AccessDenied",
            ),
            (
                "not found",
                answered(404, "ResourceNotFoundException"),
                H::Answered,
                C::NotFound,
                "NotFound",
            ),
            (
                "conflict",
                answered(409, "ConflictException"),
                H::Answered,
                C::Conflict,
                "Conflict",
            ),
            (
                "an operation the endpoint does not know",
                answered(400, "UnknownOperationException"),
                H::Answered,
                C::Unsupported,
                "UnsupportedByEndpoint",
            ),
            (
                "a request the endpoint cannot read",
                answered(400, "SerializationException"),
                H::Answered,
                C::Unsupported,
                "UnsupportedByEndpoint",
            ),
            (
                "expired",
                answered(400, "ExpiredTokenException"),
                H::Answered,
                C::Transient,
                "CredentialsExpired",
            ),
            (
                "an unknown 4xx",
                answered(400, "SomethingNew"),
                H::Answered,
                C::Other,
                "AwsError",
            ),
            (
                "refused",
                SdkError::dispatch_failure(ConnectorError::io(
                    std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into(),
                )),
                H::Unanswered,
                C::Unanswered,
                "AwsUnavailable",
            ),
            (
                "connect timed out",
                SdkError::dispatch_failure(ConnectorError::timeout("connect".into())),
                H::Unanswered,
                C::Unanswered,
                "AwsUnavailable",
            ),
            (
                "timed out",
                SdkError::timeout_error("attempt"),
                H::Unanswered,
                C::Unanswered,
                "AwsUnavailable",
            ),
            // hyper's IncompleteMessage: closed before the answer began.
            (
                "closed",
                SdkError::dispatch_failure(ConnectorError::other(
                    "connection closed before message completed".into(),
                    Some(ErrorKind::TransientError),
                )),
                H::Unanswered,
                C::Unanswered,
                "AwsUnavailable",
            ),
            (
                "closed during the answer",
                SdkError::response_error("cut", raw(200)),
                H::Unanswered,
                C::Unanswered,
                "AwsUnavailable",
            ),
            // Credentials that could not be loaded fail the dispatch too, before anything is
            // sent: no outage, and no answer.
            (
                "no credentials",
                SdkError::dispatch_failure(ConnectorError::other("no credentials".into(), None)),
                H::NotSent,
                C::Other,
                "AwsError",
            ),
            (
                "not built",
                SdkError::construction_failure("bad input"),
                H::NotSent,
                C::Other,
                "AwsError",
            ),
        ];
        for (what, failure, expected, class, reason) in cases {
            let (e, heard) = ProtonError::from_sdk("GetEnvironmentAccountConnection", failure);
            assert_eq!(heard, expected, "{what}");
            assert_eq!((e.class, e.reason()), (class, reason), "{what}: {e:?}");
        }
        let unsent = ProtonError::unreached("GetEnvironmentAccountConnection", "us-east-1");
        assert!(unsent.is_unreached());
        assert_eq!(unsent.reason(), "AwsUnavailable");
        let (role, _) = ProtonError::from_sdk("AssumeRole", answered(403, "AccessDenied"));
        assert_eq!(role.reason(), "AssumeRoleFailed");
        // An endpoint short of a call is told where the fix lies, before its own message.
        let (proton, _) = ProtonError::from_sdk(
            "UpdateEnvironmentAccountConnection",
            answered(400, "UnknownOperationException"),
        );
        assert_eq!(
            proton.message,
            "the endpoint does not serve this call as AWS Proton does (not Proton-compatible, or not up to date; see --proton-endpoint): m"
        );
        let (sts, _) = ProtonError::from_sdk("AssumeRole", answered(400, "InvalidAction"));
        assert!(
            sts.message
                .starts_with("the endpoint does not serve this call as AWS STS does (")
                && sts.message.ends_with("see --sts-endpoint): m"),
            "{}",
            sts.message
        );
    }

    #[test]
    fn every_model_error_is_classified() {
        let cases = [
            ("ThrottlingException", ErrorClass::Throttled, Retry::Backoff),
            (
                "InternalServerException",
                ErrorClass::Transient,
                Retry::Backoff,
            ),
            (
                "AccessDeniedException",
                ErrorClass::AccessDenied,
                Retry::Slow,
            ),
            (
                "ValidationException",
                ErrorClass::Validation,
                Retry::Terminal,
            ),
            (
                "ServiceQuotaExceededException",
                ErrorClass::QuotaExceeded,
                Retry::Terminal,
            ),
            ("ConflictException", ErrorClass::Conflict, Retry::Terminal),
            (
                "ResourceNotFoundException",
                ErrorClass::NotFound,
                Retry::Terminal,
            ),
            ("ExpiredToken", ErrorClass::Transient, Retry::Backoff),
            (
                "ExpiredTokenException",
                ErrorClass::Transient,
                Retry::Backoff,
            ),
            (
                "InvalidClientTokenId",
                ErrorClass::AccessDenied,
                Retry::Slow,
            ),
            ("InternalFailure", ErrorClass::Transient, Retry::Backoff),
            ("ValidationError", ErrorClass::Validation, Retry::Terminal),
            (
                "MalformedPolicyDocument",
                ErrorClass::Validation,
                Retry::Terminal,
            ),
            (
                "RegionDisabledException",
                ErrorClass::AccessDenied,
                Retry::Slow,
            ),
            ("OptInRequired", ErrorClass::AccessDenied, Retry::Slow),
            (
                "SignatureDoesNotMatch",
                ErrorClass::AccessDenied,
                Retry::Slow,
            ),
            // awsJson's protocol errors, and the awsQuery protocol's (STS's) unknown action.
            (
                "UnknownOperationException",
                ErrorClass::Unsupported,
                Retry::Terminal,
            ),
            (
                "SerializationException",
                ErrorClass::Unsupported,
                Retry::Terminal,
            ),
            ("InvalidAction", ErrorClass::Unsupported, Retry::Terminal),
            ("SomethingNew", ErrorClass::Other, Retry::Backoff),
        ];
        for (code, class, retry) in cases {
            assert_eq!(ErrorClass::from_code(code), class, "{code}");
            assert_eq!(class.retry(), retry, "{code}");
        }
    }
}
