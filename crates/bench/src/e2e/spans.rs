//! `--spans`: where the hand-on time goes, read from the services' own
//! trace spans. The services export over OTLP to a receiver in this
//! process that keeps each span's start and end; one alert's spans share
//! its trace (the reading's), and the worker's `task` span names the alert.
//!
//! Stages of one alert, from its spans:
//! - hand-off: alert-subscriber's `raise alert` starts → task-worker's
//!   `task` starts (alert published on NATS, task queued, published,
//!   routed by RabbitMQ, delivered, decoded);
//! - worker before the call: `task` starts → `user-service call` starts
//!   (idempotency check, payload);
//! - GetUser: the `user-service call` span (client side), and inside it
//!   the server's `grpc request` span;
//! - after the call: the call's end → the "notification sent" log line;
//! - confirm: `raise alert` ends when its task was confirmed (the span is
//!   held until then), for reference.
//!
//! Exporting every span costs the services CPU; with `--spans` the run's
//! latencies are a diagnosis, not the benchmark's figures.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use hdrhistogram::Histogram;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{KeyValue, any_value::Value},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::latency::{histogram, record};

/// One exported span with its times (µs since the epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TimedSpan {
    /// `service.name` of the process that exported it.
    pub(crate) service: String,
    pub(crate) name: String,
    pub(crate) trace_id: Vec<u8>,
    pub(crate) start: i64,
    pub(crate) end: i64,
    /// Its `task_id` attribute (the worker's `task` span: the alert id).
    pub(crate) task_id: Option<String>,
}

#[derive(Debug, Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<TimedSpan>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|resource| text(&resource.attributes, "service.name"))
                .unwrap_or_default();
            for span in resource_spans
                .scope_spans
                .into_iter()
                .flat_map(|scope| scope.spans)
            {
                received.push(TimedSpan {
                    service: service.clone(),
                    task_id: text(&span.attributes, "task_id"),
                    name: span.name,
                    trace_id: span.trace_id,
                    start: (span.start_time_unix_nano / 1000) as i64,
                    end: (span.end_time_unix_nano / 1000) as i64,
                });
            }
        }
        self.spans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// The string value of attribute `key`.
fn text(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|attribute| attribute.key == key)
        .and_then(|attribute| attribute.value.as_ref())
        .and_then(|value| match &value.value {
            Some(Value::StringValue(text)) => Some(text.clone()),
            _ => None,
        })
}

/// The OTLP/gRPC receiver; stops when dropped.
#[derive(Debug)]
pub(crate) struct SpanCollector {
    addr: SocketAddr,
    receiver: Receiver,
    stop: CancellationToken,
}

impl SpanCollector {
    /// Listens on a free local port.
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let receiver = Receiver::default();
        let stop = CancellationToken::new();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(receiver.clone()))
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    stop.clone().cancelled_owned(),
                ),
        );
        Ok(SpanCollector {
            addr,
            receiver,
            stop,
        })
    }

    /// `OTEL_EXPORTER_OTLP_ENDPOINT` for the services.
    pub(crate) fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub(crate) fn spans(&self) -> Vec<TimedSpan> {
        self.receiver
            .spans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for SpanCollector {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The stages of the alerts whose id starts with `prefix`, in the order of
/// the module docs; `notified` gives each alert's "notification sent" time.
pub(crate) fn stages(
    spans: &[TimedSpan],
    prefix: &str,
    notified: &HashMap<String, i64>,
) -> Vec<(&'static str, Histogram<u64>)> {
    let mut traces: HashMap<&[u8], Vec<&TimedSpan>> = HashMap::new();
    for span in spans {
        traces.entry(&span.trace_id).or_default().push(span);
    }
    let mut stages: Vec<(&'static str, Histogram<u64>)> = [
        "hand-off: alert raised → worker's task starts",
        "worker: task starts → GetUser starts",
        "GetUser, client side",
        "GetUser, server side",
        "GetUser ends → notification sent",
        "confirm: alert raised → task confirmed",
    ]
    .into_iter()
    .map(|name| (name, histogram()))
    .collect();
    for trace in traces.values() {
        // The first of each, should anything have been repeated.
        let first = |service: &str, name: &str| {
            trace
                .iter()
                .filter(|span| span.service == service && span.name == name)
                .min_by_key(|span| span.start)
                .copied()
        };
        let (Some(raise), Some(task)) = (
            first("alert-subscriber", "raise alert"),
            first("task-worker", "task"),
        ) else {
            continue;
        };
        let Some(alert_id) = task.task_id.as_deref().filter(|id| id.starts_with(prefix)) else {
            continue;
        };
        record(&mut stages[0].1, task.start - raise.start);
        record(&mut stages[5].1, raise.end - raise.start);
        let Some(call) = first("task-worker", "user-service call") else {
            continue;
        };
        record(&mut stages[1].1, call.start - task.start);
        record(&mut stages[2].1, call.end - call.start);
        if let Some(server) = first("user-service", "grpc request") {
            record(&mut stages[3].1, server.end - server.start);
        }
        if let Some(&done) = notified.get(alert_id) {
            record(&mut stages[4].1, done - call.end);
        }
    }
    stages
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(service: &str, name: &str, trace: u8, start: i64, end: i64) -> TimedSpan {
        TimedSpan {
            service: service.into(),
            name: name.into(),
            trace_id: vec![trace; 16],
            start,
            end,
            task_id: None,
        }
    }

    #[test]
    fn an_alerts_spans_give_its_stages() {
        let mut task = span("task-worker", "task", 1, 1_000, 1_900);
        task.task_id = Some("low-temp-001-1-1".into());
        let mut other_phase = span("task-worker", "task", 2, 0, 10);
        other_phase.task_id = Some("high-temp-001-1-1".into());
        let spans = vec![
            span("sensor-publisher", "publish reading", 1, 0, 50),
            span("alert-subscriber", "raise alert", 1, 100, 700),
            task,
            span("task-worker", "user-service call", 1, 1_050, 1_450),
            span("user-service", "grpc request", 1, 1_200, 1_300),
            span("alert-subscriber", "raise alert", 2, 0, 5),
            other_phase,
        ];
        let notified = HashMap::from([("low-temp-001-1-1".to_string(), 1_500)]);
        let stages = stages(&spans, "low-", &notified);
        let p50: Vec<u64> = stages
            .iter()
            .map(|(_, h)| h.value_at_quantile(0.5))
            .collect();
        assert_eq!(p50, [900, 50, 400, 100, 50, 600]);
        assert!(stages.iter().all(|(_, h)| h.len() == 1), "one alert of low");
    }
}
