//! The error shapes of the Proton model, as the emulator answers them on the wire.

/// One error shape of the model (or an arbitrary one scripted by a test).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    Validation,
    ResourceNotFound,
    Conflict,
    ServiceQuotaExceeded,
    AccessDenied,
    Throttling,
    InternalServer,
    /// Not in the model: the awsJson protocol's answer to a body that is not JSON of the right shape.
    Serialization,
    /// Not in the model: the awsJson protocol's answer to an unknown `X-Amz-Target`.
    UnknownOperation,
    /// Not in the model: temporary credentials past their expiration (AWS's authentication
    /// layer answers it for every service).
    ExpiredToken,
    /// Not in the model: credentials the service does not recognise, e.g. a temporary key sent
    /// without its session token.
    InvalidClientToken,
    /// Any other shape name, so `fail_next` can script errors the model does not list.
    Other(String),
}

impl ErrorKind {
    /// Maps a shape name (`"ThrottlingException"`) to its kind; unknown names are kept as they are.
    pub fn from_type_name(name: &str) -> ErrorKind {
        match name {
            "ValidationException" => ErrorKind::Validation,
            "ResourceNotFoundException" => ErrorKind::ResourceNotFound,
            "ConflictException" => ErrorKind::Conflict,
            "ServiceQuotaExceededException" => ErrorKind::ServiceQuotaExceeded,
            "AccessDeniedException" => ErrorKind::AccessDenied,
            "ThrottlingException" => ErrorKind::Throttling,
            "InternalServerException" => ErrorKind::InternalServer,
            "SerializationException" => ErrorKind::Serialization,
            "UnknownOperationException" => ErrorKind::UnknownOperation,
            "ExpiredTokenException" => ErrorKind::ExpiredToken,
            "UnrecognizedClientException" => ErrorKind::InvalidClientToken,
            other => ErrorKind::Other(other.to_string()),
        }
    }

    /// The shape name, as sent in `__type` and `x-amzn-ErrorType`.
    pub fn type_name(&self) -> &str {
        match self {
            ErrorKind::Validation => "ValidationException",
            ErrorKind::ResourceNotFound => "ResourceNotFoundException",
            ErrorKind::Conflict => "ConflictException",
            ErrorKind::ServiceQuotaExceeded => "ServiceQuotaExceededException",
            ErrorKind::AccessDenied => "AccessDeniedException",
            ErrorKind::Throttling => "ThrottlingException",
            ErrorKind::InternalServer => "InternalServerException",
            ErrorKind::Serialization => "SerializationException",
            ErrorKind::UnknownOperation => "UnknownOperationException",
            ErrorKind::ExpiredToken => "ExpiredTokenException",
            ErrorKind::InvalidClientToken => "UnrecognizedClientException",
            ErrorKind::Other(name) => name,
        }
    }

    /// awsJson clients classify errors by `__type`, not by status; the status still matters to
    /// generic retry logic, so server faults are 5xx and everything the caller caused is 4xx.
    pub fn http_status(&self) -> u16 {
        match self {
            ErrorKind::AccessDenied | ErrorKind::InvalidClientToken => 403,
            ErrorKind::InternalServer => 500,
            ErrorKind::Other(name) if name.starts_with("ServiceUnavailable") => 503,
            ErrorKind::Other(name) if name.starts_with("InternalFailure") => 500,
            _ => 400,
        }
    }
}

/// An error answer: a shape and its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", kind.type_name())]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ApiError {
        ApiError {
            kind,
            message: message.into(),
        }
    }

    pub fn validation(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::Validation, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::ResourceNotFound, message)
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::Conflict, message)
    }

    pub fn serialization(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::Serialization, message)
    }

    pub fn access_denied(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::AccessDenied, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_round_trip() {
        for name in [
            "ValidationException",
            "ResourceNotFoundException",
            "ConflictException",
            "ServiceQuotaExceededException",
            "AccessDeniedException",
            "ThrottlingException",
            "InternalServerException",
            "SerializationException",
            "UnknownOperationException",
            "ExpiredTokenException",
            "UnrecognizedClientException",
            "SomethingElseException",
        ] {
            assert_eq!(ErrorKind::from_type_name(name).type_name(), name);
        }
    }

    #[test]
    fn server_faults_are_5xx_and_caller_errors_4xx() {
        assert_eq!(ErrorKind::InternalServer.http_status(), 500);
        assert_eq!(ErrorKind::Throttling.http_status(), 400);
        assert_eq!(ErrorKind::AccessDenied.http_status(), 403);
        assert_eq!(ErrorKind::Validation.http_status(), 400);
        assert_eq!(
            ErrorKind::from_type_name("ServiceUnavailableException").http_status(),
            503
        );
    }
}
