//! Reading a request: JSON bodies, whole bodies and query strings, with this API's
//! errors.

use crate::error::ApiError;
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Query, Request};
use axum::http::StatusCode;

/// JSON with this API's errors: syntax 400, unknown or wrong fields 422, missing
/// content type 415, over the body limit 413.
pub struct ApiJson<T>(pub T);

impl<T: serde::de::DeserializeOwned, St: Send + Sync> FromRequest<St> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &St) -> Result<Self, ApiError> {
        use axum::extract::rejection::JsonRejection as J;
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(J::JsonSyntaxError(e)) => Err(ApiError::BadRequest(format!(
                "malformed JSON: {}",
                e.body_text()
            ))),
            Err(J::JsonDataError(e)) => Err(ApiError::Invalid(e.body_text())),
            Err(J::MissingJsonContentType(_)) => Err(ApiError::UnsupportedMediaType(
                "send the body as Content-Type: application/json".into(),
            )),
            Err(J::BytesRejection(e)) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::TooLarge(too_large_msg()))
            }
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}

pub(crate) fn too_large_msg() -> String {
    "the body is larger than --max-body-mib".into()
}

/// The whole body, within the limit (413 past it).
pub(crate) async fn body_bytes(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::TooLarge(too_large_msg()))
}

/// Query parameters as `T` (unknown ones and bad values 422, naming them).
pub(crate) fn query<T: serde::de::DeserializeOwned>(uri: &axum::http::Uri) -> Result<T, ApiError> {
    Query::<T>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::Invalid(format!("query parameters: {}", e.body_text())))
}
