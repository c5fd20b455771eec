//! `GetUser`'s read cache: it serves, and it never serves a user older than a
//! committed change — through this replica or another one.

use std::{sync::Arc, time::Duration};

use common::proto::user::v1::{
    DeleteUserRequest, GetUserRequest, UpdateUserRequest, user_service_client::UserServiceClient,
};
use tonic::{Code, transport::Channel};
use user_service::read_cache::ReadCache;

use crate::{
    helpers::{Db, TestApp, eventually},
    on_both_databases,
};

on_both_databases!(a_change_through_this_replica_is_read_back_at_once);

async fn get_name(client: &mut UserServiceClient<Channel>, id: &str) -> Result<String, Code> {
    client
        .get_user(GetUserRequest { user_id: id.into() })
        .await
        .map(|response| response.into_inner().name)
        .map_err(|status| status.code())
}

async fn rename(client: &mut UserServiceClient<Channel>, id: &str, name: &str) {
    client
        .update_user(UpdateUserRequest {
            user_id: id.into(),
            name: name.into(),
            age: 30,
            email: String::new(),
        })
        .await
        .expect("update user");
}

/// Reads `u-1` through `client` until `cache` holds it: the cache fills
/// once its change feed listens; until then reads go to the database.
async fn read_until_cached(
    what: &str,
    client: &UserServiceClient<Channel>,
    cache: &Arc<ReadCache>,
) {
    eventually(what, Duration::from_secs(10), || {
        let mut client = client.clone();
        let cache = cache.clone();
        async move {
            let _ = get_name(&mut client, "u-1").await;
            (cache.len() == 1).then_some(())
        }
    })
    .await;
}

async fn a_change_through_this_replica_is_read_back_at_once(db: Db) {
    // Arrange: a long TTL, so only invalidation can explain a fresh read.
    let app = TestApp::spawn_with(db, |config| {
        config.read_cache_ttl = Duration::from_secs(600);
    })
    .await;
    app.create_user("u-1", "Alice", 30).await;
    let mut client = app.grpc().await;
    eventually("u-1 to be cached", Duration::from_secs(10), || {
        let mut client = client.clone();
        let cache = app.cache.clone();
        async move {
            (get_name(&mut client, "u-1").await.as_deref() == Ok("Alice") && cache.len() == 1)
                .then_some(())
        }
    })
    .await;

    // Act + Assert: each change is seen by the very next read.
    rename(&mut client, "u-1", "Alice Liddell").await;
    assert_eq!(
        get_name(&mut client, "u-1").await.as_deref(),
        Ok("Alice Liddell")
    );
    client
        .delete_user(DeleteUserRequest {
            user_id: "u-1".into(),
        })
        .await
        .unwrap();
    assert_eq!(get_name(&mut client, "u-1").await, Err(Code::NotFound));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_change_feed_stops_the_cache_from_serving() {
    // Arrange: PostgreSQL behind a proxy we can cut; u-1 read once (cached).
    let (app, proxy) = TestApp::spawn_behind_proxy(|config| {
        config.db_acquire_timeout = Duration::from_millis(500);
        config.read_cache_ttl = Duration::from_secs(600);
    })
    .await;
    app.create_user("u-1", "Alice", 30).await;
    app.create_user("u-2", "Bob", 40).await;
    let mut client = app.grpc().await;
    read_until_cached("u-1 to be cached", &client, &app.cache).await;

    // Act: the database goes away.
    proxy.stop().await;

    // Assert: the cache stops serving once its feed is lost (a change could
    // go unheard), so both users are UNAVAILABLE, never stale and never INTERNAL.
    // (u-1's own creation notice may arrive after it was cached and evict it
    // early; what matters is the suspension.)
    eventually(
        "the lost feed to suspend the cache",
        Duration::from_secs(10),
        || async { app.cache.is_suspended().then_some(()) },
    )
    .await;
    assert_eq!(get_name(&mut client, "u-1").await, Err(Code::Unavailable));
    assert_eq!(get_name(&mut client, "u-2").await, Err(Code::Unavailable));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_another_replica_reaches_this_replicas_cache() {
    // Arrange: two replicas on one PostgreSQL, TTL far beyond the test.
    let a = TestApp::spawn_with(Db::Postgres, |config| {
        config.read_cache_ttl = Duration::from_secs(600);
    })
    .await;
    let b = a
        .replica(|config| config.read_cache_ttl = Duration::from_secs(600))
        .await;
    let b_cache = b.cache.clone();
    let mut b_client = b.grpc().await;
    a.create_user("u-1", "Alice", 30).await;
    // B reads (and caches) u-1 once its feed listens.
    read_until_cached("replica b to cache u-1", &b_client, &b_cache).await;

    // Act: A renames the user.
    let mut a_client = a.grpc().await;
    rename(&mut a_client, "u-1", "Alice Liddell").await;

    // Assert: B serves the new name soon (the notification), not in 600 s.
    eventually(
        "replica b to see the rename",
        Duration::from_secs(5),
        || {
            let mut client = b_client.clone();
            async move {
                (get_name(&mut client, "u-1").await.as_deref() == Ok("Alice Liddell")).then_some(())
            }
        },
    )
    .await;
    assert_eq!(
        get_name(&mut b_client, "u-1").await.as_deref(),
        Ok("Alice Liddell")
    );

    b.stop().await;
    a.stop().await;
}
