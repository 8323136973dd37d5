//! Errors of AWS calls (Proton and STS) and how the controller reacts to each class: retried
//! with backoff, retried slowly, or terminal for the current generation.

use std::time::Duration;

use aws_sdk_proton::error::{ProvideErrorMetadata, SdkError};

/// How the controller should react to a failed call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// ThrottlingException: retry with backoff, and slow all callers down.
    Throttled,
    /// InternalServerException, 5xx, timeouts, connection failures, expired temporary
    /// credentials: retry with backoff.
    Transient,
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
    /// Anything else (unknown error codes, requests the SDK could not build).
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
            | ErrorClass::Other
            | ErrorClass::Deferred => Retry::Backoff,
            ErrorClass::AccessDenied => Retry::Slow,
            ErrorClass::Validation
            | ErrorClass::QuotaExceeded
            | ErrorClass::Conflict
            | ErrorClass::NotFound => Retry::Terminal,
        }
    }

    /// The condition reason (and Event reason) naming this class.
    pub fn reason(self) -> &'static str {
        match self {
            ErrorClass::Throttled => "Throttled",
            ErrorClass::Transient => "AwsUnavailable",
            ErrorClass::AccessDenied => "AccessDenied",
            ErrorClass::Validation => "InvalidSpec",
            ErrorClass::QuotaExceeded => "QuotaExceeded",
            ErrorClass::Conflict => "Conflict",
            ErrorClass::NotFound => "NotFound",
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
            "InternalServerException" | "ServiceUnavailable" | "ServiceUnavailableException" => {
                ErrorClass::Transient
            }
            // Temporary credentials that expired (STS's awsQuery code, Proton's): a role's
            // session is dropped on it (`Proton::call`) and the SDK renews the controller's own,
            // so the next try signs with fresh ones. Nothing to fix in IAM.
            "ExpiredTokenException" | "ExpiredToken" => ErrorClass::Transient,
            "AccessDeniedException"
            | "AccessDenied"
            | "UnrecognizedClientException"
            | "InvalidSignatureException"
            // STS's awsQuery code for credentials it does not know.
            | "InvalidClientTokenId" => ErrorClass::AccessDenied,
            "ValidationException" => ErrorClass::Validation,
            "ServiceQuotaExceededException" => ErrorClass::QuotaExceeded,
            "ConflictException" => ErrorClass::Conflict,
            "ResourceNotFoundException" => ErrorClass::NotFound,
            _ => ErrorClass::Other,
        }
    }
}

/// The code of [`ProtonError::late`].
const SEND_WINDOW_PASSED: &str = "SendWindowPassed";

/// The code of [`ProtonError::unreached`].
const UNREACHED: &str = "Unreached";

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
            class: ErrorClass::Transient,
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
        self.class == ErrorClass::Transient && self.code == UNREACHED
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

    pub(crate) fn from_sdk<E>(
        operation: &'static str,
        err: SdkError<E, aws_smithy_runtime_api::http::Response>,
    ) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        match &err {
            SdkError::ServiceError(service) => {
                let code = service.err().code().unwrap_or("Unknown").to_string();
                let message = service
                    .err()
                    .message()
                    .map(without_signing_details)
                    .unwrap_or_else(|| format!("HTTP {}", service.raw().status().as_u16()));
                let mut class = ErrorClass::from_code(&code);
                if class == ErrorClass::Other && service.raw().status().is_server_error() {
                    class = ErrorClass::Transient;
                }
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
                class: ErrorClass::Transient,
                code: "Timeout".into(),
                message: "the request timed out".into(),
                retry_in: None,
            },
            SdkError::DispatchFailure(failure) => ProtonError {
                operation,
                class: ErrorClass::Transient,
                code: "DispatchFailure".into(),
                message: format!(
                    "could not reach Proton: {}",
                    describe(&err, failure.is_io())
                ),
                retry_in: None,
            },
            SdkError::ResponseError(_) => ProtonError {
                operation,
                class: ErrorClass::Transient,
                code: "ResponseError".into(),
                message: format!("unreadable response from Proton: {}", describe(&err, false)),
                retry_in: None,
            },
            _ => ProtonError {
                operation,
                class: ErrorClass::Other,
                code: "ConstructionFailure".into(),
                message: describe(&err, false),
                retry_in: None,
            },
        }
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
fn describe(err: &dyn std::error::Error, _io: bool) -> String {
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
            ("SomethingNew", ErrorClass::Other, Retry::Backoff),
        ];
        for (code, class, retry) in cases {
            assert_eq!(ErrorClass::from_code(code), class, "{code}");
            assert_eq!(class.retry(), retry, "{code}");
        }
    }
}
