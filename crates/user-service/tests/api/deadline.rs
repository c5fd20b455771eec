//! Deadlines: the caller's grpc-timeout, or the server's default, bounds the
//! work on the server, which answers DEADLINE_EXCEEDED.
//!
//! tonic's `Channel` also arms a local timer from the same `grpc-timeout`
//! and reports its own expiry as CANCELLED, racing the server's answer. To
//! see what the server sends on the wire, these tests call through a plain
//! HTTP/2 client (hyper), as a client in another language would.

use std::time::Duration;

use common::proto::user::v1::{UpdateUserRequest, user_service_client::UserServiceClient};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tonic::Code;

use crate::{
    helpers::{Db, TestApp},
    on_both_databases,
};

on_both_databases!(
    a_callers_deadline_shorter_than_the_work_is_deadline_exceeded,
    the_server_default_deadline_bounds_calls_without_one,
);

/// A gRPC client whose only timer is the server's.
fn plain_http2_client(
    app: &TestApp,
) -> UserServiceClient<Client<HttpConnector, tonic::body::Body>> {
    let http2 = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    UserServiceClient::with_origin(http2, app.grpc_url().parse().unwrap())
}

fn update(name: &str) -> UpdateUserRequest {
    UpdateUserRequest {
        user_id: "u-1".into(),
        name: name.into(),
        age: 31,
        email: String::new(),
    }
}

async fn a_callers_deadline_shorter_than_the_work_is_deadline_exceeded(db: Db) {
    // Arrange: another client holds the users table, so the update has to
    // wait (SQLite: up to its 5 s busy timeout; PostgreSQL: until released).
    let app = TestApp::spawn(db).await;
    app.create_user("u-1", "Alice", 30).await;
    let lock = app.db.lock_users().await;

    // Act
    let mut request = tonic::Request::new(update("Too Late"));
    request.set_timeout(Duration::from_millis(300));
    let status = plain_http2_client(&app)
        .update_user(request)
        .await
        .unwrap_err();

    // Assert
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("300 ms"), "{}", status.message());
    lock.release().await;
    let user = app.get_user("u-1").await.unwrap();
    assert_eq!(user.name, "Alice", "the abandoned update did not commit");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"grpc_server_requests_total{method="user.v1.UserService/UpdateUser",code="DEADLINE_EXCEEDED"}"#),
        "{metrics}"
    );
    app.stop().await;
}

async fn the_server_default_deadline_bounds_calls_without_one(db: Db) {
    let app = TestApp::spawn_with(db, |config| {
        config.request_timeout = Duration::from_millis(400);
    })
    .await;
    app.create_user("u-1", "Alice", 30).await;
    let lock = app.db.lock_users().await;

    let status = plain_http2_client(&app)
        .update_user(update("Too Late"))
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("400 ms"), "{}", status.message());
    lock.release().await;
    app.stop().await;
}
