//! A tower layer around every gRPC call the server answers (the user
//! service, health and reflection alike):
//!
//! - **trace**: a `grpc request` span whose parent is the caller's
//!   `traceparent` (from the request metadata), so the handler's logs and
//!   spans join the caller's trace;
//! - **deadline**: the call gets the caller's `grpc-timeout`, capped by the
//!   server's default; when it runs out the handler is dropped (its database
//!   work cancelled) and the caller gets `DEADLINE_EXCEEDED`. (tonic's own
//!   `Server::timeout` would answer `CANCELLED`, which tells a client
//!   nothing about why.) tonic's transport still arms its own timer from the
//!   same `grpc-timeout` *outside* this layer and answers `CANCELLED` when it
//!   fires first, so this layer's timer ends `TRANSPORT_TIMER_MARGIN` (5 ms)
//!   earlier and always wins.
//! - **metrics**: `grpc_server_requests_total{method,code}` and
//!   `grpc_server_duration_seconds{method}`, recorded when the response
//!   ends: the status of a successful unary call only arrives in the
//!   trailers, so the body is watched for them.
//! - **bad input**: a request over `max_message_bytes` is refused by tonic
//!   before it is decoded, with a trailers-only `OUT_OF_RANGE`; this layer
//!   counts it in `messages_rejected_total{reason="too_large"}` and logs it
//!   at warn with its size and the limit (never its content). Bytes that
//!   are not the request's Protobuf make tonic answer `INTERNAL` (prost's
//!   "failed to decode Protobuf message"); that is the caller's mistake, not
//!   ours, so this layer answers `INVALID_ARGUMENT` instead and counts it in
//!   `messages_rejected_total{reason="invalid_protobuf"}`.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;
use tonic::{Code, Status, metadata::MetadataMap};
use tower::{Layer, Service};
use tracing::Instrument;

use common::metrics::MESSAGES_REJECTED;

use crate::{
    error::code_name,
    metrics::{GRPC_SERVER_DURATION, GRPC_SERVER_REQUESTS},
};

/// The gRPC services this server answers; other paths are labelled `unknown`
/// so a scanner cannot inflate the metric's label set.
const KNOWN_SERVICES: [&str; 4] = [
    "user.v1.UserService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// How much earlier than the caller's `grpc-timeout` this layer gives up.
/// tonic's transport starts its own timer for the same header just before
/// this layer runs; timers fire on whole milliseconds, so a few of them
/// guarantee ours expires first and the caller sees `DEADLINE_EXCEEDED`.
const TRANSPORT_TIMER_MARGIN: Duration = Duration::from_millis(5);
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const TRACE_HEADERS: [HeaderName; 2] = [
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("tracestate"),
];

/// Wraps a gRPC router with tracing, deadlines and metrics.
#[derive(Debug, Clone, Copy)]
pub struct GrpcCallLayer {
    default_timeout: Duration,
    max_message_bytes: usize,
}

impl GrpcCallLayer {
    /// Calls without a (shorter) `grpc-timeout` get `default_timeout`;
    /// `max_message_bytes` is the request size limit the services enforce,
    /// named in the log line of a request refused for its size.
    pub fn new(default_timeout: Duration, max_message_bytes: usize) -> Self {
        GrpcCallLayer {
            default_timeout,
            max_message_bytes,
        }
    }
}

impl<S> Layer<S> for GrpcCallLayer {
    type Service = GrpcCall<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcCall {
            inner,
            default_timeout: self.default_timeout,
            max_message_bytes: self.max_message_bytes,
        }
    }
}

/// The service [`GrpcCallLayer`] makes.
#[derive(Debug, Clone)]
pub struct GrpcCall<S> {
    inner: S,
    default_timeout: Duration,
    max_message_bytes: usize,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for GrpcCall<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Default + Unpin + Send + 'static,
{
    type Response = http::Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        // The clone that was polled ready serves this call (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);

        let method = method_label(request.uri().path());
        let timeout = effective_timeout(request.headers(), self.default_timeout);
        let span = tracing::info_span!("grpc request", rpc.method = %method, otel.kind = "server");
        common::propagation::set_parent(&span, caller_context(request.headers()));
        let started = Instant::now();
        let limit = self.max_message_bytes;

        Box::pin(
            async move {
                let call = CallRecord { method, started };
                let budget = timeout.saturating_sub(TRANSPORT_TIMER_MARGIN);
                match tokio::time::timeout(budget, inner.call(request)).await {
                    Ok(Ok(mut response)) => {
                        // An error answer is "trailers-only": the status is
                        // in the headers and the body is empty.
                        let mut code = status_of(response.headers());
                        if code == Some(Code::OutOfRange) {
                            count_too_large(&call.method, response.headers(), limit);
                        }
                        if code == Some(Code::Internal)
                            && refuse_undecodable(&call.method, response.headers_mut())
                        {
                            code = Some(Code::InvalidArgument);
                        }
                        Ok(response.map(|body| MeteredBody::new(body, call, code)))
                    }
                    Ok(Err(error)) => {
                        call.finish(Code::Unknown);
                        Err(error)
                    }
                    Err(_elapsed) => {
                        tracing::warn!(
                            method = %call.method,
                            timeout_ms = timeout.as_millis() as u64,
                            "deadline exceeded"
                        );
                        let status = Status::deadline_exceeded(format!(
                            "deadline of {} ms exceeded",
                            timeout.as_millis()
                        ));
                        let response = status.into_http::<ResBody>();
                        let code = Some(Code::DeadlineExceeded);
                        Ok(response.map(|body| MeteredBody::new(body, call, code)))
                    }
                }
            }
            .instrument(span),
        )
    }
}

/// What one call's metrics need.
#[derive(Debug)]
struct CallRecord {
    method: String,
    started: Instant,
}

impl CallRecord {
    fn finish(self, code: Code) {
        let method = self.method;
        metrics::histogram!(GRPC_SERVER_DURATION, "method" => method.clone())
            .record(self.started.elapsed().as_secs_f64());
        metrics::counter!(GRPC_SERVER_REQUESTS, "method" => method, "code" => code_name(code))
            .increment(1);
    }
}

/// A response body that records the call's metrics when it ends: at the
/// trailers (where a successful call's `grpc-status` is), at the end of the
/// stream, or when dropped early (the caller went away: `CANCELLED`).
#[derive(Debug)]
pub struct MeteredBody<B> {
    inner: B,
    call: Option<CallRecord>,
    /// The status when it came in the headers.
    header_code: Option<Code>,
}

impl<B> MeteredBody<B> {
    fn new(inner: B, call: CallRecord, header_code: Option<Code>) -> Self {
        MeteredBody {
            inner,
            call: Some(call),
            header_code,
        }
    }

    fn finish(&mut self, code: Code) {
        if let Some(call) = self.call.take() {
            call.finish(code);
        }
    }
}

impl<B> Body for MeteredBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = status_of(trailers).unwrap_or(Code::Unknown);
                    self.finish(code);
                }
            }
            Some(Err(_)) => self.finish(Code::Internal),
            None => {
                let code = self.header_code.unwrap_or(Code::Unknown);
                self.finish(code);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for MeteredBody<B> {
    fn drop(&mut self) {
        // A trailers-only answer may never be polled; otherwise the caller
        // left before the end.
        let code = self.header_code.unwrap_or(Code::Cancelled);
        self.finish(code);
    }
}

/// `user.v1.UserService/GetUser` for the path `/user.v1.UserService/GetUser`.
fn method_label(path: &str) -> String {
    let method = path.trim_start_matches('/');
    match method.split_once('/') {
        Some((service, name))
            if KNOWN_SERVICES.contains(&service)
                && !name.is_empty()
                && name.len() <= 64
                && name.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            method.to_string()
        }
        _ => "unknown".to_string(),
    }
}

/// A request refused for its size. tonic answers it before any handler
/// runs, trailers-only with `OUT_OF_RANGE` ("decoded message length too
/// large: found N bytes, the limit is: L bytes"); no handler of ours answers
/// `OUT_OF_RANGE` (docs/ARCHITECTURE.md: it means a request over
/// `max_message_bytes`), so the code in the headers tells.
fn count_too_large(method: &str, headers: &HeaderMap, limit: usize) {
    metrics::counter!(MESSAGES_REJECTED, "reason" => "too_large").increment(1);
    let size = Status::from_header_map(headers).and_then(|status| found_bytes(status.message()));
    tracing::warn!(
        method,
        reason = "too_large",
        size,
        limit,
        "grpc request rejected: larger than max_message_bytes"
    );
}

/// A request whose bytes did not decode: tonic (tonic-prost) answers it
/// trailers-only with `INTERNAL` and prost's "failed to decode Protobuf
/// message: ..."; no handler of ours says that. Turns the answer into
/// `INVALID_ARGUMENT` (the message kept), counts and logs it; `false` for
/// any other `INTERNAL`, left as it is.
fn refuse_undecodable(method: &str, headers: &mut HeaderMap) -> bool {
    let Some(status) = Status::from_header_map(headers) else {
        return false;
    };
    if !status.message().starts_with(UNDECODABLE) {
        return false;
    }
    headers.insert(GRPC_STATUS, HeaderValue::from(Code::InvalidArgument as i32));
    metrics::counter!(MESSAGES_REJECTED, "reason" => "invalid_protobuf").increment(1);
    tracing::warn!(
        method,
        reason = "invalid_protobuf",
        error = status.message(),
        "grpc request rejected: not the request's protobuf"
    );
    true
}

/// How prost's `DecodeError` begins.
const UNDECODABLE: &str = "failed to decode Protobuf message";

/// The `N` of tonic's "... found N bytes ..." (the request's size).
fn found_bytes(message: &str) -> Option<usize> {
    let (_, rest) = message.split_once("found ")?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn status_of(headers: &HeaderMap) -> Option<Code> {
    let value = headers.get(GRPC_STATUS)?.to_str().ok()?;
    value.parse::<i32>().ok().map(Code::from_i32)
}

fn caller_context(headers: &HeaderMap) -> opentelemetry::Context {
    // Only the two trace headers are copied, not the whole request metadata.
    let mut carrier = HeaderMap::new();
    for name in TRACE_HEADERS {
        if let Some(value) = headers.get(&name) {
            carrier.insert(name, value.clone());
        }
    }
    common::propagation::extract_grpc(&MetadataMap::from_headers(carrier))
}

/// The caller's `grpc-timeout`, capped by `default`; `default` when absent
/// or malformed.
fn effective_timeout(headers: &HeaderMap, default: Duration) -> Duration {
    headers
        .get(GRPC_TIMEOUT)
        .and_then(parse_grpc_timeout)
        .map_or(default, |asked| asked.min(default))
}

/// Parses a `grpc-timeout` value: at most 8 digits and a unit
/// (`H`, `M`, `S`, `m`, `u`, `n`), as the gRPC over HTTP/2 spec defines it.
fn parse_grpc_timeout(value: &HeaderValue) -> Option<Duration> {
    let value = value.to_str().ok()?;
    if value.len() < 2 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(value: &str) -> HeaderValue {
        HeaderValue::from_str(value).unwrap()
    }

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        assert_eq!(
            parse_grpc_timeout(&header("2H")),
            Some(Duration::from_secs(7200))
        );
        assert_eq!(
            parse_grpc_timeout(&header("3M")),
            Some(Duration::from_secs(180))
        );
        assert_eq!(
            parse_grpc_timeout(&header("5S")),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            parse_grpc_timeout(&header("250m")),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            parse_grpc_timeout(&header("7u")),
            Some(Duration::from_micros(7))
        );
        assert_eq!(
            parse_grpc_timeout(&header("99999999n")),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "S", "123456789S", "10x", "-1S", "1.5S"] {
            assert_eq!(parse_grpc_timeout(&header(bad)), None, "{bad}");
        }
    }

    #[test]
    fn the_callers_deadline_is_capped_by_the_default() {
        let default = Duration::from_secs(10);
        let mut headers = HeaderMap::new();
        assert_eq!(effective_timeout(&headers, default), default);
        headers.insert(GRPC_TIMEOUT, header("300m"));
        assert_eq!(
            effective_timeout(&headers, default),
            Duration::from_millis(300)
        );
        headers.insert(GRPC_TIMEOUT, header("1M"));
        assert_eq!(effective_timeout(&headers, default), default);
        headers.insert(GRPC_TIMEOUT, header("garbage"));
        assert_eq!(effective_timeout(&headers, default), default);
    }

    #[test]
    fn the_size_of_a_refused_request_is_read_from_tonics_message() {
        let status = Status::out_of_range(
            "Error, decoded message length too large: found 10012 bytes, the limit is: 4096 bytes",
        );
        // As it travels: percent-encoded in `grpc-message`.
        let response = status.into_http::<tonic::body::Body>();
        let read = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(found_bytes(read.message()), Some(10_012));
        assert_eq!(found_bytes("no size here"), None);
    }

    #[test]
    fn method_labels_are_bounded() {
        assert_eq!(
            method_label("/user.v1.UserService/GetUser"),
            "user.v1.UserService/GetUser"
        );
        assert_eq!(
            method_label("/grpc.health.v1.Health/Check"),
            "grpc.health.v1.Health/Check"
        );
        assert_eq!(method_label("/evil.Service/Scan"), "unknown");
        assert_eq!(method_label("/user.v1.UserService/../x"), "unknown");
        assert_eq!(method_label("/"), "unknown");
    }
}
