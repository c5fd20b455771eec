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
//!
//! A user is `{"user_id","name","age","email","created_at","updated_at"}`
//! (times in Unix ms). Errors are 400/404/409/503/504 with
//! `{"error": {"code": "INVALID_ARGUMENT", "message": "...", "field": "age"}}`.

use std::time::Duration;

use axum::{
    Json, Router,
    extract::{
        DefaultBodyLimit, Path, Query, Request, State,
        rejection::{JsonRejection, QueryRejection},
    },
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::{
    directory::UserDirectory,
    domain::User,
    error::{ErrorBody, ErrorDetail, UserError},
};

/// A user as the JSON API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserJson {
    /// The id.
    pub user_id: String,
    /// Display name.
    pub name: String,
    /// Age in years.
    pub age: i32,
    /// Contact address, empty when none.
    pub email: String,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds.
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
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUserJson {
    /// The new id.
    pub user_id: String,
    /// Display name.
    pub name: String,
    /// Age in years.
    pub age: i32,
    /// Optional contact address.
    #[serde(default)]
    pub email: String,
}

/// Body of `PUT /v1/users/{id}`: the fields that replace the stored ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserJson {
    /// Display name.
    pub name: String,
    /// Age in years.
    pub age: i32,
    /// Optional contact address.
    #[serde(default)]
    pub email: String,
}

/// Query of `GET /v1/users`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// 0 or absent: the server's default.
    #[serde(default)]
    pub page_size: i32,
    /// From the previous page; absent for the first.
    #[serde(default)]
    pub page_token: String,
}

/// A page of users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserListJson {
    /// Users ordered by id.
    pub users: Vec<UserJson>,
    /// Pass as `page_token` for the next page; empty on the last page.
    pub next_page_token: String,
}

/// The gateway's routes over `directory`; each request is bounded by
/// `request_timeout` and its body by `max_body_bytes`.
pub fn router(
    directory: UserDirectory,
    request_timeout: Duration,
    max_body_bytes: usize,
) -> Router {
    Router::new()
        .route("/v1/users", get(list_users).post(create_user))
        .route(
            "/v1/users/{id}",
            get(get_user).put(update_user).delete(delete_user),
        )
        .fallback(no_route)
        .with_state(directory)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn_with_state(request_timeout, bounded))
}

async fn get_user(
    State(directory): State<UserDirectory>,
    Path(id): Path<String>,
) -> Result<Json<UserJson>, UserError> {
    Ok(Json(directory.get(&id).await?.into()))
}

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

async fn update_user(
    State(directory): State<UserDirectory>,
    Path(id): Path<String>,
    body: Result<Json<UpdateUserJson>, JsonRejection>,
) -> Result<Json<UserJson>, Response> {
    let Json(body) = body.map_err(rejected_body)?;
    let user = directory
        .update(&id, &body.name, body.age, &body.email)
        .await
        .map_err(IntoResponse::into_response)?;
    Ok(Json(user.into()))
}

async fn delete_user(
    State(directory): State<UserDirectory>,
    Path(id): Path<String>,
) -> Result<StatusCode, UserError> {
    directory.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_users(
    State(directory): State<UserDirectory>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<UserListJson>, Response> {
    let Query(query) = query.map_err(|rejection| {
        error_response(
            StatusCode::BAD_REQUEST,
            format!("invalid query: {}", rejection.body_text()),
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

async fn no_route(request: Request) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        format!("no route for {} {}", request.method(), request.uri().path()),
    )
}

/// A body that is not the expected JSON: 400 (413 when too large, 415 when
/// not `application/json`), always with a JSON error body.
fn rejected_body(rejection: JsonRejection) -> Response {
    let status = match rejection.status() {
        status @ (StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNSUPPORTED_MEDIA_TYPE) => status,
        _ => StatusCode::BAD_REQUEST,
    };
    tracing::warn!(status = status.as_u16(), reason = %rejection.body_text(), "rejected request body");
    error_response(status, format!("invalid body: {}", rejection.body_text()))
}

fn error_response(status: StatusCode, message: String) -> Response {
    let code = if status == StatusCode::NOT_FOUND {
        "NOT_FOUND"
    } else {
        "INVALID_ARGUMENT"
    };
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
