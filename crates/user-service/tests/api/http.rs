//! The JSON gateway end to end: the same directory over HTTP.

use serde_json::{Value, json};
use user_service::http::{UserJson, UserListJson};

use crate::{
    helpers::{Db, TestApp},
    on_both_databases,
};

on_both_databases!(json_crud_end_to_end, json_errors_have_statuses_and_bodies);

async fn json_crud_end_to_end(db: Db) {
    let app = TestApp::spawn(db).await;
    let http = reqwest::Client::new();

    // Create
    let response = http
        .post(app.http_url("/v1/users"))
        .json(
            &json!({"user_id": "u-1001", "name": "Alice", "age": 30, "email": "alice@example.com"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["location"], "/v1/users/u-1001");
    let created: UserJson = response.json().await.unwrap();
    assert_eq!((created.name.as_str(), created.age), ("Alice", 30));

    // Read (the same user gRPC sees)
    let fetched: UserJson = app.get_json(&http, "/v1/users/u-1001").await;
    assert_eq!(fetched, created);

    // Update
    let response = http
        .put(app.http_url("/v1/users/u-1001"))
        .json(&json!({"name": "Alice L.", "age": 31}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let updated: UserJson = response.json().await.unwrap();
    assert_eq!(
        (updated.name.as_str(), updated.age, updated.email.as_str()),
        ("Alice L.", 31, "")
    );

    // List
    http.post(app.http_url("/v1/users"))
        .json(&json!({"user_id": "u-1002", "name": "Bob", "age": 40}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let page: UserListJson = app.get_json(&http, "/v1/users?page_size=1").await;
    assert_eq!(page.users.len(), 1);
    assert_eq!(page.users[0].user_id, "u-1001");
    let rest: UserListJson = app
        .get_json(
            &http,
            &format!("/v1/users?page_size=1&page_token={}", page.next_page_token),
        )
        .await;
    assert_eq!(rest.users[0].user_id, "u-1002");
    assert_eq!(rest.next_page_token, "");

    // Delete
    let response = http
        .delete(app.http_url("/v1/users/u-1001"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let response = http
        .get(app.http_url("/v1/users/u-1001"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    app.stop().await;
}

async fn json_errors_have_statuses_and_bodies(db: Db) {
    let app = TestApp::spawn(db).await;
    let http = reqwest::Client::new();
    app.create_user("u-1", "Alice", 30).await;

    let cases: Vec<(reqwest::RequestBuilder, u16, &str, Option<&str>)> = vec![
        (
            http.post(app.http_url("/v1/users"))
                .json(&json!({"user_id": "u-2", "name": "Bob", "age": 200})),
            400,
            "INVALID_ARGUMENT",
            Some("age"),
        ),
        (
            http.post(app.http_url("/v1/users"))
                .json(&json!({"user_id": "u 2", "name": "Bob", "age": 20})),
            400,
            "INVALID_ARGUMENT",
            Some("user_id"),
        ),
        (
            http.post(app.http_url("/v1/users"))
                .header("content-type", "application/json")
                .body("{not json"),
            400,
            "INVALID_ARGUMENT",
            None,
        ),
        (
            http.post(app.http_url("/v1/users"))
                .json(&json!({"user_id": "u-2", "name": "Bob", "age": "old"})),
            400,
            "INVALID_ARGUMENT",
            None,
        ),
        (
            http.post(app.http_url("/v1/users"))
                .json(&json!({"user_id": "u-1", "name": "Alice again", "age": 20})),
            409,
            "ALREADY_EXISTS",
            None,
        ),
        (
            http.get(app.http_url("/v1/users/u-404")),
            404,
            "NOT_FOUND",
            None,
        ),
        (
            http.put(app.http_url("/v1/users/u-404"))
                .json(&json!({"name": "Nobody", "age": 1})),
            404,
            "NOT_FOUND",
            None,
        ),
        (
            http.delete(app.http_url("/v1/users/u-404")),
            404,
            "NOT_FOUND",
            None,
        ),
        (
            http.get(app.http_url("/v1/users?page_size=-5")),
            400,
            "INVALID_ARGUMENT",
            Some("page_size"),
        ),
        (
            http.get(app.http_url("/v1/users?page_size=ten")),
            400,
            "INVALID_ARGUMENT",
            None,
        ),
        (
            http.get(app.http_url("/v2/nothing")),
            404,
            "NOT_FOUND",
            None,
        ),
        // Not JSON by its content type: 415.
        (
            http.post(app.http_url("/v1/users"))
                .header("content-type", "text/plain")
                .body(r#"{"user_id": "u-2", "name": "Bob", "age": 20}"#),
            415,
            "INVALID_ARGUMENT",
            None,
        ),
        // A known path, a method it does not serve: 405 (with `Allow`).
        (
            http.patch(app.http_url("/v1/users/u-1")),
            405,
            "UNIMPLEMENTED",
            None,
        ),
        // An id that is not UTF-8 once percent-decoded: 400, as JSON.
        (
            http.get(app.http_url("/v1/users/%FF")),
            400,
            "INVALID_ARGUMENT",
            None,
        ),
        // A number that is not a whole one.
        (
            http.post(app.http_url("/v1/users"))
                .json(&json!({"user_id": "u-2", "name": "Bob", "age": 20.5})),
            400,
            "INVALID_ARGUMENT",
            None,
        ),
    ];
    for (request, status, code, field) in cases {
        let response = request.send().await.unwrap();
        let url = response.url().to_string();
        assert_eq!(response.status().as_u16(), status, "{url}");
        assert_eq!(
            response.headers()["content-type"],
            "application/json",
            "{url}"
        );
        if status == 405 {
            assert_eq!(response.headers()["allow"], "GET,HEAD,PUT,DELETE", "{url}");
        }
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{url}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        if let Some(field) = field {
            assert_eq!(body["error"]["field"], field, "{url}: {body}");
        }
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_requests_are_bounded_in_size_and_time() {
    let app = TestApp::spawn_with(Db::Sqlite, |config| {
        config.max_message_bytes = 4096;
        config.request_timeout = std::time::Duration::from_millis(400);
    })
    .await;
    let http = reqwest::Client::new();
    app.create_user("u-1", "Alice", 30).await;

    // Too large: 413 with the JSON error body, counted, nothing stored.
    let too_large = r#"messages_rejected_total{reason="too_large"}"#;
    let before = series(&app.metrics().await, too_large);
    let response = http
        .post(app.http_url("/v1/users"))
        .json(&json!({"user_id": "u-big", "name": "x".repeat(10_000), "age": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    // The gRPC code of the same refusal.
    assert_eq!(body["error"]["code"], "OUT_OF_RANGE");
    // Other tests of this binary may count their own at the same time: at
    // least this one.
    let after = series(&app.metrics().await, too_large);
    assert!(
        after > before,
        "{too_large}: {before} before, {after} after"
    );
    let response = http
        .get(app.http_url("/v1/users/u-big"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    // A whole number written as a float is a whole number (JSON Schema's
    // `integer`, which the OpenAPI document promises).
    let response = http
        .post(app.http_url("/v1/users"))
        .json(&json!({"user_id": "u-float", "name": "Flo", "age": 30.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.json::<UserJson>().await.unwrap().age, 30);

    // Too slow (the table is locked by another client): 504.
    let lock = app.db.lock_users().await;
    let response = http
        .put(app.http_url("/v1/users/u-1"))
        .json(&json!({"name": "Late", "age": 31}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "DEADLINE_EXCEEDED");
    lock.release().await;
    app.stop().await;
}

/// The value of one series in the Prometheus text (0 when absent).
fn series(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}
