//! The error taxonomy: every error Sluice reports carries an [`ErrorKind`], and the kind maps
//! once, here, to a gRPC code and an HTTP status, and says whether retrying can help.

use std::fmt;

/// What kind of failure happened, from the caller's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request or input is wrong; retrying it unchanged will fail again.
    InvalidArgument,
    /// The input is larger than a configured limit.
    TooLarge,
    /// The caller is not allowed to do this.
    PermissionDenied,
    /// The thing asked for does not exist.
    NotFound,
    /// A dependency (disk, bus, peer) is unavailable for now; retrying later may help.
    Unavailable,
    /// A queue or buffer is full; retrying later may help.
    ResourceExhausted,
    /// A bug or an unexpected state inside Sluice.
    Internal,
}

impl ErrorKind {
    /// The gRPC status code for this kind.
    pub fn grpc_code(self) -> tonic::Code {
        match self {
            ErrorKind::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorKind::TooLarge => tonic::Code::InvalidArgument,
            ErrorKind::PermissionDenied => tonic::Code::PermissionDenied,
            ErrorKind::NotFound => tonic::Code::NotFound,
            ErrorKind::Unavailable => tonic::Code::Unavailable,
            ErrorKind::ResourceExhausted => tonic::Code::ResourceExhausted,
            ErrorKind::Internal => tonic::Code::Internal,
        }
    }

    /// The HTTP status code for this kind.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::InvalidArgument => 400,
            ErrorKind::TooLarge => 413,
            ErrorKind::PermissionDenied => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::Unavailable => 503,
            ErrorKind::ResourceExhausted => 429,
            ErrorKind::Internal => 500,
        }
    }

    /// Whether retrying the same request later can succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Unavailable | ErrorKind::ResourceExhausted)
    }
}

/// A message with a kind: the error type crossing component boundaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SluiceError {
    kind: ErrorKind,
    message: String,
}

impl SluiceError {
    /// Creates an error of `kind`; `message` says what failed and with what, in lowercase.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        SluiceError {
            kind,
            message: message.into(),
        }
    }

    /// Shorthand for an [`ErrorKind::InvalidArgument`] error.
    pub fn invalid(message: impl Into<String>) -> Self {
        SluiceError::new(ErrorKind::InvalidArgument, message)
    }

    /// Shorthand for an [`ErrorKind::Internal`] error.
    pub fn internal(message: impl Into<String>) -> Self {
        SluiceError::new(ErrorKind::Internal, message)
    }

    /// Shorthand for an [`ErrorKind::Unavailable`] error.
    pub fn unavailable(message: impl Into<String>) -> Self {
        SluiceError::new(ErrorKind::Unavailable, message)
    }

    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message of this error.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for SluiceError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.message)
    }
}

impl std::error::Error for SluiceError {}

impl From<SluiceError> for tonic::Status {
    fn from(error: SluiceError) -> tonic::Status {
        tonic::Status::new(error.kind.grpc_code(), error.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_is_never_retryable_and_maps_to_client_errors() {
        for kind in [ErrorKind::InvalidArgument, ErrorKind::TooLarge] {
            assert!(!kind.is_retryable());
            assert!((400..500).contains(&kind.http_status()));
            assert_eq!(kind.grpc_code(), tonic::Code::InvalidArgument);
        }
        assert!(ErrorKind::Unavailable.is_retryable());
        let status: tonic::Status = SluiceError::invalid("bad thing").into();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "bad thing");
    }
}
