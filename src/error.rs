//! The one error type of the service. Every variant maps to an HTTP status and an OperationOutcome
//! `issue.code` (http://hl7.org/fhir/R4/valueset-issue-type.html) in one table, [`Error::status_and_code`].

use actix_web::http::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed (syntax, an invalid parameter, a body that does not parse).
    #[error("{0}")]
    Invalid(String),
    /// The body parses but breaks the structure of FHIR (unknown element, wrong resourceType, id mismatch).
    #[error("{0}")]
    Structure(String),
    /// No valid bearer token (401, with `WWW-Authenticate: Bearer`).
    #[error("{0}")]
    Unauthorized(String),
    /// A valid token whose scopes do not cover the interaction (403).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// A resource type or interaction this server does not support.
    #[error("{0}")]
    UnsupportedType(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    NotAcceptable(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// A request that asks for more work than the server allows (too many criteria, …).
    #[error("{0}")]
    TooCostly(String),
    /// The client took too long to send its request.
    #[error("{0}")]
    RequestTimeout(String),
    /// The server could not answer in time, or its database is unavailable; try again.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Valid FHIR that breaks a rule of this server (an unresolvable reference, …).
    #[error("{0}")]
    Unprocessable(String),
    /// Valid FHIR structure that breaks invariants (the R4 constraints of severity error, and this
    /// server's own rules on a resource's content): 422, one issue per broken invariant, each with
    /// the element's path as its `expression`.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invariant(Vec<BrokenInvariant>),
    /// A session that the scheduling rules refuse: 409 for a double booking or reserved time, 422
    /// for the others.
    #[error("{message}")]
    BookingRefused { reason: BookingRefusal, message: String },
    /// Our fault. The message goes to the log only; the caller sees an opaque text and the request id.
    #[error("internal error: {0}")]
    Internal(String),
}

/// One broken invariant: what the caller is told (the constraint's key first) and the FHIRPath of
/// the element that breaks it (`Appointment`, `Consent.provision.period`, `Patient.contact[0]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenInvariant {
    pub diagnostics: String,
    pub expression: String,
}

impl std::fmt::Display for BrokenInvariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (at {})", self.diagnostics, self.expression)
    }
}

/// Why the scheduling rules refused a session (a label of the bookings-refused metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BookingRefusal {
    /// A practitioner, patient or location already booked at that time.
    DoubleBooking,
    /// A patient who is not an active member of the session's group.
    NotAMember,
    /// More patients than the group's capacity.
    OverCapacity,
    /// A patient without a group confidentiality agreement covering the session.
    NoAgreement,
    /// The session's group does not exist.
    UnknownGroup,
    /// An individual session in time a Slot reserves for group sessions (or time reserved over one).
    ReservedTime,
    /// More people invited to a video session than its service takes (virtualService maxParticipants).
    TooManyParticipants,
}

impl BookingRefusal {
    pub fn as_str(&self) -> &'static str {
        match self {
            BookingRefusal::DoubleBooking => "double-booking",
            BookingRefusal::NotAMember => "not-a-member",
            BookingRefusal::OverCapacity => "over-capacity",
            BookingRefusal::NoAgreement => "no-agreement",
            BookingRefusal::UnknownGroup => "unknown-group",
            BookingRefusal::ReservedTime => "reserved-time",
            BookingRefusal::TooManyParticipants => "too-many-participants",
        }
    }
}

impl Error {
    /// A refusal by the scheduling rules.
    pub fn booking(reason: BookingRefusal, message: String) -> Error {
        Error::BookingRefused { reason, message }
    }

    /// The status and OperationOutcome issue code of each variant.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Error::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
            Error::Structure(_) => (StatusCode::BAD_REQUEST, "structure"),
            Error::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "login"),
            Error::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
            Error::UnsupportedType(_) => (StatusCode::NOT_FOUND, "not-supported"),
            Error::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "not-supported"),
            Error::NotAcceptable(_) => (StatusCode::NOT_ACCEPTABLE, "not-supported"),
            Error::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Error::Gone(_) => (StatusCode::GONE, "deleted"),
            Error::PreconditionFailed(_) => (StatusCode::PRECONDITION_FAILED, "conflict"),
            Error::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too-costly"),
            Error::TooCostly(_) => (StatusCode::BAD_REQUEST, "too-costly"),
            Error::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "timeout"),
            Error::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "transient"),
            Error::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "not-supported"),
            Error::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "processing"),
            Error::Invariant(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invariant"),
            Error::BookingRefused {
                reason: BookingRefusal::DoubleBooking | BookingRefusal::ReservedTime,
                ..
            } => (StatusCode::CONFLICT, "conflict"),
            Error::BookingRefused { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "processing"),
            Error::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "exception"),
        }
    }

    /// The same error with `context` before its message (which entry of a Bundle failed, say).
    pub fn in_context(self, context: &str) -> Error {
        let with = |m: String| format!("{context}: {m}");
        match self {
            Error::Invalid(m) => Error::Invalid(with(m)),
            Error::Structure(m) => Error::Structure(with(m)),
            Error::Unauthorized(m) => Error::Unauthorized(with(m)),
            Error::Forbidden(m) => Error::Forbidden(with(m)),
            Error::NotFound(m) => Error::NotFound(with(m)),
            Error::UnsupportedType(m) => Error::UnsupportedType(with(m)),
            Error::MethodNotAllowed(m) => Error::MethodNotAllowed(with(m)),
            Error::NotAcceptable(m) => Error::NotAcceptable(with(m)),
            Error::Conflict(m) => Error::Conflict(with(m)),
            Error::Gone(m) => Error::Gone(with(m)),
            Error::PreconditionFailed(m) => Error::PreconditionFailed(with(m)),
            Error::PayloadTooLarge(m) => Error::PayloadTooLarge(with(m)),
            Error::TooCostly(m) => Error::TooCostly(with(m)),
            Error::RequestTimeout(m) => Error::RequestTimeout(with(m)),
            Error::Unavailable(m) => Error::Unavailable(with(m)),
            Error::UnsupportedMediaType(m) => Error::UnsupportedMediaType(with(m)),
            Error::Unprocessable(m) => Error::Unprocessable(with(m)),
            Error::Invariant(broken) => Error::Invariant(
                broken
                    .into_iter()
                    .map(|b| BrokenInvariant {
                        diagnostics: with(b.diagnostics),
                        ..b
                    })
                    .collect(),
            ),
            Error::BookingRefused { reason, message } => Error::BookingRefused {
                reason,
                message: with(message),
            },
            Error::Internal(m) => Error::Internal(with(m)),
        }
    }

    /// What the caller is told. Internal causes stay in the log.
    pub fn diagnostics(&self, request_id: &str) -> String {
        match self {
            Error::Internal(_) => format!("An internal error occurred (request id {request_id})."),
            other => other.to_string(),
        }
    }
}

impl From<diesel::result::Error> for Error {
    fn from(e: diesel::result::Error) -> Self {
        // Database messages can carry bound values (ids, keys): keep only the kind and the constraint.
        match e {
            // PostgreSQL cancelled a statement that ran past statement_timeout (57014), or SQLite
            // waited past its busy timeout for the write lock: the server is too busy, try again.
            diesel::result::Error::DatabaseError(_, ref info)
                if info.message().contains("statement timeout") || info.message().contains("database is locked") =>
            {
                Error::Unavailable("the database did not answer in time; try again".into())
            }
            diesel::result::Error::DatabaseError(kind, info) => Error::Internal(format!(
                "database error {kind:?} (constraint {:?})",
                info.constraint_name()
            )),
            other => Error::Internal(format!("database error: {other}")),
        }
    }
}

impl From<r2d2_error::PoolError> for Error {
    fn from(e: r2d2_error::PoolError) -> Self {
        // No connection within the pool's wait: the database is down or every connection is busy.
        tracing::warn!(cause = %e, "no database connection");
        Error::Unavailable("the database is unavailable; try again".into())
    }
}

mod r2d2_error {
    pub use diesel::r2d2::PoolError;
}

/// A handler's error leaves as this; the `errors` middleware (api::middleware) renders it as an
/// OperationOutcome in the negotiated format, with the request id, before any other layer sees it.
/// This plain JSON rendering is what an error would look like without that layer.
impl actix_web::ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        self.status_and_code().0
    }

    fn error_response(&self) -> actix_web::HttpResponse {
        let (status, code) = self.status_and_code();
        actix_web::HttpResponse::build(status)
            .content_type("application/fhir+json")
            .json(crate::fhir::operation_outcome("error", code, &self.diagnostics("")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_has_its_status_and_issue_code() {
        let table = [
            (Error::Invalid(String::new()), 400, "invalid"),
            (Error::Structure(String::new()), 400, "structure"),
            (Error::Unauthorized(String::new()), 401, "login"),
            (Error::Forbidden(String::new()), 403, "forbidden"),
            (Error::NotFound(String::new()), 404, "not-found"),
            (Error::UnsupportedType(String::new()), 404, "not-supported"),
            (Error::MethodNotAllowed(String::new()), 405, "not-supported"),
            (Error::NotAcceptable(String::new()), 406, "not-supported"),
            (Error::Conflict(String::new()), 409, "conflict"),
            (Error::Gone(String::new()), 410, "deleted"),
            (Error::PreconditionFailed(String::new()), 412, "conflict"),
            (Error::PayloadTooLarge(String::new()), 413, "too-costly"),
            (Error::TooCostly(String::new()), 400, "too-costly"),
            (Error::RequestTimeout(String::new()), 408, "timeout"),
            (Error::Unavailable(String::new()), 503, "transient"),
            (Error::UnsupportedMediaType(String::new()), 415, "not-supported"),
            (Error::Unprocessable(String::new()), 422, "processing"),
            (Error::Invariant(Vec::new()), 422, "invariant"),
            (
                Error::booking(BookingRefusal::DoubleBooking, String::new()),
                409,
                "conflict",
            ),
            (
                Error::booking(BookingRefusal::NoAgreement, String::new()),
                422,
                "processing",
            ),
            (Error::Internal(String::new()), 500, "exception"),
        ];
        for (err, status, code) in table {
            let (s, c) = err.status_and_code();
            assert_eq!((s.as_u16(), c), (status, code), "{err:?}");
        }
    }

    #[test]
    fn broken_invariants_keep_their_paths_in_context() {
        let e = Error::Invariant(vec![BrokenInvariant {
            diagnostics: "per-1: If present, start SHALL have a lower value than end".into(),
            expression: "Patient.name[0].period".into(),
        }])
        .in_context("entry 1 (POST Patient)");
        let Error::Invariant(broken) = &e else { panic!("{e:?}") };
        assert_eq!(broken[0].expression, "Patient.name[0].period");
        assert!(
            broken[0].diagnostics.starts_with("entry 1 (POST Patient): per-1: "),
            "{e}"
        );
        assert!(e.to_string().ends_with("(at Patient.name[0].period)"), "{e}");
    }

    #[test]
    fn internal_causes_are_not_shown_to_the_caller() {
        let e = Error::Internal("secret detail".into());
        let shown = e.diagnostics("req-1");
        assert!(!shown.contains("secret"));
        assert!(shown.contains("req-1"));
    }
}
