//! TLS on both servers, for real: certificates made at test time, the
//! service on port 0, UserClient, user-cli and plain rustls clients.
//! Server TLS and mutual TLS, the refusals (no CA, no or a foreign client
//! certificate, plaintext), the JSON API over https, and certificate
//! rotation without a restart.

use std::{path::PathBuf, time::Duration};

use common::proto::user::v1::CreateUserRequest;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use user_client::{ClientConfig, ClientError, UserClient};
use user_service::Application;

use crate::{
    helpers::{Db, TestApp, eventually, test_config},
    pki::{
        CA, CLIENT_CERT, CLIENT_KEY, OTHER_CA, OTHER_CLIENT_CERT, OTHER_CLIENT_KEY, Pki,
        SERVER_CERT, SERVER_KEY, served_certificate,
    },
};

/// A UserClient for `app` over https with the given files of `pki`.
fn client(
    app: &TestApp,
    pki: &Pki,
    ca: Option<&str>,
    identity: Option<(&str, &str)>,
) -> UserClient {
    UserClient::connect_lazy(ClientConfig {
        url: format!("https://{}", app.grpc_addr),
        ca: ca.map(|name| pki.path(name)),
        cert: identity.map(|(cert, _)| pki.path(cert)),
        key: identity.map(|(_, key)| pki.path(key)),
        timeout: Duration::from_secs(3),
        ..ClientConfig::default()
    })
    .expect("a client")
}

async fn create(client: &UserClient, id: &str) {
    client
        .create_user(CreateUserRequest {
            user_id: id.to_string(),
            name: format!("name of {id}"),
            age: 40,
            email: String::new(),
        })
        .await
        .expect("create over tls");
}

/// The value of one series in the Prometheus text (0 when absent).
fn series(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A call refused at the TLS layer: a `Tls` error, fast (no retries until
/// the deadline), whose message says why.
async fn assert_refused(client: &UserClient, why: &[&str]) {
    let started = tokio::time::Instant::now();
    let error = client.get_user("u-any").await.expect_err("refused");
    assert!(
        matches!(error, ClientError::Tls(_)),
        "a tls error, got {error:?}"
    );
    assert_names(&error, why);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// A call refused by a server that requires a client certificate. With
/// TLS 1.3 the client hears of it only after its side of the handshake:
/// either the alert arrives with the reason (a `Tls` error), or the
/// connection is gone before the request went out (`Unavailable`, retried,
/// with the hint); either way well before the deadline.
async fn assert_client_refused(client: &UserClient, why: &[&str]) {
    let started = tokio::time::Instant::now();
    let error = client.get_user("u-any").await.expect_err("refused");
    match &error {
        ClientError::Tls(_) => assert_names(&error, why),
        ClientError::Unavailable(_) => assert_names(&error, &["refused the client certificate"]),
        other => panic!("a tls refusal, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

fn assert_names(error: &ClientError, why: &[&str]) {
    let text = error.to_string();
    assert!(
        why.iter().any(|reason| text.contains(reason)),
        "{text} names none of {why:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_user_works_over_tls_with_the_ca() {
    let pki = Pki::generate();
    let app = TestApp::spawn_tls(Db::Sqlite, &pki, false, |_| {}).await;

    let client = client(&app, &pki, Some(CA), None);
    create(&client, "u-tls").await;
    let user = client.get_user("u-tls").await.unwrap();

    assert_eq!(user.name, "name of u-tls");
    // The harness's own (tonic) connection sees the same server.
    assert_eq!(app.get_user("u-tls").await.unwrap().age, 40);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_trust_the_ca_fails_clearly() {
    let pki = Pki::generate();
    let app = TestApp::spawn_tls(Db::Sqlite, &pki, false, |_| {}).await;

    // No CA: the system's trust store, which does not know the test CA.
    assert_refused(&client(&app, &pki, None, None), &["UnknownIssuer"]).await;
    // Another CA.
    assert_refused(
        &client(&app, &pki, Some(OTHER_CA), None),
        &["UnknownIssuer"],
    )
    .await;

    // The server saw both refusals (its side may finish a moment later).
    eventually(
        "two failed handshakes counted",
        Duration::from_secs(5),
        || async {
            let metrics = app.metrics().await;
            (series(&metrics, "tls_handshake_failures_total{server=\"grpc\"}") >= 2.0).then_some(())
        },
    )
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate_from_the_ca() {
    let pki = Pki::generate();
    let app = TestApp::spawn_tls(Db::Sqlite, &pki, true, |_| {}).await;

    let trusted = client(&app, &pki, Some(CA), Some((CLIENT_CERT, CLIENT_KEY)));
    create(&trusted, "u-mtls").await;
    assert_eq!(
        trusted.get_user("u-mtls").await.unwrap().name,
        "name of u-mtls"
    );

    // TLS 1.3 tells the client at its first read, as an alert.
    let anonymous = client(&app, &pki, Some(CA), None);
    assert_client_refused(&anonymous, &["CertificateRequired"]).await;
    let foreign = client(
        &app,
        &pki,
        Some(CA),
        Some((OTHER_CLIENT_CERT, OTHER_CLIENT_KEY)),
    );
    assert_client_refused(&foreign, &["UnknownCA", "BadCertificate"]).await;
    eventually("both refusals counted", Duration::from_secs(5), || async {
        let metrics = app.metrics().await;
        (series(&metrics, "tls_handshake_failures_total{server=\"grpc\"}") >= 2.0).then_some(())
    })
    .await;

    // The JSON API asks for the same client certificates.
    let with_cert = pki.rustls_client(b"http/1.1", Some((CLIENT_CERT, CLIENT_KEY)));
    let (status, body) =
        crate::pki::https_request(app.http_addr, with_cert, "GET", "/v1/users/u-mtls")
            .await
            .unwrap();
    assert_eq!(status, 200, "{body}");
    let without = pki.rustls_client(b"http/1.1", None);
    let refused =
        crate::pki::https_request(app.http_addr, without, "GET", "/v1/users/u-mtls").await;
    assert!(refused.is_err(), "{refused:?}");

    // Still serving the trusted client after the refusals.
    assert!(trusted.get_user("u-mtls").await.is_ok());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_to_the_tls_ports_fails_cleanly() {
    let pki = Pki::generate();
    let app = TestApp::spawn_tls(Db::Sqlite, &pki, false, |_| {}).await;

    // gRPC in h2c to the TLS port: an error, quickly, not a hang.
    let plaintext = UserClient::connect_lazy(ClientConfig {
        url: format!("http://{}", app.grpc_addr),
        timeout: Duration::from_secs(3),
        ..ClientConfig::default()
    })
    .unwrap();
    let started = tokio::time::Instant::now();
    let error = plaintext.get_user("u-any").await.expect_err("refused");
    assert!(started.elapsed() < Duration::from_secs(4), "{error}");

    // HTTP/1.1 in clear to the https port: no HTTP answer, the connection closes.
    let mut tcp = TcpStream::connect(app.http_addr).await.unwrap();
    tcp.write_all(b"GET /v1/users HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection");
    assert!(!answer.starts_with(b"HTTP/"), "{read:?} {answer:?}");

    eventually("both refusals counted", Duration::from_secs(5), || async {
        let metrics = app.metrics().await;
        let failures = |server| {
            series(
                &metrics,
                &format!("tls_handshake_failures_total{{server=\"{server}\"}}"),
            )
        };
        (failures("grpc") >= 1.0 && failures("http") >= 1.0).then_some(())
    })
    .await;
    // And TLS clients are still served.
    let client = client(&app, &pki, Some(CA), None);
    create(&client, "u-after").await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_api_is_served_over_https() {
    let pki = Pki::generate();
    let app = TestApp::spawn_tls(Db::Sqlite, &pki, false, |_| {}).await;
    create(&client(&app, &pki, Some(CA), None), "u-json").await;

    let https = pki.rustls_client(b"http/1.1", None);
    let (status, body) =
        crate::pki::https_request(app.http_addr, https.clone(), "GET", "/v1/users/u-json")
            .await
            .unwrap();

    assert_eq!(status, 200, "{body}");
    let user: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(user["name"], "name of u-json");
    let (status, _) = crate::pki::https_request(app.http_addr, https, "GET", "/v1/users/nobody")
        .await
        .unwrap();
    assert_eq!(status, 404);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_reaches_new_connections_without_a_restart() {
    let mut pki = Pki::generate();
    let app = TestApp::spawn_tls(Db::Sqlite, &pki, false, |_| {}).await;
    let grpc_client = pki.rustls_client(b"h2", None);
    let http_client = pki.rustls_client(b"http/1.1", None);
    let first = pki.server.clone();
    assert_eq!(
        served_certificate(app.grpc_addr, grpc_client.clone()).await,
        first
    );
    let long_lived = client(&app, &pki, Some(CA), None);
    create(&long_lived, "u-rotate").await;

    let second = pki.rotate_server();
    assert_ne!(first, second);

    for (addr, client) in [(app.grpc_addr, &grpc_client), (app.http_addr, &http_client)] {
        eventually(
            "the new certificate to be served",
            Duration::from_secs(10),
            || {
                let client = client.clone();
                let second = second.clone();
                async move { (served_certificate(addr, client).await == second).then_some(()) }
            },
        )
        .await;
    }
    // The connection made before the rotation keeps working, and so does a
    // new client.
    assert!(long_lived.get_user("u-rotate").await.is_ok());
    assert!(
        client(&app, &pki, Some(CA), None)
            .get_user("u-rotate")
            .await
            .is_ok()
    );
    let metrics = app.metrics().await;
    assert!(
        series(
            &metrics,
            "tls_certificate_reloads_total{outcome=\"applied\"}"
        ) >= 1.0,
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_on_reload_is_counted_and_the_old_certificate_stays() {
    let pki = Pki::generate();
    let app = TestApp::spawn_tls(Db::Sqlite, &pki, false, |_| {}).await;
    let grpc_client = pki.rustls_client(b"h2", None);
    let rejected = "tls_certificate_reloads_total{outcome=\"rejected\"}";
    let before = series(&app.metrics().await, rejected);

    pki.replace(SERVER_CERT, b"-----BEGIN CERTIFICATE-----\ngarbage\n");

    eventually(
        "the bad file to be rejected",
        Duration::from_secs(10),
        || async { (series(&app.metrics().await, rejected) > before).then_some(()) },
    )
    .await;
    assert_eq!(
        served_certificate(app.grpc_addr, grpc_client).await,
        pki.server
    );
    let client = client(&app, &pki, Some(CA), None);
    create(&client, "u-still").await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_mismatched_files_stop_the_start_naming_key_and_path() {
    common::telemetry::init_for_tests();
    let pki = Pki::generate();
    let start = |tweak: &dyn Fn(&mut user_service::Config)| {
        let mut config = test_config("sqlite:///nonexistent/never-opened.db", "unused");
        pki.serve(&mut config, false);
        tweak(&mut config);
        Application::build(config)
    };

    let missing = PathBuf::from("/nonexistent/tls.crt");
    let error = start(&|config| config.tls_cert = Some(missing.clone()))
        .await
        .unwrap_err();
    let text = format!("{error:#}");
    assert!(
        text.contains("tls_cert /nonexistent/tls.crt: cannot read"),
        "{text}"
    );

    // The client's key in the server's place: it does not match.
    let error = start(&|config| config.tls_key = Some(pki.path(CLIENT_KEY)))
        .await
        .unwrap_err();
    let text = format!("{error:#}");
    assert!(
        text.contains("tls_key") && text.contains("does not match"),
        "{text}"
    );

    let error = start(&|config| config.tls_client_ca = Some(pki.path(SERVER_KEY)))
        .await
        .unwrap_err();
    let text = format!("{error:#}");
    assert!(
        text.contains("tls_client_ca") && text.contains("no PEM certificate"),
        "{text}"
    );
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    let _ = pki.dir();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_cli_speaks_https_with_ca_cert_and_key() {
    let pki = Pki::generate();
    let app = TestApp::spawn_tls(Db::Sqlite, &pki, true, |_| {}).await;
    let cli = |args: Vec<String>| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_user-cli"))
            .env_remove("USER_SERVICE_URL")
            .arg("--url")
            .arg(app.grpc_url())
            .args(args)
            .output()
    };
    let path = |name| pki.path(name).display().to_string();

    let created = cli(vec![
        "create".into(),
        "u-cli".into(),
        "--name".into(),
        "Ada".into(),
        "--age".into(),
        "36".into(),
        "--ca".into(),
        path(CA),
        "--cert".into(),
        path(CLIENT_CERT),
        "--key".into(),
        path(CLIENT_KEY),
    ])
    .await
    .unwrap();
    assert!(created.status.success(), "{created:?}");

    // Without a client certificate the server refuses: exit 1, a tls error.
    let refused = cli(vec!["get".into(), "u-cli".into(), "--ca".into(), path(CA)])
        .await
        .unwrap();
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .to_lowercase()
            .contains("certificate"),
        "{refused:?}"
    );

    // An unreadable --ca is a command line error.
    let bad = cli(vec![
        "get".into(),
        "u-cli".into(),
        "--ca".into(),
        "/nonexistent.pem".into(),
    ])
    .await
    .unwrap();
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    app.stop().await;
}
