//! Every RPC of `user.v1.UserService`: happy paths and error codes.

use std::time::Duration;

use common::proto::user::v1::{
    CreateUserRequest, DeleteUserRequest, GetUserRequest, ListUsersRequest, UpdateUserRequest,
};
use tonic::Code;

use crate::{
    helpers::{
        Db, POSTGRES_ADDR, TcpProxy, TestApp, TestDatabase, TestQueue, eventually, test_config,
    },
    on_both_databases,
};

on_both_databases!(
    get_user_returns_what_create_user_stored,
    create_user_rejects_each_bad_field_by_name,
    a_taken_id_is_already_exists,
    unknown_ids_are_not_found_on_every_rpc,
    update_replaces_the_fields_and_delete_removes_the_user,
    list_users_pages_through_everyone_in_id_order,
);

async fn get_user_returns_what_create_user_stored(db: Db) {
    // Arrange
    let app = TestApp::spawn(db).await;
    let mut client = app.grpc().await;

    // Act
    let created = client
        .create_user(CreateUserRequest {
            user_id: "u-1001".into(),
            name: "Alice".into(),
            age: 30,
            email: "alice@example.com".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let fetched = client
        .get_user(GetUserRequest {
            user_id: "u-1001".into(),
        })
        .await
        .unwrap()
        .into_inner();

    // Assert: the fields plain clients read (name, age), plus ours.
    assert_eq!((fetched.name.as_str(), fetched.age), ("Alice", 30));
    assert_eq!(fetched.user_id, "u-1001");
    assert_eq!(fetched.email, "alice@example.com");
    assert!(fetched.created_at > 0);
    assert_eq!(fetched, created);
    app.stop().await;
}

async fn create_user_rejects_each_bad_field_by_name(db: Db) {
    let app = TestApp::spawn(db).await;
    let mut client = app.grpc().await;
    let valid = CreateUserRequest {
        user_id: "u-1".into(),
        name: "Alice".into(),
        age: 30,
        email: "alice@example.com".into(),
    };
    let cases = [
        (
            "user_id",
            CreateUserRequest {
                user_id: String::new(),
                ..valid.clone()
            },
        ),
        (
            "user_id",
            CreateUserRequest {
                user_id: "x".repeat(65),
                ..valid.clone()
            },
        ),
        (
            "name",
            CreateUserRequest {
                name: String::new(),
                ..valid.clone()
            },
        ),
        (
            "age",
            CreateUserRequest {
                age: -1,
                ..valid.clone()
            },
        ),
        (
            "age",
            CreateUserRequest {
                age: 151,
                ..valid.clone()
            },
        ),
        (
            "email",
            CreateUserRequest {
                email: "not-an-email".into(),
                ..valid.clone()
            },
        ),
    ];
    for (field, request) in cases {
        let status = client.create_user(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            status.message().contains(field),
            "{field}: {}",
            status.message()
        );
    }
    // Nothing invalid was stored.
    let listed = client
        .list_users(ListUsersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.users.is_empty());
    app.stop().await;
}

async fn a_taken_id_is_already_exists(db: Db) {
    let app = TestApp::spawn(db).await;
    app.create_user("u-7", "Alice", 30).await;

    let status = app
        .grpc()
        .await
        .create_user(CreateUserRequest {
            user_id: "u-7".into(),
            name: "Mallory".into(),
            age: 40,
            email: String::new(),
        })
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    let kept = app.get_user("u-7").await.unwrap();
    assert_eq!(kept.name, "Alice", "the first user is untouched");
    app.stop().await;
}

async fn unknown_ids_are_not_found_on_every_rpc(db: Db) {
    let app = TestApp::spawn(db).await;
    let mut client = app.grpc().await;
    let missing = || "u-missing".to_string();

    let get = client
        .get_user(GetUserRequest { user_id: missing() })
        .await
        .unwrap_err();
    let update = client
        .update_user(UpdateUserRequest {
            user_id: missing(),
            name: "X".into(),
            age: 1,
            email: String::new(),
        })
        .await
        .unwrap_err();
    let delete = client
        .delete_user(DeleteUserRequest { user_id: missing() })
        .await
        .unwrap_err();

    for status in [get, update, delete] {
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        assert!(status.message().contains("u-missing"));
    }
    // The layer counted them under their method and code, described.
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("# HELP grpc_server_requests_total gRPC calls answered"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"grpc_server_requests_total{method="user.v1.UserService/GetUser",code="NOT_FOUND"}"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("grpc_server_duration_seconds_bucket"),
        "{metrics}"
    );
    app.stop().await;
}

async fn update_replaces_the_fields_and_delete_removes_the_user(db: Db) {
    let app = TestApp::spawn(db).await;
    let created = app.create_user("u-9", "Alice", 30).await;
    let mut client = app.grpc().await;

    let updated = client
        .update_user(UpdateUserRequest {
            user_id: "u-9".into(),
            name: "Alice Liddell".into(),
            age: 31,
            email: "al@example.org".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (updated.name.as_str(), updated.age, updated.email.as_str()),
        ("Alice Liddell", 31, "al@example.org")
    );
    assert_eq!(updated.created_at, created.created_at);
    assert!(updated.updated_at >= created.updated_at);
    let invalid = client
        .update_user(UpdateUserRequest {
            user_id: "u-9".into(),
            name: "Alice".into(),
            age: 200,
            email: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);

    client
        .delete_user(DeleteUserRequest {
            user_id: "u-9".into(),
        })
        .await
        .unwrap();
    let gone = client
        .get_user(GetUserRequest {
            user_id: "u-9".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    app.stop().await;
}

async fn list_users_pages_through_everyone_in_id_order(db: Db) {
    let app = TestApp::spawn(db).await;
    // Mixed case and punctuation: both databases must page in byte order.
    let ids = ["b-2", "A-1", "a.3", "c_4", "B-5", "z", "0"];
    for id in ids {
        app.create_user(id, "User", 20).await;
    }
    let mut client = app.grpc().await;

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_users(ListUsersRequest {
                page_size: 3,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.users.len() <= 3);
        seen.extend(page.users.into_iter().map(|u| u.user_id));
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }

    let mut expected: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(seen, expected);
    assert_eq!(pages, 3);
    let bad_token = client
        .list_users(ListUsersRequest {
            page_size: 3,
            page_token: "garbage".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_token.code(), Code::InvalidArgument);
    assert!(bad_token.message().contains("page_token"));
    let negative = client
        .list_users(ListUsersRequest {
            page_size: -1,
            page_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(negative.code(), Code::InvalidArgument);
    app.stop().await;
}

#[tokio::test]
async fn an_oversize_request_is_refused_counted_and_the_server_keeps_serving() {
    // Arrange
    let app = TestApp::spawn_with(Db::Sqlite, |config| config.max_message_bytes = 4096).await;
    let mut client = app.grpc().await;
    let too_large = r#"messages_rejected_total{reason="too_large"}"#;
    let before = series(&app.metrics().await, too_large);

    // Act
    let status = client
        .create_user(CreateUserRequest {
            user_id: "u-big".into(),
            name: "x".repeat(10_000),
            age: 1,
            email: String::new(),
        })
        .await
        .unwrap_err();

    // Assert: refused before decoding (nothing stored), counted, and the
    // next call served.
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains("4096"),
        "names the limit: {status:?}"
    );
    let metrics = app.metrics().await;
    let after = series(&metrics, too_large);
    assert!(after > before, "too_large counted: {before} -> {after}");
    let refused = r#"grpc_server_requests_total{method="user.v1.UserService/CreateUser",code="OUT_OF_RANGE"}"#;
    assert!(series(&metrics, refused) >= 1.0, "{metrics}");
    let missing = client
        .get_user(GetUserRequest {
            user_id: "u-big".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    app.create_user("u-small", "Small", 1).await;
    app.stop().await;
}

#[tokio::test]
async fn bytes_that_are_not_the_requests_protobuf_are_invalid_argument_and_counted() {
    // Arrange: a client in another language sending a broken frame: field 1
    // (user_id) announced 127 bytes long, one byte there.
    let app = TestApp::spawn(Db::Sqlite).await;
    let undecodable = r#"messages_rejected_total{reason="invalid_protobuf"}"#;
    let before = series(&app.metrics().await, undecodable);
    let frame = "\0\0\0\0\x03\x0a\x7fA".to_string();
    let request = http::Request::post(format!("{}/user.v1.UserService/GetUser", app.grpc_url()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(frame))
        .unwrap();
    let http2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<tonic::body::Body>();

    // Act
    let response = http2.request(request).await.unwrap();

    // Assert: the caller's mistake, not the server's, counted and logged;
    // the server serves the next call.
    let status = tonic::Status::from_header_map(response.headers())
        .expect("a trailers-only answer carries the status in its headers");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("failed to decode"), "{status:?}");
    let after = series(&app.metrics().await, undecodable);
    assert!(
        after > before,
        "invalid_protobuf counted: {before} -> {after}"
    );
    app.create_user("u-after", "After", 1).await;
    app.stop().await;
}

/// The value of `series` (`name{labels}` as rendered) in a `/metrics` page; 0 when absent.
fn series(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn the_sqlite_file_and_its_directory_are_created() {
    let db = TestDatabase::create(Db::Sqlite).await;
    let file = db.sqlite_file();
    assert!(!file.parent().unwrap().exists());

    let queue = TestQueue::new();
    let app = TestApp::start(test_config(&db.url, &queue.name), db, queue).await;
    app.wait_until_serving().await;

    assert!(file.is_file(), "{} exists", file.display());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_unavailable_and_service_resumes_after_it() {
    // Arrange: the service reaches PostgreSQL through a proxy we can cut.
    let (app, proxy) = TestApp::spawn_behind_proxy(|config| {
        config.db_acquire_timeout = Duration::from_millis(500);
    })
    .await;
    app.create_user("u-1", "Alice", 30).await;

    // Act: the database goes away.
    proxy.stop().await;

    // Assert: UNAVAILABLE (retryable), never INTERNAL.
    let mut client = app.grpc().await;
    for _ in 0..3 {
        let status = client
            .get_user(GetUserRequest {
                user_id: "u-1".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }

    // And once it is back, calls work again.
    let proxy = TcpProxy::start(proxy.addr, POSTGRES_ADDR).await;
    eventually(
        "the database to answer again",
        Duration::from_secs(30),
        || {
            let mut client = client.clone();
            async move {
                client
                    .get_user(GetUserRequest {
                        user_id: "u-1".into(),
                    })
                    .await
                    .ok()
            }
        },
    )
    .await;
    app.stop().await;
    drop(proxy);
}
