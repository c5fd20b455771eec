//! The JSON API against its own OpenAPI document.
//!
//! `GET /openapi.json` serves the document the code generates (over TLS when
//! the API is), and schemathesis (PyPI), run against the real service,
//! generates requests from it, valid and invalid, and checks every
//! response: no 5xx, each status, content type, header and body as
//! documented, valid requests accepted and invalid ones refused, unknown
//! methods answered 405, what was created readable and what was deleted
//! gone.
//!
//! schemathesis comes from `SCHEMATHESIS_BIN` (scripts/test.sh installs the
//! pinned version into a virtualenv outside the clone and sets it), else
//! `st` or `schemathesis` on `PATH`; without it the test fails and says how
//! to get it.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use serde_json::Value;
use testkit::{AmqpFixture, amqp_url};

use crate::{
    helpers::{Db, TestApp},
    on_both_databases,
    pki::Pki,
};

/// The schemathesis release the CLI flags below are written for; the one
/// scripts/lib.sh (`ensure_schemathesis`) installs.
const SCHEMATHESIS_VERSION: &str = "4.32.5";

/// What schemathesis checks: no 5xx; status, content type, headers and body
/// as documented; schema-valid requests accepted and schema-invalid ones
/// refused; undocumented methods 405; a created user readable, a deleted
/// one gone. (Not the auth checks: the API has no authentication.)
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
response_schema_conformance,response_headers_conformance,positive_data_acceptance,\
negative_data_rejection,unsupported_method,ensure_resource_availability,use_after_free";

/// Test cases per operation and phase: enough to reach every documented
/// status, small enough for the run to take well under a minute.
const MAX_EXAMPLES: &str = "60";

/// Fixed, so a failure can be replayed (`st run ... --seed 20260`).
const SEED: &str = "20260";

on_both_databases!(schemathesis_finds_nothing_off_the_document);

async fn schemathesis_finds_nothing_off_the_document(db: Db) {
    let schemathesis = schemathesis();
    let app = TestApp::spawn(db).await;
    let operations = documented_operations(&app).await;
    let workdir = tempfile::tempdir().unwrap();

    let mut command = tokio::process::Command::new(&schemathesis);
    command
        .args(["run", &app.http_url("/openapi.json")])
        .args(["--checks", CHECKS])
        .args(["--max-examples", MAX_EXAMPLES, "--seed", SEED])
        // One worker: hypothesis is not safe to drive from several threads
        // (schemathesis then reports internal errors, not findings).
        .args(["--workers", "1", "--request-timeout", "10"])
        // No example database or cache: every run starts from the seed.
        .args(["--generation-database", "none", "--no-color"])
        .current_dir(workdir.path())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(300), command.output())
        .await
        .expect("schemathesis finishes within 5 minutes")
        .expect("schemathesis starts");
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    assert!(
        output.status.success(),
        "schemathesis found problems ({}):\n{report}",
        output.status
    );
    // It really tested every documented operation...
    assert!(
        report.contains(&format!("Tested: {operations}")),
        "not every one of the {operations} operations was tested:\n{report}"
    );
    // ...and its valid requests got through: each committed change left a
    // `data_sync` event (the stateful phase deletes what it created, so the
    // table itself may end up empty).
    app.wait_for_empty_outbox().await;
    let amqp = AmqpFixture::connect(&amqp_url()).await;
    let events = amqp.depth(&app.queue.name).await;
    amqp.connection.close(200, "done".into()).await.ok();
    assert!(events > 0, "schemathesis changed no user:\n{report}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_served_on_the_api_listener() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let response = reqwest::get(app.http_url("/openapi.json")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let served: Value = response.json().await.unwrap();

    let generated = serde_json::to_value(user_service::openapi::document()).unwrap();
    assert_eq!(served, generated);
    assert_eq!(served["openapi"], "3.1.0");
    // Not on the ops port: that is not where the API is.
    let (status, _) = crate::helpers::http_get(app.ops_addr, "/openapi.json").await;
    assert_eq!(status, 404);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_served_over_https_when_the_api_is() {
    let pki = Pki::generate();
    let app = TestApp::spawn_tls(Db::Sqlite, &pki, false, |_| {}).await;
    let https = pki.rustls_client(b"http/1.1", None);
    let (status, body) = crate::pki::https_request(app.http_addr, https, "GET", "/openapi.json")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let served: Value = serde_json::from_str(&body).expect("the body is the JSON document");
    assert!(served["paths"]["/v1/users/{id}"]["get"].is_object());
    app.stop().await;
}

/// How many operations the served document lists, but `GET /openapi.json`
/// (schemathesis leaves out the operation that serves the document it
/// reads; the tests below check that one).
async fn documented_operations(app: &TestApp) -> usize {
    let document: Value = app.get_json(&reqwest::Client::new(), "/openapi.json").await;
    document["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .filter(|(path, _)| *path != "/openapi.json")
        .map(|(_, item)| item.as_object().map_or(0, serde_json::Map::len))
        .sum()
}

/// The schemathesis CLI: `SCHEMATHESIS_BIN`, else `st` or `schemathesis` on
/// `PATH`, and of the pinned version. Panics saying how to install it.
fn schemathesis() -> PathBuf {
    let install = format!(
        "run scripts/test.sh (it installs schemathesis=={SCHEMATHESIS_VERSION} into a \
         virtualenv and sets SCHEMATHESIS_BIN), or `pip install schemathesis=={SCHEMATHESIS_VERSION}` \
         and set SCHEMATHESIS_BIN to its `st`"
    );
    let binary = match std::env::var_os("SCHEMATHESIS_BIN") {
        Some(path) => {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "SCHEMATHESIS_BIN={} does not exist: {install}",
                path.display()
            );
            path
        }
        None => ["st", "schemathesis"]
            .iter()
            .find_map(|name| on_path(name))
            .unwrap_or_else(|| panic!("schemathesis is not installed: {install}")),
    };
    let version = std::process::Command::new(&binary)
        .arg("--version")
        .output()
        .unwrap_or_else(|error| panic!("{} --version: {error}: {install}", binary.display()));
    let version = String::from_utf8_lossy(&version.stdout);
    assert!(
        version.contains(&format!("version {SCHEMATHESIS_VERSION}")),
        "{} is {}, this test is written for schemathesis {SCHEMATHESIS_VERSION}: {install}",
        binary.display(),
        version.trim()
    );
    binary
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}
