//! One error type for every route, mapped to a status code and the JSON body
//! `{"error": {"code": "snake_case_code", "message": "..."}}` in one place.

use crate::batch::QueueError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    /// Malformed JSON or body.
    BadRequest(String),
    /// A field out of range, an unknown field, a bad time, `from` not before `to`.
    Invalid(String),
    Unauthenticated(String),
    Forbidden(String),
    NotFound(String),
    /// The body is over `--max-body-mib`, or a request has too many images.
    TooLarge(String),
    /// The request target is too long.
    UriTooLong(String),
    /// The request's headers are too large.
    HeadersTooLarge(String),
    /// The image is over `--max-pixels` (from its header).
    ImageTooLarge(String),
    /// Undecodable or truncated image.
    BadImage(String),
    UnsupportedMediaType(String),
    /// The queue is full: retry after this many seconds.
    Overloaded(u64),
    /// Not ready yet, or shutting down.
    Unavailable(String),
    /// Past `--request-timeout`.
    Timeout(String),
    /// The disk is full: nothing of the request was stored.
    InsufficientStorage(String),
    /// A box or the Milvus server behind a central node failed or is unreachable.
    BadGateway(String),
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::TooLarge(_) | ApiError::ImageTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            ApiError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::BadImage(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Invalid(_) => "invalid_argument",
            ApiError::Unauthenticated(_) => "unauthenticated",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::TooLarge(_) => "too_large",
            ApiError::UriTooLong(_) => "uri_too_long",
            ApiError::HeadersTooLarge(_) => "headers_too_large",
            ApiError::ImageTooLarge(_) => "image_too_large",
            ApiError::BadImage(_) => "bad_image",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::Overloaded(_) => "overloaded",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Timeout(_) => "timeout",
            ApiError::InsufficientStorage(_) => "insufficient_storage",
            ApiError::BadGateway(_) => "bad_gateway",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn message(&self) -> String {
        match self {
            ApiError::Overloaded(s) => {
                format!("the queue is full (--max-queue); retry after {s} s")
            }
            ApiError::BadRequest(m)
            | ApiError::Invalid(m)
            | ApiError::Unauthenticated(m)
            | ApiError::Forbidden(m)
            | ApiError::NotFound(m)
            | ApiError::TooLarge(m)
            | ApiError::UriTooLong(m)
            | ApiError::HeadersTooLarge(m)
            | ApiError::ImageTooLarge(m)
            | ApiError::BadImage(m)
            | ApiError::UnsupportedMediaType(m)
            | ApiError::Unavailable(m)
            | ApiError::Timeout(m)
            | ApiError::InsufficientStorage(m)
            | ApiError::BadGateway(m)
            | ApiError::Internal(m) => m.clone(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status().as_u16(),
            self.code(),
            self.message()
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code(), "message": self.message()}});
        let mut r = (self.status(), axum::Json(body)).into_response();
        match &self {
            ApiError::Overloaded(s) => {
                r.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_str(&s.to_string()).expect("digits"),
                );
            }
            ApiError::Unauthenticated(_) => {
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        r
    }
}

impl From<sen_store::StoreError> for ApiError {
    fn from(e: sen_store::StoreError) -> Self {
        ApiError::of_store(&e)
    }
}

impl From<sen_milvus::MilvusError> for ApiError {
    fn from(e: sen_milvus::MilvusError) -> Self {
        use sen_milvus::MilvusError as M;
        match e {
            M::Input(m) => ApiError::Invalid(m),
            M::Expr { .. } => ApiError::Invalid(e.to_string()),
            M::Store(s) => s.into(),
            other => ApiError::BadGateway(other.to_string()),
        }
    }
}

impl From<sen_runtime::RuntimeError> for ApiError {
    fn from(e: sen_runtime::RuntimeError) -> Self {
        ApiError::of_runtime(&e)
    }
}

impl<E> From<QueueError<E>> for ApiError
where
    ApiError: for<'a> From<&'a E>,
{
    fn from(e: QueueError<E>) -> Self {
        match e {
            QueueError::Full => ApiError::Overloaded(1),
            QueueError::Stopped(name) => {
                ApiError::Unavailable(format!("the {name} worker has stopped"))
            }
            QueueError::Failed(e) => ApiError::from(&*e),
            QueueError::Miscounted {
                queue,
                inputs,
                outputs,
            } => ApiError::Internal(format!("{queue}: {outputs} outputs for {inputs} inputs")),
        }
    }
}

impl From<&sen_store::StoreError> for ApiError {
    fn from(e: &sen_store::StoreError) -> Self {
        ApiError::of_store(e)
    }
}

impl From<&sen_runtime::RuntimeError> for ApiError {
    fn from(e: &sen_runtime::RuntimeError) -> Self {
        ApiError::of_runtime(e)
    }
}

impl ApiError {
    fn of_store(e: &sen_store::StoreError) -> Self {
        use sen_store::StoreError as S;
        if e.is_disk_full() {
            return ApiError::InsufficientStorage(format!(
                "the disk is full; nothing of this request was stored: {e}"
            ));
        }
        match e {
            S::Input(m) => ApiError::Invalid(m.clone()),
            S::UnknownIds(_) | S::NotFound(_) | S::UnknownTrack { .. } => {
                ApiError::NotFound(e.to_string())
            }
            S::Closed(m) => ApiError::Unavailable(m.clone()),
            other => ApiError::Internal(other.to_string()),
        }
    }

    fn of_runtime(e: &sen_runtime::RuntimeError) -> Self {
        use sen_runtime::RuntimeError as R;
        match e {
            R::Input(m) => ApiError::Invalid(m.clone()),
            R::Store(s) => ApiError::of_store(s),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full disk is 507 whatever reported it (a failed commit, a released reserve);
    /// a queue's failures map by kind.
    #[test]
    fn store_and_queue_failures_map_by_kind() {
        let full = sen_store::StoreError::DiskFull("no room".into());
        assert_eq!(ApiError::from(full).status().as_u16(), 507);
        let q: QueueError<sen_store::StoreError> = QueueError::Full;
        assert_eq!(ApiError::from(q).status().as_u16(), 429);
        let q: QueueError<sen_store::StoreError> = QueueError::Failed(std::sync::Arc::new(
            sen_store::StoreError::DiskFull("x".into()),
        ));
        assert_eq!(ApiError::from(q).status().as_u16(), 507);
        let q: QueueError<sen_store::StoreError> = QueueError::Stopped("search");
        assert_eq!(ApiError::from(q).code(), "unavailable");
    }
}
