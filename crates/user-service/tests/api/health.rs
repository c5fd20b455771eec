//! grpc.health.v1 around start and shutdown, and graceful shutdown itself.

use std::time::Duration;

use common::proto::user::v1::UpdateUserRequest;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, HealthCheckResponse, health_check_response::ServingStatus,
    health_client::HealthClient,
};

use crate::helpers::{Db, TestApp, TestDatabase, TestQueue, eventually, http_get, test_config};

/// A health request for the overall status ("" service).
fn overall() -> HealthCheckRequest {
    HealthCheckRequest {
        service: String::new(),
    }
}

/// The next status `watch` pushes, which must come within `within`.
async fn next_status(watch: &mut tonic::Streaming<HealthCheckResponse>, within: Duration) -> i32 {
    tokio::time::timeout(within, watch.message())
        .await
        .unwrap_or_else(|_| panic!("a status change within {within:?}"))
        .unwrap()
        .unwrap()
        .status
}

/// Waits (at most 30 s) for the service task to end, cleanly.
async fn wait_stopped(handle: tokio::task::JoinHandle<anyhow::Result<()>>) {
    tokio::time::timeout(Duration::from_secs(30), handle)
        .await
        .expect("stops within 30 s")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_until_the_database_is_ready_and_again_during_shutdown() {
    // Arrange: a database that does not exist yet.
    let db = TestDatabase::named(Db::Postgres);
    let queue = TestQueue::new();
    let mut config = test_config(&db.url, &queue.name);
    config.drain_delay = Duration::from_millis(1500);
    let app = TestApp::start(config, db, queue).await;
    let mut health = app.health().await;
    let mut watch = health.watch(overall()).await.unwrap().into_inner();

    // Assert: not serving, and user calls are UNAVAILABLE meanwhile.
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::NotServing as i32);
    let per_service = health
        .check(HealthCheckRequest {
            service: "user.v1.UserService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(per_service.status, ServingStatus::NotServing as i32);
    let early = app.get_user("u-1").await.unwrap_err();
    assert_eq!(early.code(), Code::Unavailable, "{early:?}");
    let (ready, _) = http_get(app.ops_addr, "/readyz").await;
    assert_eq!(ready, 503);

    // Act: the database appears.
    app.db.create_postgres_database().await;

    // Assert: SERVING, pushed to the watcher.
    let next = next_status(&mut watch, Duration::from_secs(30)).await;
    assert_eq!(next, ServingStatus::Serving as i32);
    assert_eq!(app.health_status().await, ServingStatus::Serving as i32);
    let (ready, _) = http_get(app.ops_addr, "/readyz").await;
    assert_eq!(ready, 200);

    // Act: shutdown.
    app.shutdown.trigger();

    // Assert: NOT_SERVING while the drain delay lets callers move away.
    let last = next_status(&mut watch, Duration::from_secs(10)).await;
    assert_eq!(last, ServingStatus::NotServing as i32);
    let during = health.check(overall()).await.unwrap().into_inner();
    assert_eq!(during.status, ServingStatus::NotServing as i32);
    drop(watch);
    let TestApp { handle, db, .. } = app;
    wait_stopped(handle).await;
    drop(db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_calls_finish_and_refuses_new_ones() {
    // Arrange: a call stuck behind a table lock (PostgreSQL shows it waiting).
    let app = TestApp::spawn(Db::Postgres).await;
    app.create_user("u-1", "Alice", 30).await;
    let lock = app.db.lock_users().await;
    let mut client = app.grpc().await;
    let in_flight = tokio::spawn(async move {
        let mut request = tonic::Request::new(UpdateUserRequest {
            user_id: "u-1".into(),
            name: "Alice Updated".into(),
            age: 31,
            email: String::new(),
        });
        request.set_timeout(Duration::from_secs(30));
        client.update_user(request).await
    });
    eventually(
        "the update to wait for the lock",
        Duration::from_secs(20),
        || async { (app.db.queries_waiting_for_a_lock().await > 0).then_some(()) },
    )
    .await;

    // Act
    app.shutdown.trigger();

    // Assert: new connections are refused once the server stops accepting
    // (probed with health checks, which do not touch the locked table).
    let url = app.grpc_url();
    eventually("new calls to be refused", Duration::from_secs(20), || {
        let url = url.clone();
        async move {
            let Ok(channel) = tonic::transport::Channel::from_shared(url)
                .unwrap()
                .connect()
                .await
            else {
                return Some(());
            };
            HealthClient::new(channel)
                .check(overall())
                .await
                .is_err_and(|status| status.code() == Code::Unavailable)
                .then_some(())
        }
    })
    .await;
    if in_flight.is_finished() {
        panic!("the in-flight call ended early: {:?}", in_flight.await);
    }

    // The lock goes away: the in-flight call completes normally.
    lock.release().await;
    let updated = tokio::time::timeout(Duration::from_secs(20), in_flight)
        .await
        .expect("the in-flight call finishes")
        .unwrap()
        .expect("the in-flight call succeeds")
        .into_inner();
    assert_eq!(updated.name, "Alice Updated");
    wait_stopped(app.handle).await;
}
