//! `user-cli` as a user runs it: the real binary against the real service.

use std::process::Output;

use serde_json::Value;

use crate::helpers::{Db, TestApp, free_port};

async fn user_cli(url: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_user-cli"))
        .env("USER_SERVICE_URL", url)
        .args(args)
        .output()
        .await
        .expect("user-cli runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_get_update_list_delete_with_text_and_json_output() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let url = app.grpc_url();

    let created = user_cli(
        &url,
        &[
            "create",
            "u-1001",
            "--name",
            "Alice",
            "--age",
            "30",
            "--email",
            "alice@example.com",
        ],
    )
    .await;
    assert!(created.status.success(), "{created:?}");
    assert!(
        stdout(&created).contains("name:       Alice"),
        "{}",
        stdout(&created)
    );

    let fetched = user_cli(&url, &["get", "u-1001", "--json"]).await;
    assert!(fetched.status.success(), "{fetched:?}");
    let user: Value = serde_json::from_str(&stdout(&fetched)).unwrap();
    assert_eq!(user["name"], "Alice");
    assert_eq!(user["email"], "alice@example.com");

    let updated = user_cli(
        &url,
        &["update", "u-1001", "--name", "Alice L.", "--age", "31"],
    )
    .await;
    assert!(updated.status.success(), "{updated:?}");
    assert!(stdout(&updated).contains("age:        31"));

    user_cli(&url, &["create", "u-1002", "--name", "Bob", "--age", "40"]).await;
    let listed = user_cli(&url, &["list", "--page-size", "1", "--all"]).await;
    assert!(listed.status.success(), "{listed:?}");
    let text = stdout(&listed);
    assert!(text.contains("u-1001") && text.contains("u-1002"), "{text}");
    assert!(text.contains("(2 users)"), "{text}");

    let deleted = user_cli(&url, &["delete", "u-1002", "--json"]).await;
    assert!(deleted.status.success(), "{deleted:?}");
    let body: Value = serde_json::from_str(&stdout(&deleted)).unwrap();
    assert_eq!(body["deleted"], "u-1002");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_have_messages_and_exit_codes() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let url = app.grpc_url();

    let missing = user_cli(&url, &["get", "u-404"]).await;
    assert_eq!(missing.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));

    let invalid = user_cli(&url, &["create", "u-1", "--name", "Alice", "--age", "200"]).await;
    assert_eq!(invalid.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&invalid.stderr).contains("age"));

    let usage = user_cli(&url, &["create", "u-1", "--name", "Alice"]).await;
    assert_eq!(
        usage.status.code(),
        Some(2),
        "missing --age is a usage error"
    );

    let down = format!("http://127.0.0.1:{}", free_port());
    let unreachable = user_cli(&down, &["--timeout", "1s", "get", "u-1"]).await;
    assert_eq!(unreachable.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&unreachable.stderr).into_owned();
    assert!(
        stderr.contains("unavailable") || stderr.contains("deadline"),
        "{stderr}"
    );
    app.stop().await;
}
