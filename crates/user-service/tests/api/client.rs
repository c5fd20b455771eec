//! The client library against the real server: mapping, deadline, retries
//! and the circuit breaker.

use std::time::Duration;

use common::{
    circuit_breaker::{BreakerConfig, BreakerState},
    proto::user::v1::{CreateUserRequest, UpdateUserRequest},
    retry::RetryPolicy,
};
use user_client::{ClientConfig, ClientError, UserClient};

use crate::helpers::{Db, TestApp, TestDatabase, TestQueue, eventually, free_port, test_config};

fn client_for(
    url: String,
    timeout: Duration,
    retry: RetryPolicy,
    breaker: BreakerConfig,
) -> UserClient {
    UserClient::connect_lazy(ClientConfig {
        url,
        timeout,
        retry,
        breaker,
        ..ClientConfig::default()
    })
    .expect("a valid url")
}

/// Patient retries: many attempts, short sleeps; the deadline decides.
fn patient() -> RetryPolicy {
    RetryPolicy {
        base_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(300),
        max_attempts: u32::MAX,
        max_elapsed: None,
    }
}

fn no_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 1,
        ..RetryPolicy::rpc()
    }
}

/// A breaker that never opens in these tests.
fn lenient() -> BreakerConfig {
    BreakerConfig {
        failure_threshold: 10_000,
        ..BreakerConfig::default()
    }
}

fn create(id: &str) -> CreateUserRequest {
    CreateUserRequest {
        user_id: id.into(),
        name: "Alice".into(),
        age: 30,
        email: "alice@example.com".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_works_and_errors_map_to_their_variants() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let client = UserClient::connect_lazy(ClientConfig {
        url: app.grpc_url(),
        ..ClientConfig::default()
    })
    .unwrap();

    let created = client.create_user(create("u-1")).await.unwrap();
    assert_eq!(created.name, "Alice");
    assert_eq!(client.get_user("u-1").await.unwrap(), created);
    let updated = client
        .update_user(UpdateUserRequest {
            user_id: "u-1".into(),
            name: "Alice B.".into(),
            age: 31,
            email: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(updated.age, 31);
    client.create_user(create("u-2")).await.unwrap();
    let page = client.list_users(1, "").await.unwrap();
    assert_eq!(page.users.len(), 1);
    let rest = client.list_users(10, &page.next_page_token).await.unwrap();
    assert_eq!(rest.users[0].user_id, "u-2");
    client.delete_user("u-2").await.unwrap();

    assert!(matches!(
        client.get_user("u-2").await,
        Err(ClientError::NotFound(_))
    ));
    assert!(matches!(
        client.delete_user("u-2").await,
        Err(ClientError::NotFound(_))
    ));
    assert!(matches!(
        client.create_user(create("u-1")).await,
        Err(ClientError::AlreadyExists(_))
    ));
    let invalid = client.get_user("").await.unwrap_err();
    assert!(
        matches!(&invalid, ClientError::InvalidArgument(m) if m.contains("user_id")),
        "{invalid}"
    );
    assert!(invalid.is_permanent());
    assert_eq!(
        client.breaker().state(),
        BreakerState::Closed,
        "answers are not outages"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_comes_up_within_the_deadline_is_reached() {
    // Arrange: a user in a database, and a port where nothing listens yet.
    let app = TestApp::spawn(Db::Sqlite).await;
    app.create_user("u-1001", "Alice", 30).await;
    let (db, queue) = app.stop().await;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let down = client_for(
        url.clone(),
        Duration::from_millis(500),
        no_retry(),
        lenient(),
    );
    assert!(
        matches!(
            down.get_user("u-1001").await,
            Err(ClientError::Unavailable(_))
        ),
        "the server is down"
    );

    // Act: the call starts while the server is down...
    let client = client_for(url, Duration::from_secs(20), patient(), lenient());
    let call = tokio::spawn(async move { client.get_user("u-1001").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!call.is_finished(), "the client keeps retrying");
    // ...and the server comes up on that port.
    let mut config = test_config(&db.url, &queue.name);
    config.grpc_addr = format!("127.0.0.1:{port}").parse().unwrap();
    let app = TestApp::start(config, db, queue).await;

    // Assert
    let user = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the call ends within its deadline")
        .unwrap()
        .expect("the call succeeds once the server is up");
    assert_eq!(user.name, "Alice");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_bounds_every_retry() {
    // Nothing listens: every attempt is UNAVAILABLE and retried, until the
    // overall deadline ends the call.
    let port = free_port();
    let client = client_for(
        format!("http://127.0.0.1:{port}"),
        Duration::from_millis(800),
        patient(),
        lenient(),
    );

    let error = tokio::time::timeout(Duration::from_secs(20), client.get_user("u-1"))
        .await
        .expect("the client gives up by itself")
        .unwrap_err();

    assert!(
        matches!(&error, ClientError::DeadlineExceeded(m) if m.contains("attempt")),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_server_is_deadline_exceeded_for_the_caller() {
    let app = TestApp::spawn(Db::Postgres).await;
    app.create_user("u-1", "Alice", 30).await;
    let lock = app.db.lock_users().await;
    let client = client_for(
        app.grpc_url(),
        Duration::from_millis(500),
        patient(),
        lenient(),
    );

    let error = client.get_user("u-1").await.unwrap_err();

    assert!(matches!(error, ClientError::DeadlineExceeded(_)), "{error}");
    lock.release().await;
    assert_eq!(client.get_user("u-1").await.unwrap().name, "Alice");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_fails_fast_and_a_half_open_probe_closes_it() {
    // Arrange: nothing listens on the port yet.
    let db = TestDatabase::create(Db::Sqlite).await;
    let queue = TestQueue::new();
    let port = free_port();
    let breaker = BreakerConfig {
        failure_threshold: 3,
        window: Duration::from_secs(30),
        open_duration: Duration::from_secs(1),
        half_open_probes: 1,
        half_open_successes: 1,
    };
    let client = client_for(
        format!("http://127.0.0.1:{port}"),
        Duration::from_secs(2),
        no_retry(),
        breaker,
    );

    // Act: three outages open it.
    for _ in 0..3 {
        let error = client.get_user("u-1").await.unwrap_err();
        assert!(matches!(error, ClientError::Unavailable(_)), "{error}");
    }
    assert_eq!(client.breaker().state(), BreakerState::Open);

    // Assert: while open it fails fast, without calling.
    let error = client.get_user("u-1").await.unwrap_err();
    assert!(matches!(error, ClientError::BreakerOpen(_)), "{error}");

    // The server comes up.
    let mut config = test_config(&db.url, &queue.name);
    config.grpc_addr = format!("127.0.0.1:{port}").parse().unwrap();
    let app = TestApp::start(config, db, queue).await;
    app.wait_until_serving().await;
    app.create_user("u-1", "Alice", 30).await;

    // After the open period one probe goes through and closes it.
    let breaker = client.breaker();
    eventually(
        "the breaker to go half-open",
        Duration::from_secs(10),
        || {
            let breaker = breaker.clone();
            async move { (breaker.state() != BreakerState::Open).then_some(()) }
        },
    )
    .await;
    assert_eq!(client.get_user("u-1").await.unwrap().name, "Alice");
    assert_eq!(breaker.state(), BreakerState::Closed);

    // Answers that are not outages do not open it.
    for _ in 0..5 {
        assert!(matches!(
            client.get_user("u-404").await,
            Err(ClientError::NotFound(_))
        ));
    }
    assert_eq!(breaker.state(), BreakerState::Closed);
    app.stop().await;
}
