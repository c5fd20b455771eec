//! NATS with TLS and credentials, on a private nats-server of each test:
//! TLS with a CA and client certificates made at test time (`verify: true`,
//! mutual TLS), users authenticated by NKey or by user and password, and
//! decentralised authentication (an operator trusted by the server, account
//! and user JWTs minted at test time, the user's `.creds` file).
//!
//! The right credentials carry a message end to end through
//! [`common::nats::connect_with`]; wrong ones (an unknown NKey, a user JWT
//! of an account the server does not know, an expired one), a CA that did
//! not sign the server, or no TLS at all leave the client retrying, not
//! ready, with the reason in [`ConnectionWatch::problem`] and one log line
//! naming the server, never a credential.

use std::{
    io::Write,
    path::PathBuf,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use common::{
    config::SecretUrl,
    nats::{self, ConnectionWatch, NatsAuth, NatsConnectError, NatsOptions},
    ops::Readiness,
    tls::TlsFiles,
};
use futures::StreamExt;
use testkit::{NatsAccount, NatsOperator, NatsServer, NatsUser, TestPki, eventually, unique};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// A user of the server, authenticated by NKey.
struct NkeyUser {
    public_key: String,
    seed_file: PathBuf,
    seed: String,
}

impl NkeyUser {
    fn new(dir: &std::path::Path) -> Self {
        let pair = nkeys::KeyPair::new_user();
        let seed = pair.seed().unwrap();
        let seed_file = dir.join(format!("{}.nk", unique()));
        std::fs::write(&seed_file, format!("{seed}\n")).unwrap();
        NkeyUser {
            public_key: pair.public_key(),
            seed_file,
            seed,
        }
    }
}

/// A nats-server requiring TLS with client certificates of `pki`'s CA, and
/// the NKey user `nkey` or `app`/`s3cret-pw` (over the URL).
async fn secured_server(pki: &TestPki, nkey: &NkeyUser) -> NatsServer {
    let conf = format!(
        r#"
tls {{
  cert_file: "{cert}"
  key_file: "{key}"
  ca_file: "{ca}"
  verify: true
  timeout: 2
}}
authorization {{
  users = [
    {{ nkey: "{nkey}" }}
    {{ user: "app", password: "s3cret-pw" }}
  ]
}}
"#,
        cert = pki.server_cert().display(),
        key = pki.server_key().display(),
        ca = pki.ca().display(),
        nkey = nkey.public_key,
    );
    NatsServer::start_with(Some(&conf)).await
}

fn options(url: &str) -> NatsOptions {
    NatsOptions {
        url: SecretUrl::new(url),
        name: format!("nats-auth-{}", unique()),
        subscription_capacity: 1024,
    }
}

fn mutual_tls(pki: &TestPki) -> TlsFiles {
    TlsFiles {
        ca: Some(pki.ca()),
        cert: Some(pki.client_cert()),
        key: Some(pki.client_key()),
    }
}

/// Everything the services log, for the tests that count log lines. One
/// subscriber for the whole binary: the client's events arrive on its own
/// tasks, on any thread.
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || Capture(sink.clone()))
            .init();
        buffer
    })
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_lines_with(needle: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    text.lines()
        .filter(|line| line.contains(needle))
        .map(str::to_string)
        .collect()
}

/// Waits until the client gives a reason for not being connected.
/// Publishes `text` on a subject of its own through `client` and asserts it
/// comes back to a subscription of the same client within 10 s.
async fn assert_carries_a_message(client: &async_nats::Client, text: &'static str) {
    let subject = format!("test.{}.carried", unique());
    let mut subscription = client.subscribe(subject.clone()).await.unwrap();
    client.publish(subject, text.into()).await.unwrap();
    let message = tokio::time::timeout(Duration::from_secs(10), subscription.next())
        .await
        .expect("the message crossed the connection")
        .unwrap();
    assert_eq!(&message.payload[..], text.as_bytes());
}

async fn problem_of(watch: &ConnectionWatch) -> String {
    let watch = watch.clone();
    eventually(
        "the nats client to report why it cannot connect",
        Duration::from_secs(15),
        || {
            let watch = watch.clone();
            async move { watch.problem() }
        },
    )
    .await
}

#[tokio::test]
async fn nkey_over_mutual_tls_carries_a_message_end_to_end() {
    // Arrange
    let pki = TestPki::generate();
    let user = NkeyUser::new(pki.dir());
    let server = secured_server(&pki, &user).await;
    let readiness = Readiness::new(&[nats::READINESS_CHECK]);
    let watch = ConnectionWatch::with_readiness(readiness.clone());
    let auth = NatsAuth {
        nkey_file: Some(user.seed_file.clone()),
        ..Default::default()
    };

    // Act: the URL says nats://, the CA setting alone turns TLS on.
    let client = nats::connect_with(
        &options(&server.url()),
        &auth,
        &mutual_tls(&pki),
        watch.clone(),
    )
    .await
    .unwrap();

    // Assert
    assert_carries_a_message(&client, "over tls").await;
    assert!(readiness.is_ready());
    assert_eq!(watch.problem(), None);
}

#[tokio::test]
async fn user_and_password_in_a_tls_url_carry_a_message_end_to_end() {
    // Arrange
    let pki = TestPki::generate();
    let user = NkeyUser::new(pki.dir());
    let server = secured_server(&pki, &user).await;
    let url = format!("tls://app:s3cret-pw@127.0.0.1:{}", server.port);
    let readiness = Readiness::new(&[nats::READINESS_CHECK]);

    // Act
    let client = nats::connect_with(
        &options(&url),
        &NatsAuth::default(),
        &mutual_tls(&pki),
        ConnectionWatch::with_readiness(readiness.clone()),
    )
    .await
    .unwrap();

    // Assert
    assert_carries_a_message(&client, "hello").await;
    assert!(readiness.is_ready());
}

#[tokio::test]
async fn a_refused_nkey_keeps_the_client_retrying_not_ready_and_logged_once() {
    // Arrange: the server knows `known`, the client signs with `stranger`.
    logs();
    let pki = TestPki::generate();
    let known = NkeyUser::new(pki.dir());
    let stranger = NkeyUser::new(pki.dir());
    let server = secured_server(&pki, &known).await;
    let readiness = Readiness::new(&[nats::READINESS_CHECK]);
    let watch = ConnectionWatch::with_readiness(readiness.clone());
    let auth = NatsAuth {
        nkey_file: Some(stranger.seed_file.clone()),
        ..Default::default()
    };
    let options = options(&server.tls_url());

    // Act: connect returns at once and keeps trying in the background.
    let client = nats::connect_with(&options, &auth, &mutual_tls(&pki), watch.clone())
        .await
        .expect("refused credentials are not a start-up error");
    let problem = problem_of(&watch).await;
    // Several attempts, with backoff (0, 2, 4, … ms, then up to 4 s apart).
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Assert
    assert!(problem.contains("authorization violation"), "{problem}");
    assert!(problem.contains(&server.tls_url()), "{problem}");
    assert!(!readiness.is_ready());
    assert_eq!(
        readiness.reason(nats::READINESS_CHECK).as_deref(),
        Some(problem.as_str()),
        "/readyz says why"
    );
    assert_ne!(
        client.connection_state(),
        async_nats::connection::State::Connected
    );
    let ours = log_lines_with(&options.name);
    let cannot_connect: Vec<_> = ours
        .iter()
        .filter(|line| line.contains("nats cannot connect"))
        .collect();
    assert_eq!(
        cannot_connect.len(),
        1,
        "one line per state change: {ours:#?}"
    );
    assert!(cannot_connect[0].contains(&server.tls_url()), "{ours:#?}");
    assert!(
        cannot_connect[0].contains("authorization violation"),
        "{ours:#?}"
    );
    // The client did retry: async-nats logs each refusal itself.
    assert!(
        log_lines_with("authorization violation").len() > 2,
        "the client retried"
    );
    // No secret anywhere in what was logged or reported.
    let everything = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    for secret in [&stranger.seed, &known.seed] {
        assert!(!everything.contains(secret.as_str()));
        assert!(!problem.contains(secret.as_str()));
    }
}

#[tokio::test]
async fn a_ca_that_did_not_sign_the_server_fails_the_handshake_cleanly() {
    // Arrange
    let pki = TestPki::generate();
    let user = NkeyUser::new(pki.dir());
    let server = secured_server(&pki, &user).await;
    let readiness = Readiness::new(&[nats::READINESS_CHECK]);
    let watch = ConnectionWatch::with_readiness(readiness.clone());
    let tls = TlsFiles {
        ca: Some(pki.other_ca()),
        ..mutual_tls(&pki)
    };
    let auth = NatsAuth {
        nkey_file: Some(user.seed_file.clone()),
        ..Default::default()
    };

    // Act
    let _client = nats::connect_with(&options(&server.tls_url()), &auth, &tls, watch.clone())
        .await
        .unwrap();
    let problem = problem_of(&watch).await;

    // Assert
    assert!(
        problem.contains("invalid peer certificate: UnknownIssuer"),
        "{problem}"
    );
    assert!(problem.contains(&server.tls_url()), "{problem}");
    assert!(!readiness.is_ready());
}

#[tokio::test]
async fn a_client_without_tls_settings_is_not_let_in() {
    // Arrange
    let pki = TestPki::generate();
    let user = NkeyUser::new(pki.dir());
    let server = secured_server(&pki, &user).await;
    let readiness = Readiness::new(&[nats::READINESS_CHECK]);
    let watch = ConnectionWatch::with_readiness(readiness.clone());
    let url = format!("nats://app:s3cret-pw@127.0.0.1:{}", server.port);

    // Act: no CA and no client certificate; the server demands TLS.
    let _client = nats::connect_with(
        &options(&url),
        &NatsAuth::default(),
        &TlsFiles::default(),
        watch.clone(),
    )
    .await
    .unwrap();
    let problem = problem_of(&watch).await;

    // Assert
    assert!(
        problem.contains("cannot connect to nats://127.0.0.1"),
        "{problem}"
    );
    assert!(!problem.contains("s3cret-pw"), "{problem}");
    assert!(!readiness.is_ready());
}

#[tokio::test]
async fn plaintext_protocol_to_the_tls_port_is_refused() {
    // Arrange
    let pki = TestPki::generate();
    let user = NkeyUser::new(pki.dir());
    let server = secured_server(&pki, &user).await;
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();

    // Act: speak plain NATS protocol.
    let info = lines.next_line().await.unwrap().unwrap();
    write
        .write_all(b"CONNECT {\"user\":\"app\",\"pass\":\"s3cret-pw\"}\r\nPING\r\n")
        .await
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), async {
        let mut reply = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            reply.push(line);
        }
        reply
    })
    .await
    .expect("the server closes the plaintext connection");

    // Assert
    assert!(info.contains("\"tls_required\":true"), "{info}");
    assert!(
        !reply.iter().any(|line| line.starts_with("PONG")),
        "plaintext must not be served: {reply:?}"
    );
}

#[tokio::test]
async fn unusable_credential_files_are_start_up_errors_naming_the_file() {
    // Arrange
    let pki = TestPki::generate();
    let not_a_seed = pki.dir().join("wrong.nk");
    std::fs::write(&not_a_seed, "SUnot-a-real-seed-value\n").unwrap();
    let options = options("nats://127.0.0.1:1");

    // Act
    let bad_seed = nats::connect_with(
        &options,
        &NatsAuth {
            nkey_file: Some(not_a_seed.clone()),
            ..Default::default()
        },
        &TlsFiles::default(),
        ConnectionWatch::default(),
    )
    .await
    .unwrap_err();
    let missing_creds = nats::connect_with(
        &options,
        &NatsAuth {
            creds_file: Some(pki.dir().join("absent.creds")),
            ..Default::default()
        },
        &TlsFiles::default(),
        ConnectionWatch::default(),
    )
    .await
    .unwrap_err();
    let bad_ca = nats::connect_with(
        &options,
        &NatsAuth::default(),
        &TlsFiles {
            ca: Some(not_a_seed.clone()),
            ..Default::default()
        },
        ConnectionWatch::default(),
    )
    .await
    .unwrap_err();
    let two_ways = nats::connect_with(
        &self::options("nats://app:pw@127.0.0.1:1"),
        &NatsAuth {
            nkey_file: Some(not_a_seed.clone()),
            ..Default::default()
        },
        &TlsFiles::default(),
        ConnectionWatch::default(),
    )
    .await
    .unwrap_err();

    // Assert
    let text = bad_seed.to_string();
    assert!(text.contains(&not_a_seed.display().to_string()), "{text}");
    assert!(!text.contains("SUnot-a-real"), "{text}");
    assert!(matches!(
        missing_creds,
        NatsConnectError::Credentials { .. }
    ));
    assert!(missing_creds.to_string().contains("absent.creds"));
    assert!(
        bad_ca.to_string().contains("holds no PEM certificate"),
        "{bad_ca}"
    );
    assert!(matches!(two_ways, NatsConnectError::Conflicting(_)));
}

/// The files of one test (`.creds` files, the server's log); removed on
/// drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("switchyard-nats-creds-{}", unique()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A nats-server in operator mode: it trusts `operator` and knows
/// `accounts` (a memory resolver); it logs to `scratch`'s `nats.log`.
async fn operator_server(
    scratch: &Scratch,
    operator: &NatsOperator,
    accounts: &[&NatsAccount],
) -> NatsServer {
    let conf = format!(
        "{}log_file: \"{}\"\n",
        operator.server_config(accounts),
        scratch.path("nats.log").display()
    );
    NatsServer::start_with(Some(&conf)).await
}

fn creds_auth(scratch: &Scratch, user: &NatsUser) -> NatsAuth {
    let file = scratch.path(&format!("{}.creds", unique()));
    user.write_creds(&file);
    NatsAuth {
        creds_file: Some(file),
        ..Default::default()
    }
}

#[tokio::test]
async fn creds_of_a_user_the_operator_trusts_carry_a_message_end_to_end() {
    // Arrange
    let scratch = Scratch::new();
    let operator = NatsOperator::new("switchyard-test");
    let account = operator.account("app");
    let server = operator_server(&scratch, &operator, &[&account]).await;
    let auth = creds_auth(&scratch, &account.user("sensor-publisher"));
    let readiness = Readiness::new(&[nats::READINESS_CHECK]);
    let watch = ConnectionWatch::with_readiness(readiness.clone());

    // Act
    let client = nats::connect_with(
        &options(&server.url()),
        &auth,
        &TlsFiles::default(),
        watch.clone(),
    )
    .await
    .unwrap();

    // Assert
    assert_carries_a_message(&client, "signed in").await;
    assert!(readiness.is_ready());
    assert_eq!(watch.problem(), None);
}

/// What a client with refused `.creds` shows after a few seconds of
/// retrying: its problem, its readiness, its log lines, and the server's
/// refusals.
struct Refusal {
    problem: String,
    readiness: Readiness,
    state: async_nats::connection::State,
    warn_lines: Vec<String>,
    server_refusals: usize,
    url: String,
}

async fn connect_refused(server: &NatsServer, scratch: &Scratch, user: &NatsUser) -> Refusal {
    logs();
    let readiness = Readiness::new(&[nats::READINESS_CHECK]);
    let watch = ConnectionWatch::with_readiness(readiness.clone());
    let options = options(&server.url());
    let client = nats::connect_with(
        &options,
        &creds_auth(scratch, user),
        &TlsFiles::default(),
        watch.clone(),
    )
    .await
    .expect("refused credentials are not a start-up error");
    let problem = problem_of(&watch).await;
    // Several attempts, with backoff (0, 2, 4, … ms, then up to 4 s apart).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let server_log = std::fs::read_to_string(scratch.path("nats.log")).unwrap_or_default();
    Refusal {
        problem,
        readiness,
        state: client.connection_state(),
        warn_lines: log_lines_with(&options.name)
            .into_iter()
            .filter(|line| line.contains("nats cannot connect"))
            .collect(),
        server_refusals: server_log
            .lines()
            .filter(|line| line.contains("authentication error"))
            .count(),
        url: server.url(),
    }
}

/// The documented behaviour for refused credentials: not ready, the reason
/// in `/readyz`, retrying, one warn line, no secret anywhere.
fn assert_refused_and_retried(refusal: &Refusal, user: &NatsUser) {
    let Refusal {
        problem,
        readiness,
        state,
        warn_lines,
        server_refusals,
        url,
    } = refusal;
    assert!(problem.contains("authorization violation"), "{problem}");
    assert!(problem.contains(url.as_str()), "{problem}");
    assert!(!readiness.is_ready());
    assert_eq!(
        readiness.reason(nats::READINESS_CHECK).as_deref(),
        Some(problem.as_str()),
        "/readyz says why"
    );
    assert_ne!(*state, async_nats::connection::State::Connected);
    assert_eq!(
        warn_lines.len(),
        1,
        "one line per state change: {warn_lines:#?}"
    );
    assert!(warn_lines[0].contains(url.as_str()), "{warn_lines:#?}");
    assert!(
        warn_lines[0].contains("authorization violation"),
        "{warn_lines:#?}"
    );
    assert!(
        *server_refusals >= 2,
        "the client tried again after the refusal: {server_refusals} attempt(s) seen by the server"
    );
    let everything = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    let seed = user.seed();
    assert!(!everything.contains(&seed));
    assert!(!problem.contains(&seed));
}

#[tokio::test]
async fn creds_of_an_account_the_server_does_not_know_are_refused_retried_and_logged_once() {
    // Arrange: the same operator signed both accounts; the server was
    // told only of `app`.
    let scratch = Scratch::new();
    let operator = NatsOperator::new("switchyard-test");
    let known = operator.account("app");
    let unknown = operator.account("elsewhere");
    let server = operator_server(&scratch, &operator, &[&known]).await;
    let stranger = unknown.user("stranger");

    // Act
    let refusal = connect_refused(&server, &scratch, &stranger).await;

    // Assert
    assert_refused_and_retried(&refusal, &stranger);
}

#[tokio::test]
async fn an_expired_user_jwt_is_refused_retried_and_logged_once() {
    // Arrange
    let scratch = Scratch::new();
    let operator = NatsOperator::new("switchyard-test");
    let account = operator.account("app");
    let server = operator_server(&scratch, &operator, &[&account]).await;
    let expired = account.expired_user("late");

    // Act
    let refusal = connect_refused(&server, &scratch, &expired).await;

    // Assert
    assert_refused_and_retried(&refusal, &expired);
}

#[tokio::test]
async fn a_creds_file_without_a_user_jwt_is_a_start_up_error_naming_the_file() {
    // Arrange: only the seed block; the JWT half is missing.
    let scratch = Scratch::new();
    let user = NatsOperator::new("switchyard-test")
        .account("app")
        .user("half");
    let file = scratch.path("half.creds");
    let creds = user.creds();
    let seed_block = creds
        .find("-----BEGIN USER NKEY SEED-----")
        .expect("the creds hold a seed block");
    std::fs::write(&file, &creds[seed_block..]).unwrap();

    // Act
    let error = nats::connect_with(
        &options("nats://127.0.0.1:1"),
        &NatsAuth {
            creds_file: Some(file.clone()),
            ..Default::default()
        },
        &TlsFiles::default(),
        ConnectionWatch::default(),
    )
    .await
    .unwrap_err();

    // Assert
    let text = error.to_string();
    assert!(
        matches!(error, NatsConnectError::Credentials { .. }),
        "{text}"
    );
    assert!(text.contains(&file.display().to_string()), "{text}");
    assert!(!text.contains(&user.seed()), "{text}");
}
