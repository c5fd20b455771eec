//! `GetUser` on a cache miss: with the read cache off every call reads the
//! database (on SQLite through the service's own read-only connections, not
//! the write pool), and a read sees every change committed before it —
//! while other reads keep those connections busy and their pages cached.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU32, Ordering},
};

use common::proto::user::v1::{
    CreateUserRequest, DeleteUserRequest, GetUserRequest, UpdateUserRequest,
    user_service_client::UserServiceClient,
};
use tonic::{Code, transport::Channel};

use crate::{
    helpers::{Db, TestApp},
    on_both_databases,
};

on_both_databases!(with_the_cache_off_a_read_sees_each_write_that_returned_before_it);

async fn with_the_cache_off_a_read_sees_each_write_that_returned_before_it(db: Db) {
    // Arrange: no read cache, and readers hammering u-1 meanwhile.
    let app = TestApp::spawn_with(db, |config| config.read_cache_capacity = 0).await;
    app.create_user("u-1", "Alice", 30).await;
    let mut client = app.grpc().await;
    let stop = Arc::new(AtomicBool::new(false));
    let background_reads = Arc::new(AtomicU32::new(0));
    let mut readers = Vec::new();
    for _ in 0..4 {
        let (mut client, stop, reads) = (client.clone(), stop.clone(), background_reads.clone());
        readers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                client
                    .get_user(GetUserRequest {
                        user_id: "u-1".into(),
                    })
                    .await
                    .expect("a background read");
                reads.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    // Act and assert: every update is read back by the very next call.
    for n in 0..40 {
        let name = format!("Alice {n}");
        client
            .update_user(UpdateUserRequest {
                user_id: "u-1".into(),
                name: name.clone(),
                age: 30,
                email: String::new(),
            })
            .await
            .expect("update");
        assert_eq!(name_of(&mut client, "u-1").await, Ok(name));
    }
    // A new user is there at once, a deleted one gone at once.
    client
        .create_user(CreateUserRequest {
            user_id: "u-2".into(),
            name: "Bob".into(),
            age: 40,
            email: String::new(),
        })
        .await
        .expect("create");
    assert_eq!(name_of(&mut client, "u-2").await, Ok("Bob".into()));
    client
        .delete_user(DeleteUserRequest {
            user_id: "u-2".into(),
        })
        .await
        .expect("delete");
    assert_eq!(name_of(&mut client, "u-2").await, Err(Code::NotFound));

    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.await.expect("background reads never failed");
    }
    assert!(background_reads.load(Ordering::Relaxed) > 0);
    assert_eq!(app.cache.len(), 0, "nothing was served from a cache");
    app.stop().await;
}

async fn name_of(client: &mut UserServiceClient<Channel>, id: &str) -> Result<String, Code> {
    client
        .get_user(GetUserRequest { user_id: id.into() })
        .await
        .map(|response| response.into_inner().name)
        .map_err(|status| status.code())
}
