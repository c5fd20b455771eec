//! The JSON-over-HTTP gateway for external clients (the original design's
//! advice for public APIs): the same directory, validation and error mapping as gRPC.
//!
//! | request                                   | success                      |
//! |-------------------------------------------|------------------------------|
//! | `GET /v1/users?page_size=&page_token=`    | 200 `{"users": [...], "next_page_token": ""}` |
//! | `POST /v1/users` `{"user_id","name","age","email"}` | 201 user          |
//! | `GET /v1/users/{id}`                      | 200 user                     |
//! | `PUT /v1/users/{id}` `{"name","age","email"}` | 200 user                 |
//! | `DELETE /v1/users/{id}`                   | 204                          |
//! | `GET /openapi.json`                       | 200 the OpenAPI document of all of the above |
//!
//! A user is `{"user_id","name","age","email","created_at","updated_at"}`
//! (times in Unix ms). Errors are 400/404/405/409/413/415/503/504 with
//! `{"error": {"code": "INVALID_ARGUMENT", "message": "...", "field": "age"}}`.
//!
//! Each handler carries its part of the OpenAPI document
//! (`#[utoipa::path]`): the routes are registered through
//! [`utoipa_axum`], so a route and its documentation are one call and cannot
//! drift apart; [`crate::openapi`] assembles and serves the document, and
//! builds the field schemas from [`crate::domain`]'s limits (its unit tests
//! hold them to the domain's validation).
//!
//! Every body, path or query the gateway cannot read gets a JSON error (never
//! axum's plain-text rejection), a warn log line, and a body that cannot be
//! read is counted in `messages_rejected_total{reason}` with the codec's
//! reasons (`too_large`, `unsupported_content_type`, `invalid_json`).

use std::time::Duration;

use axum::{
    Json, Router,
    extract::{
        DefaultBodyLimit, Path, Query, Request, State,
        rejection::{JsonRejection, PathRejection, QueryRejection},
    },
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use http::StatusCode;
use serde::{Deserialize, Deserializer, Serialize};
use tracing::Instrument;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    directory::UserDirectory,
    domain::User,
    error::{ErrorBody, ErrorDetail, UserError},
    openapi,
};

/// A user as the JSON API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = User)]
pub struct UserJson {
    /// The id.
    #[schema(schema_with = openapi::user_id)]
    pub user_id: String,
    /// Display name.
    #[schema(schema_with = openapi::stored_name)]
    pub name: String,
    /// Age in years.
    #[schema(schema_with = openapi::age)]
    pub age: i32,
    /// Contact address, empty when none.
    #[schema(schema_with = openapi::stored_email)]
    pub email: String,
    /// Unix milliseconds.
    #[schema(schema_with = openapi::unix_millis)]
    pub created_at: i64,
    /// Unix milliseconds.
    #[schema(schema_with = openapi::unix_millis)]
    pub updated_at: i64,
}

impl From<User> for UserJson {
    fn from(user: User) -> Self {
        UserJson {
            user_id: user.id,
            name: user.name,
            age: user.age,
            email: user.email,
            created_at: user.created_at,
            updated_at: user.updated_at,
        }
    }
}

/// Body of `POST /v1/users`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CreateUser)]
pub struct CreateUserJson {
    /// The new id.
    #[schema(schema_with = openapi::user_id)]
    pub user_id: String,
    /// Display name.
    #[schema(schema_with = openapi::name)]
    pub name: String,
    /// Age in years.
    #[serde(deserialize_with = "whole_number")]
    #[schema(schema_with = openapi::age)]
    pub age: i32,
    /// Optional contact address.
    #[serde(default)]
    #[schema(schema_with = openapi::email)]
    pub email: String,
}

/// Body of `PUT /v1/users/{id}`: the fields that replace the stored ones.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = UpdateUser)]
pub struct UpdateUserJson {
    /// Display name.
    #[schema(schema_with = openapi::name)]
    pub name: String,
    /// Age in years.
    #[serde(deserialize_with = "whole_number")]
    #[schema(schema_with = openapi::age)]
    pub age: i32,
    /// Optional contact address; absent: none (it replaces the stored one).
    #[serde(default)]
    #[schema(schema_with = openapi::email)]
    pub email: String,
}

/// Query of `GET /v1/users`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// 0 or absent: the server's default.
    #[serde(default)]
    #[param(schema_with = openapi::page_size)]
    pub page_size: i32,
    /// From the previous page; absent for the first.
    #[serde(default)]
    #[param(schema_with = openapi::page_token)]
    pub page_token: String,
}

/// The path of one user's resource, `/v1/users/{id}`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct UserPath {
    /// The user's id.
    #[param(schema_with = openapi::user_id, required = true)]
    pub id: String,
}

/// A page of users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = UserList)]
pub struct UserListJson {
    /// Users ordered by id.
    pub users: Vec<UserJson>,
    /// Pass as `page_token` for the next page; empty on the last page.
    pub next_page_token: String,
}

/// A JSON number that is a whole `i32`, as JSON Schema's `integer` means
/// it: `30` and `30.0` alike (clients whose numbers are all floating point
/// send the latter); `30.5` or one beyond `i32` is refused.
fn whole_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i32, D::Error> {
    let number = serde_json::Number::deserialize(deserializer)?;
    let whole = match number.as_i64() {
        Some(integer) => i32::try_from(integer).ok(),
        None => number
            .as_f64()
            .filter(|float| {
                float.fract() == 0.0 && (f64::from(i32::MIN)..=f64::from(i32::MAX)).contains(float)
            })
            .map(|float| float as i32),
    };
    whole.ok_or_else(|| {
        serde::de::Error::custom(format!(
            "invalid value: {number}, expected a whole number that fits in 32 bits"
        ))
    })
}

/// The gateway's routes over `directory`; each request is bounded by
/// `request_timeout` and its body by `max_body_bytes`.
pub fn router(
    directory: UserDirectory,
    request_timeout: Duration,
    max_body_bytes: usize,
) -> Router {
    let (routes, _document) = routes(utoipa::openapi::OpenApi::default()).split_for_parts();
    routes
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(directory)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn_with_state(request_timeout, bounded))
}

/// Every route of the API, each registered together with its operation in
/// `document` (the one place a route can be added).
pub(crate) fn routes(document: utoipa::openapi::OpenApi) -> OpenApiRouter<UserDirectory> {
    OpenApiRouter::with_openapi(document)
        .routes(routes!(list_users, create_user))
        .routes(routes!(get_user, update_user, delete_user))
        .routes(routes!(openapi::serve_document))
}

/// `GET /v1/users/{id}`.
#[utoipa::path(
    get,
    path = "/v1/users/{id}",
    tag = "users",
    operation_id = "getUser",
    summary = "One user",
    params(UserPath),
    responses(
        (status = 200, description = "The user", body = UserJson),
        (status = 400, description = "INVALID_ARGUMENT: the id is malformed (`field`: `user_id`)", body = ErrorBody),
        (status = 404, description = "NOT_FOUND: no user has this id", body = ErrorBody),
        (status = 500, description = INTERNAL, body = ErrorBody),
        (status = 503, description = UNAVAILABLE, body = ErrorBody),
        (status = 504, description = DEADLINE_EXCEEDED, body = ErrorBody),
    ),
)]
async fn get_user(
    State(directory): State<UserDirectory>,
    path: Result<Path<UserPath>, PathRejection>,
) -> Result<Json<UserJson>, Response> {
    let Path(path) = path.map_err(rejected_path)?;
    Ok(Json(
        directory
            .get(&path.id)
            .await
            .map_err(IntoResponse::into_response)?
            .into(),
    ))
}

/// `POST /v1/users`.
#[utoipa::path(
    post,
    path = "/v1/users",
    tag = "users",
    operation_id = "createUser",
    summary = "Create a user",
    request_body(content = CreateUserJson, content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = UserJson,
            headers(("Location" = String, description = "`/v1/users/{id}` of the new user"))),
        (status = 400, description = BAD_BODY, body = ErrorBody),
        (status = 409, description = "ALREADY_EXISTS: a user with this id exists", body = ErrorBody),
        (status = 413, description = TOO_LARGE, body = ErrorBody),
        (status = 415, description = NOT_JSON, body = ErrorBody),
        (status = 500, description = INTERNAL, body = ErrorBody),
        (status = 503, description = UNAVAILABLE, body = ErrorBody),
        (status = 504, description = DEADLINE_EXCEEDED, body = ErrorBody),
    ),
)]
async fn create_user(
    State(directory): State<UserDirectory>,
    body: Result<Json<CreateUserJson>, JsonRejection>,
) -> Result<Response, Response> {
    let Json(body) = body.map_err(rejected_body)?;
    let user = directory
        .create(&body.user_id, &body.name, body.age, &body.email)
        .await
        .map_err(IntoResponse::into_response)?;
    let location = format!("/v1/users/{}", user.id);
    Ok((
        StatusCode::CREATED,
        [(http::header::LOCATION, location)],
        Json(UserJson::from(user)),
    )
        .into_response())
}

/// `PUT /v1/users/{id}`.
#[utoipa::path(
    put,
    path = "/v1/users/{id}",
    tag = "users",
    operation_id = "updateUser",
    summary = "Replace a user's name, age and email",
    params(UserPath),
    request_body(content = UpdateUserJson, content_type = "application/json"),
    responses(
        (status = 200, description = "The updated user", body = UserJson),
        (status = 400, description = BAD_BODY, body = ErrorBody),
        (status = 404, description = "NOT_FOUND: no user has this id", body = ErrorBody),
        (status = 413, description = TOO_LARGE, body = ErrorBody),
        (status = 415, description = NOT_JSON, body = ErrorBody),
        (status = 500, description = INTERNAL, body = ErrorBody),
        (status = 503, description = UNAVAILABLE, body = ErrorBody),
        (status = 504, description = DEADLINE_EXCEEDED, body = ErrorBody),
    ),
)]
async fn update_user(
    State(directory): State<UserDirectory>,
    path: Result<Path<UserPath>, PathRejection>,
    body: Result<Json<UpdateUserJson>, JsonRejection>,
) -> Result<Json<UserJson>, Response> {
    let Path(path) = path.map_err(rejected_path)?;
    let Json(body) = body.map_err(rejected_body)?;
    let user = directory
        .update(&path.id, &body.name, body.age, &body.email)
        .await
        .map_err(IntoResponse::into_response)?;
    Ok(Json(user.into()))
}

/// `DELETE /v1/users/{id}`.
#[utoipa::path(
    delete,
    path = "/v1/users/{id}",
    tag = "users",
    operation_id = "deleteUser",
    summary = "Delete a user",
    params(UserPath),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "INVALID_ARGUMENT: the id is malformed (`field`: `user_id`)", body = ErrorBody),
        (status = 404, description = "NOT_FOUND: no user has this id", body = ErrorBody),
        (status = 500, description = INTERNAL, body = ErrorBody),
        (status = 503, description = UNAVAILABLE, body = ErrorBody),
        (status = 504, description = DEADLINE_EXCEEDED, body = ErrorBody),
    ),
)]
async fn delete_user(
    State(directory): State<UserDirectory>,
    path: Result<Path<UserPath>, PathRejection>,
) -> Result<StatusCode, Response> {
    let Path(path) = path.map_err(rejected_path)?;
    directory
        .delete(&path.id)
        .await
        .map_err(IntoResponse::into_response)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/users`.
#[utoipa::path(
    get,
    path = "/v1/users",
    tag = "users",
    operation_id = "listUsers",
    summary = "A page of users, ordered by id",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of users", body = UserListJson),
        (status = 400, description = "INVALID_ARGUMENT: a negative or non-integer `page_size`, a `page_token` this service did not return, or an unknown query parameter", body = ErrorBody),
        (status = 500, description = INTERNAL, body = ErrorBody),
        (status = 503, description = UNAVAILABLE, body = ErrorBody),
        (status = 504, description = DEADLINE_EXCEEDED, body = ErrorBody),
    ),
)]
async fn list_users(
    State(directory): State<UserDirectory>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<UserListJson>, Response> {
    let Query(query) = query.map_err(|rejection| {
        rejected_request(
            "query",
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            rejection.body_text(),
        )
    })?;
    let page = directory
        .list(query.page_size, &query.page_token)
        .await
        .map_err(IntoResponse::into_response)?;
    Ok(Json(UserListJson {
        users: page.users.into_iter().map(Into::into).collect(),
        next_page_token: page.next_page_token,
    }))
}

// The response descriptions several operations share.
const BAD_BODY: &str = "INVALID_ARGUMENT: the body is not JSON, not this object (a missing, mistyped or \
unknown field), or a field breaks a rule (`field` names it)";
const TOO_LARGE: &str = "OUT_OF_RANGE: the body is larger than the server's `max_message_bytes`";
const NOT_JSON: &str = "INVALID_ARGUMENT: the `Content-Type` is not `application/json`";
const INTERNAL: &str = "INTERNAL: a fault of the service (never the caller's mistake)";
const UNAVAILABLE: &str =
    "UNAVAILABLE: the database cannot be reached or is not ready yet; retry later";
const DEADLINE_EXCEEDED: &str =
    "DEADLINE_EXCEEDED: the request took longer than the server's `request_timeout`";

async fn no_route(request: Request) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        format!("no route for {} {}", request.method(), request.uri().path()),
    )
}

/// A known path with a method it does not serve: 405 (axum adds `Allow`).
async fn method_not_allowed(request: Request) -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "UNIMPLEMENTED",
        format!(
            "{} is not served on {}",
            request.method(),
            request.uri().path()
        ),
    )
}

/// A body that is not the expected JSON: 400 (413 `OUT_OF_RANGE` when too
/// large, as gRPC says it; 415 when not `application/json`), counted by
/// reason.
fn rejected_body(rejection: JsonRejection) -> Response {
    let (status, code, reason) = match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            (StatusCode::PAYLOAD_TOO_LARGE, "OUT_OF_RANGE", "too_large")
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "INVALID_ARGUMENT",
            "unsupported_content_type",
        ),
        _ => (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", "invalid_json"),
    };
    metrics::counter!(common::metrics::MESSAGES_REJECTED, "reason" => reason).increment(1);
    rejected_request("body", status, code, rejection.body_text())
}

/// A path the route matched but whose id cannot be read (a percent-encoded
/// byte that is not UTF-8): 400, as a malformed id. (axum's other path
/// rejections are a route that does not fit its handler: our fault.)
fn rejected_path(rejection: PathRejection) -> Response {
    if rejection.status().is_server_error() {
        return UserError::Internal(format!("path extraction: {}", rejection.body_text()))
            .into_response();
    }
    rejected_request(
        "path",
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
        rejection.body_text(),
    )
}

/// The JSON error for a request axum could not read, logged.
fn rejected_request(part: &str, status: StatusCode, code: &str, reason: String) -> Response {
    tracing::warn!(status = status.as_u16(), part, reason = %reason, "rejected request");
    error_response(status, code, format!("invalid {part}: {reason}"))
}

fn error_response(status: StatusCode, code: &str, message: String) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code: code.to_string(),
            message,
            field: None,
        },
    };
    (status, Json(body)).into_response()
}

/// Every request: a span that continues the caller's `traceparent`, and
/// the server's deadline (504 when it runs out).
async fn bounded(State(timeout): State<Duration>, request: Request, next: Next) -> Response {
    let span = tracing::info_span!(
        "http request",
        http.method = %request.method(),
        http.path = %request.uri().path(),
        otel.kind = "server"
    );
    let parent = common::propagation::extract_grpc(&tonic::metadata::MetadataMap::from_headers(
        request.headers().clone(),
    ));
    common::propagation::set_parent(&span, parent);
    match tokio::time::timeout(timeout, next.run(request).instrument(span)).await {
        Ok(response) => response,
        Err(_elapsed) => UserError::DeadlineExceeded(format!(
            "request took longer than {} ms",
            timeout.as_millis()
        ))
        .into_response(),
    }
}
