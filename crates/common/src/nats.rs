//! NATS plumbing shared by the three publish-subscribe services.
//!
//! - [`connect_with`] (and [`connect`], without credentials files or TLS):
//!   one way to connect, with the connection's life surfaced to
//!   operators: readiness follows connect/disconnect, and slow-consumer
//!   drops (the client discarding messages a subscriber did not take in time)
//!   become the `messages_dropped_total{reason="slow_consumer"}` counter and a
//!   warn log line. The client reconnects forever and may start before the
//!   server is up. Credentials come from the URL, a `.creds` file or an NKey
//!   seed file ([`NatsAuth`]); TLS from `tls://` URLs or the [`TlsFiles`] of
//!   `nats_tls`. Refused credentials or a certificate that does not verify
//!   keep the service up and not ready, with one log line naming the server
//!   and the cause.
//! - [`sensor_stream_config`] / [`ensure_sensor_stream`] /
//!   [`ensure_replicated_sensor_stream`]: the JetStream stream over
//!   `sensor.data` and `sensor.data.>` (docs/ARCHITECTURE.md), created or
//!   updated by whichever service starts first, with 1 replica or as many as
//!   the service's `stream_replicas`. Only options a 2.9 server knows are set.
//! - [`reading_subject`] builds `sensor.data.<sensor_id>`.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_nats::{
    ConnectOptions, Event,
    jetstream::{
        self,
        stream::{self, StorageType},
    },
};

use tokio_util::sync::CancellationToken;

use crate::{
    codec::{CONTENT_TYPE_HEADER, Codec, CodecError, ContentType},
    config::{SecretUrl, UrlCredentials},
    ops::Readiness,
    proto::sensor::v1::SensorReading,
    tls::{TlsError, TlsFiles},
};

/// Name of the readiness check that follows the NATS connection.
pub const READINESS_CHECK: &str = "nats";

/// The `Content-Type` header name, built once: a `&str` key is validated and
/// copied into a new name on every lookup, which a subscriber reading
/// hundreds of thousands of messages a second feels.
pub const CONTENT_TYPE: async_nats::HeaderName =
    async_nats::HeaderName::from_static(CONTENT_TYPE_HEADER);

/// How long the stream remembers `Nats-Msg-Id`s to drop a retried publish.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// What the connection reports back to the service that owns it.
#[derive(Debug, Clone, Default)]
pub struct ConnectionWatch {
    /// Set to `true` on connect and `false` on disconnect under
    /// [`READINESS_CHECK`], when given.
    pub readiness: Option<Readiness>,
    /// Slow-consumer events of this connection: each is a message the client
    /// dropped because a subscription's buffer was full.
    pub slow_consumer_drops: Arc<AtomicU64>,
    /// Why the client is not connected, while it retries: the server and
    /// the cause (`cannot connect to tls://host:4222: authorization
    /// violation`), never a credential; `None` once connected.
    pub problem: Arc<Mutex<Option<Problem>>>,
}

/// Why a NATS connection is down: the client's error kind, which repeats
/// on every attempt, and the text for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The client's error kind (`authorization violation`, `IO error`, …).
    pub kind: String,
    /// The server and the whole cause, for `/readyz` and the log.
    pub text: String,
}

impl ConnectionWatch {
    /// A watch that also drives `readiness`.
    pub fn with_readiness(readiness: Readiness) -> Self {
        ConnectionWatch {
            readiness: Some(readiness),
            ..ConnectionWatch::default()
        }
    }

    /// Why the connection is down, while the client retries (see
    /// [`connect_with`]); `None` when connected or not tried yet.
    pub fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
            .map(|problem| problem.text.clone())
    }

    /// Records the current problem; `true` when its kind changed (log it
    /// then). The same kind again keeps the first, fuller text: the first
    /// attempt's error says more than the retries' events.
    fn set_problem(&self, problem: Option<Problem>) -> bool {
        let mut current = self
            .problem
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let same_kind = match (&*current, &problem) {
            (Some(current), Some(new)) => current.kind == new.kind,
            (None, None) => true,
            _ => false,
        };
        if same_kind {
            return false;
        }
        if let Some(readiness) = &self.readiness {
            readiness.set_reason(
                READINESS_CHECK,
                problem.as_ref().map(|problem| problem.text.clone()),
            );
        }
        *current = problem;
        true
    }

    /// Slow-consumer drops seen so far on this connection.
    pub fn slow_consumer_drops(&self) -> u64 {
        self.slow_consumer_drops.load(Ordering::Relaxed)
    }
}

/// How readings travel (docs/ARCHITECTURE.md, "Publish-subscribe").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryMode {
    /// Core NATS: at-most-once, lowest latency; nothing is stored.
    #[default]
    Core,
    /// JetStream: stored in the readings stream, acknowledged, at-least-once.
    Jetstream,
}

/// Connection settings common to the pub-sub services.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// Server URL(s), comma-separated.
    pub url: SecretUrl,
    /// Connection name shown by the server (`nats server report connections`).
    pub name: String,
    /// Messages a subscription buffers before the client drops (slow consumer).
    pub subscription_capacity: usize,
}

/// How a NATS connection proves who it is, besides the URL's own
/// `user:password@` or `token@` (docs/ARCHITECTURE.md, "Credentials and TLS
/// for the brokers"). At most one way is given: URL credentials, a `.creds`
/// file, or an NKey seed file.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsAuth {
    /// A `.creds` file (the user's JWT and NKey seed, as `nsc` writes it),
    /// for servers with decentralised (operator/account) authentication.
    pub creds_file: Option<PathBuf>,
    /// A file holding an NKey user seed (`SU…`), for servers that list the
    /// user's public NKey under `authorization { users = [{ nkey = … }] }`.
    pub nkey_file: Option<PathBuf>,
}

impl NatsAuth {
    /// The config check: one way to authenticate at most, URL credentials
    /// included. `url` is the service's `nats_url`.
    pub fn validate(&self, url: &SecretUrl) -> Result<(), crate::config::ConfigError> {
        let (_, from_url) = url.split_credentials();
        let given = [
            from_url.is_some().then_some("credentials in nats_url"),
            self.creds_file.as_ref().map(|_| "nats_auth.creds_file"),
            self.nkey_file.as_ref().map(|_| "nats_auth.nkey_file"),
        ];
        let given: Vec<&str> = given.into_iter().flatten().collect();
        if given.len() > 1 {
            return Err(crate::config::ConfigError::invalid(
                "nats_auth",
                given.join(" and "),
                "give NATS one way to authenticate",
            ));
        }
        Ok(())
    }
}

/// Why [`connect_with`] did not even try: the credentials or TLS files are
/// unusable, or the options contradict each other. Names the file, never
/// its content.
#[derive(Debug, thiserror::Error)]
pub enum NatsConnectError {
    /// A `nats_tls` file cannot be used.
    #[error("nats tls: {0}")]
    Tls(#[from] TlsError),
    /// The `.creds` or NKey seed file cannot be used.
    #[error("cannot use the nats {what} file {}: {reason}", path.display())]
    Credentials {
        /// `creds` or `nkey seed`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why (I/O error, or what is wrong with its content).
        reason: String,
    },
    /// More than one way to authenticate.
    #[error("give nats one way to authenticate, not {0}")]
    Conflicting(String),
    /// The client refused the options (a server list it cannot parse).
    #[error(transparent)]
    Client(#[from] async_nats::ConnectError),
}

/// Connects to NATS; returns at once even if the server is not up yet (the
/// client keeps trying, forever, as it does after a disconnect).
///
/// Without credentials files or TLS settings: [`connect_with`] and the
/// defaults.
pub async fn connect(
    options: &NatsOptions,
    watch: ConnectionWatch,
) -> Result<async_nats::Client, NatsConnectError> {
    connect_with(options, &NatsAuth::default(), &TlsFiles::default(), watch).await
}

/// Connects to NATS with credentials (URL, `.creds` file or NKey seed) and
/// TLS (`tls://` URLs, or any of the `tls` files set: then plaintext is
/// never accepted). Returns after one attempt (at most the client's 5 s
/// connect timeout) even if the server is not up yet; the client then keeps
/// trying in the background.
///
/// The files are read and checked first: a missing or malformed one is an
/// `Err` naming it. Credentials the server refuses, or a certificate that
/// does not verify, are not errors here: the client retries with backoff
/// (up to 4 s apart) forever, readiness stays false, [`ConnectionWatch::problem`]
/// says why, and one warn line names the server and the cause each time the
/// cause changes (not one per attempt).
pub async fn connect_with(
    options: &NatsOptions,
    auth: &NatsAuth,
    tls: &TlsFiles,
    watch: ConnectionWatch,
) -> Result<async_nats::Client, NatsConnectError> {
    let name = options.name.clone();
    // async-nats logs the server URL at debug level, password included
    // (`attempting connection server=ServerAddr(Url { .. password: Some(..) })`),
    // and does not log in with a URL's credentials: they go to it apart.
    let (servers, credentials) = options.url.split_credentials();
    let connect = authenticated(auth, credentials).await?;
    // Checked here, once, rather than failing every handshake later.
    let material = tls.load()?;
    let mut connect = connect;
    if let Some(ca) = &tls.ca {
        connect = connect.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        connect = connect.add_client_certificate(cert.clone(), key.clone());
    }
    if material.ca_pem.is_some() || material.identity.is_some() {
        // A CA set means the operator expects TLS: a server that offers
        // only plaintext must not get the credentials.
        connect = connect.require_tls(true);
    }
    let server_list = servers.clone();
    let event_watch = watch.clone();
    let connect = connect
        .name(&options.name)
        .subscription_capacity(options.subscription_capacity)
        .max_reconnects(None)
        .event_callback(move |event| {
            let watch = event_watch.clone();
            let name = name.clone();
            let servers = server_list.clone();
            async move { on_event(&name, &servers, &watch, event) }
        });
    // One attempt first: its error has the whole cause ("invalid peer
    // certificate: UnknownIssuer"), where the events of the retrying client
    // only carry its kind ("IO error").
    // async-nats parses a `&str` as one address: a `NATS_URL` list is
    // handed over as a list. The client adds the servers the cluster
    // advertises (INFO `connect_urls`) to it and reconnects to any of them.
    let addresses: Vec<&str> = servers
        .split(',')
        .map(str::trim)
        .filter(|one| !one.is_empty())
        .collect();
    let first = match connect.clone().connect(addresses.as_slice()).await {
        Ok(client) => return Ok(client),
        Err(error) if error.kind() == async_nats::ConnectErrorKind::ServerParse => {
            return Err(error.into());
        }
        Err(error) => error,
    };
    if let Some(readiness) = &watch.readiness {
        readiness.set(READINESS_CHECK, false);
    }
    let kind = first.kind().to_string();
    if watch.set_problem(Some(Problem {
        text: format!("cannot connect to {servers}: {first}"),
        kind: kind.clone(),
    })) {
        tracing::warn!(
            connection = options.name,
            server = servers,
            cause = %first,
            "nats cannot connect, retrying with backoff"
        );
    }
    connect
        .retry_on_initial_connect()
        .connect(addresses.as_slice())
        .await
        .map_err(NatsConnectError::from)
}

/// The client's options with the one way to authenticate that was given.
async fn authenticated(
    auth: &NatsAuth,
    from_url: Option<UrlCredentials>,
) -> Result<ConnectOptions, NatsConnectError> {
    let given = [
        from_url.as_ref().map(|_| "credentials in the url"),
        auth.creds_file.as_ref().map(|_| "a creds file"),
        auth.nkey_file.as_ref().map(|_| "an nkey seed file"),
    ];
    let given: Vec<&str> = given.into_iter().flatten().collect();
    if given.len() > 1 {
        return Err(NatsConnectError::Conflicting(given.join(" and ")));
    }
    if let Some(path) = &auth.creds_file {
        return ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|e| NatsConnectError::Credentials {
                what: "creds",
                path: path.clone(),
                reason: e.kind().to_string(),
            });
    }
    if let Some(path) = &auth.nkey_file {
        let unusable = |reason: String| NatsConnectError::Credentials {
            what: "nkey seed",
            path: path.clone(),
            reason,
        };
        let seed = std::fs::read_to_string(path).map_err(|e| unusable(e.to_string()))?;
        let seed = seed.trim();
        // Checked now: the client would only find out while signing the
        // server's nonce, on every attempt. The parser's message is not
        // repeated, in case it quotes the seed.
        nkeys::KeyPair::from_seed(seed)
            .map_err(|_| unusable("does not hold an nkey seed (SU…)".into()))?;
        return Ok(ConnectOptions::with_nkey(seed.to_string()));
    }
    Ok(match from_url {
        Some(UrlCredentials::UserPassword { user, password }) => {
            ConnectOptions::with_user_and_password(user, password)
        }
        Some(UrlCredentials::Token(token)) => ConnectOptions::with_token(token),
        None => ConnectOptions::new(),
    })
}

fn on_event(name: &str, servers: &str, watch: &ConnectionWatch, event: Event) {
    match event {
        Event::Connected => {
            tracing::info!(connection = name, server = servers, "nats connected");
            watch.set_problem(None);
            if let Some(readiness) = &watch.readiness {
                readiness.set(READINESS_CHECK, true);
            }
        }
        Event::Disconnected => {
            tracing::warn!(connection = name, "nats disconnected, reconnecting");
            if let Some(readiness) = &watch.readiness {
                readiness.set(READINESS_CHECK, false);
            }
        }
        Event::SlowConsumer(sid) => {
            watch.slow_consumer_drops.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(crate::metrics::MESSAGES_DROPPED, "reason" => "slow_consumer")
                .increment(1);
            tracing::warn!(
                connection = name,
                sid,
                "slow consumer: nats client dropped a message"
            );
        }
        // One per failed attempt, while the client retries with backoff:
        // logged only when the cause changes, so a wrong password is one
        // line, not one every 4 s for as long as it stays wrong.
        Event::ClientError(async_nats::ClientError::Other(cause)) => {
            if let Some(readiness) = &watch.readiness {
                readiness.set(READINESS_CHECK, false);
            }
            let problem = Problem {
                text: format!("cannot connect to {servers}: {cause}"),
                kind: cause.clone(),
            };
            if watch.set_problem(Some(problem)) {
                tracing::warn!(
                    connection = name,
                    server = servers,
                    cause = %cause,
                    "nats cannot connect, retrying with backoff"
                );
            }
        }
        Event::ServerError(async_nats::ServerError::AuthorizationViolation) => {
            let kind = async_nats::ConnectErrorKind::AuthorizationViolation.to_string();
            let problem = Problem {
                text: format!("{servers} refused the credentials: {kind}"),
                kind,
            };
            if watch.set_problem(Some(problem)) {
                tracing::warn!(
                    connection = name,
                    server = servers,
                    cause = "authorization violation",
                    "nats server refused the credentials"
                );
            }
        }
        Event::Closed => tracing::info!(connection = name, "nats connection closed"),
        Event::Draining => tracing::info!(connection = name, "nats connection draining"),
        other => tracing::warn!(connection = name, event = %other, "nats event"),
    }
}

/// Waits until `client` is connected; `false` if `stop` fired first.
///
/// [`connect`] returns before the first connection, so a service that must
/// not start work while disconnected waits here.
pub async fn wait_connected(client: &async_nats::Client, stop: &CancellationToken) -> bool {
    loop {
        if client.connection_state() == async_nats::connection::State::Connected {
            return true;
        }
        tokio::select! {
            () = stop.cancelled() => return false,
            () = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    }
}

/// Decodes a reading from a NATS message, the codec chosen by its
/// `Content-Type` header (none means JSON), and checks what a decoder cannot:
/// a sensor id that fits in a subject and a finite value. The error's
/// [`CodecError::reason`] labels `messages_rejected_total`.
pub fn decode_reading(
    codec: &Codec,
    payload: &[u8],
    headers: Option<&async_nats::HeaderMap>,
) -> Result<SensorReading, CodecError> {
    let mut reading = SensorReading::default();
    decode_reading_into(codec, payload, headers, &mut reading)?;
    Ok(reading)
}

/// [`decode_reading`] into an existing reading, reusing its strings' memory
/// (Protobuf): a subscriber that decodes hundreds of thousands of readings a
/// second saves most of its allocations. On error `reading` holds garbage.
pub fn decode_reading_into(
    codec: &Codec,
    payload: &[u8],
    headers: Option<&async_nats::HeaderMap>,
    reading: &mut SensorReading,
) -> Result<(), CodecError> {
    // The size first: an oversize reading is refused as too large, before
    // its header or a byte of it is read.
    codec.check_size(payload.len())?;
    let content_type = headers
        .and_then(|headers| headers.get(CONTENT_TYPE))
        .map(|value| value.as_str());
    match ContentType::from_header(content_type)? {
        ContentType::Protobuf => {
            // Every field back to its default, keeping the strings' capacity;
            // proto3 leaves default values out, so nothing may linger.
            reading.sensor_id.clear();
            reading.kind.clear();
            reading.unit.clear();
            reading.value = 0.0;
            reading.timestamp = 0;
            reading.seq = 0;
            reading.site = None;
            reading.owner_id = None;
            prost::Message::merge(reading, payload)?;
        }
        ContentType::Json => *reading = codec.decode(payload, ContentType::Json)?,
    }
    check_reading(reading)
}

fn check_reading(reading: &SensorReading) -> Result<(), CodecError> {
    if reading.sensor_id.is_empty()
        || reading
            .sensor_id
            .chars()
            .any(|c| c == '.' || c == '*' || c == '>' || c.is_whitespace())
    {
        return Err(CodecError::Invalid(format!(
            "sensor_id {:?} is not a subject token",
            reading.sensor_id.chars().take(64).collect::<String>()
        )));
    }
    if !reading.value.is_finite() {
        return Err(CodecError::Invalid(format!(
            "value {} is not a finite number",
            reading.value
        )));
    }
    Ok(())
}

/// `<prefix>.<sensor_id>`, e.g. `sensor.data.temp-001`.
pub fn reading_subject(prefix: &str, sensor_id: &str) -> String {
    format!("{prefix}.{sensor_id}")
}

/// The readings stream: `prefix` and `prefix.>`, on disk, with a duplicate
/// window for `Nats-Msg-Id` de-duplication, kept on `replicas` servers of
/// a cluster (1 on a single server; 0 is taken as 1).
pub fn sensor_stream_config(name: &str, subject_prefix: &str, replicas: usize) -> stream::Config {
    stream::Config {
        name: name.to_string(),
        subjects: vec![subject_prefix.to_string(), format!("{subject_prefix}.>")],
        storage: StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        // Readings are telemetry: a day is plenty to replay after an outage.
        max_age: Duration::from_secs(24 * 3600),
        description: Some("sensor readings (switchyard)".to_string()),
        num_replicas: replicas.max(1),
        ..Default::default()
    }
}

/// Creates the key-value bucket `config` describes, or updates it in place,
/// and opens it.
///
/// The client's own `create_or_update_key_value` first asks for the
/// account's JetStream limits, whose reply from a 2.9 server it cannot read;
/// this builds the bucket's stream as the client would (`KV_<bucket>` over
/// `$KV.<bucket>.>`, rollups, direct get, discard new) with the settings a
/// 2.9 server knows, then opens it.
pub async fn ensure_key_value(
    js: &jetstream::Context,
    config: jetstream::kv::Config,
) -> Result<jetstream::kv::Store, async_nats::Error> {
    create_or_update_stream(
        js,
        stream::Config {
            name: format!("KV_{}", config.bucket),
            description: Some(config.description),
            subjects: vec![format!("$KV.{}.>", config.bucket)],
            max_messages_per_subject: config.history.max(1),
            max_age: config.max_age,
            storage: config.storage,
            num_replicas: config.num_replicas.max(1),
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        },
    )
    .await?;
    Ok(js.get_key_value(config.bucket).await?)
}

/// Creates the readings stream with one replica, or updates it to
/// [`sensor_stream_config`]: what a single server runs with.
pub async fn ensure_sensor_stream(
    js: &jetstream::Context,
    name: &str,
    subject_prefix: &str,
) -> Result<stream::Info, jetstream::context::CreateStreamError> {
    ensure_replicated_sensor_stream(js, name, subject_prefix, 1).await
}

/// Creates the readings stream kept on `replicas` servers, or updates it to
/// [`sensor_stream_config`] (a cluster server changes an existing stream's
/// replica count in place; a single server refuses more than 1).
pub async fn ensure_replicated_sensor_stream(
    js: &jetstream::Context,
    name: &str,
    subject_prefix: &str,
    replicas: usize,
) -> Result<stream::Info, jetstream::context::CreateStreamError> {
    create_or_update_stream(js, sensor_stream_config(name, subject_prefix, replicas)).await
}

/// How long a stream's creation or update is given before it is asked
/// again (see [`create_or_update_stream`]). Creating a replicated stream
/// takes well under a second.
const STREAM_REQUEST_WAIT: Duration = Duration::from_secs(3);

/// The client's `create_or_update_stream`, asked again once if it has no
/// answer within [`STREAM_REQUEST_WAIT`]: when two services create the
/// same replicated stream at the same moment, a clustered nats-server 2.9
/// may never answer one of them (measured: the request times out after
/// the client's 10 s, and both members of a group that start together
/// collide again on their retry). Asked again, the stream exists and the
/// update answers at once.
async fn create_or_update_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Info, jetstream::context::CreateStreamError> {
    match tokio::time::timeout(
        STREAM_REQUEST_WAIT,
        js.create_or_update_stream(config.clone()),
    )
    .await
    {
        Ok(answer) => answer,
        Err(_) => {
            tracing::debug!(
                stream = config.name,
                "no answer to the stream request, asking again"
            );
            js.create_or_update_stream(config).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> NatsOptions {
        NatsOptions {
            url: SecretUrl::new(
                std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into()),
            ),
            name: "common-nats-test".into(),
            subscription_capacity: 1024,
        }
    }

    #[test]
    fn readings_decode_by_content_type_and_bad_ones_say_why() {
        let codec = Codec::default();
        let json = br#"{"sensor_id":"t-1","kind":"temperature","value":25.3,"timestamp":1}"#;
        assert_eq!(decode_reading(&codec, json, None).unwrap().sensor_id, "t-1");
        let reading = SensorReading {
            sensor_id: "t-2".into(),
            value: 1.0,
            ..Default::default()
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(CONTENT_TYPE_HEADER, "application/protobuf");
        let bytes = codec
            .encode(&reading, crate::codec::ContentType::Protobuf)
            .unwrap();
        assert_eq!(
            decode_reading(&codec, &bytes, Some(&headers)).unwrap(),
            reading
        );

        let reason = |payload: &[u8]| decode_reading(&codec, payload, None).unwrap_err().reason();
        assert_eq!(reason(b"temperature=25.3"), "invalid_json");
        assert_eq!(
            reason(br#"{"sensor_id":"a.b","kind":"k","value":1,"timestamp":1}"#),
            "invalid_message"
        );
        assert_eq!(
            reason(br#"{"sensor_id":"","kind":"k","value":1,"timestamp":1}"#),
            "invalid_message"
        );
    }

    #[test]
    fn decoding_into_a_used_reading_leaves_nothing_of_the_old_one() {
        let codec = Codec::default();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(CONTENT_TYPE_HEADER, "application/protobuf");
        let full = SensorReading {
            sensor_id: "t-1".into(),
            kind: "temperature".into(),
            value: 31.5,
            unit: "celsius".into(),
            timestamp: 7,
            seq: 9,
            site: Some("plant-a".into()),
            owner_id: Some("u-1".into()),
        };
        // Zero value, no unit, no site, no owner: all left out on the wire.
        let sparse = SensorReading {
            sensor_id: "t-2".into(),
            kind: "humidity".into(),
            ..Default::default()
        };
        let mut reading = SensorReading::default();
        for expected in [&full, &sparse, &full] {
            let bytes = codec.encode(expected, ContentType::Protobuf).unwrap();
            decode_reading_into(&codec, &bytes, Some(&headers), &mut reading).unwrap();
            assert_eq!(&reading, expected);
        }
        let json = codec.encode(&sparse, ContentType::Json).unwrap();
        decode_reading_into(&codec, &json, None, &mut reading).unwrap();
        assert_eq!(reading, sparse);
        let too_big = vec![0u8; 64];
        let error = decode_reading_into(&Codec::new(16), &too_big, Some(&headers), &mut reading)
            .unwrap_err();
        assert_eq!(error.reason(), "too_large");
        // Header-less (JSON) too: refused for its size, not parsed.
        let error = decode_reading(&Codec::new(16), &[b'{'; 64], None).unwrap_err();
        assert_eq!(error.reason(), "too_large");
    }

    #[test]
    fn delivery_mode_reads_from_config_in_lowercase() {
        #[derive(serde::Deserialize)]
        struct Holder {
            mode: DeliveryMode,
        }
        let holder: Holder = serde_json::from_str(r#"{"mode":"jetstream"}"#).unwrap();
        assert_eq!(holder.mode, DeliveryMode::Jetstream);
        assert!(serde_json::from_str::<Holder>(r#"{"mode":"kafka"}"#).is_err());
    }

    #[test]
    fn the_stream_covers_the_bare_subject_and_every_sensor() {
        let config = sensor_stream_config("SENSORS", "sensor.data", 0);
        assert_eq!(config.num_replicas, 1);
        assert_eq!(config.subjects, vec!["sensor.data", "sensor.data.>"]);
        assert_eq!(config.duplicate_window, DUPLICATE_WINDOW);
        assert_eq!(reading_subject("sensor.data", "t-1"), "sensor.data.t-1");
    }

    #[tokio::test]
    async fn a_comma_separated_nats_url_is_a_server_list_and_a_dead_entry_is_skipped() {
        // A port nobody listens on first: the client must try the next.
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .unwrap()
            .port();
        let mut options = local();
        options.url = SecretUrl::new(format!(
            "nats://127.0.0.1:{dead}, {}",
            options.url.split_credentials().0
        ));
        let client = connect(&options, ConnectionWatch::default()).await.unwrap();
        let never = CancellationToken::new();
        let connected =
            tokio::time::timeout(Duration::from_secs(10), wait_connected(&client, &never));
        assert!(connected.await.unwrap(), "connected through the second url");
    }

    #[tokio::test]
    async fn connect_reports_readiness_and_the_stream_is_created_then_updated() {
        let readiness = Readiness::new(&[READINESS_CHECK]);
        let client = connect(&local(), ConnectionWatch::with_readiness(readiness.clone()))
            .await
            .unwrap();
        let never = CancellationToken::new();
        let connected =
            tokio::time::timeout(Duration::from_secs(10), wait_connected(&client, &never));
        assert!(connected.await.unwrap());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !readiness.is_ready() {
            assert!(tokio::time::Instant::now() < deadline, "never connected");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("TEST_{suffix}");
        let prefix = format!("test.{suffix}.sensor.data");
        let js = jetstream::new(client);
        let created = ensure_sensor_stream(&js, &name, &prefix).await.unwrap();
        assert_eq!(created.config.subjects.len(), 2);
        // A second service starting with the same config updates in place.
        let again = ensure_sensor_stream(&js, &name, &prefix).await.unwrap();
        assert_eq!(again.config.name, name);

        js.publish(reading_subject(&prefix, "s1"), "x".into())
            .await
            .unwrap()
            .await
            .unwrap();
        let mut stream = js.get_stream(&name).await.unwrap();
        assert_eq!(stream.info().await.unwrap().state.messages, 1);
        js.delete_stream(&name).await.unwrap();
    }
}
