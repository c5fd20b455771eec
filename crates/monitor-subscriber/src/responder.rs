//! Request-reply on NATS: a request on `sensor.stats` (any body) is
//! answered with the `/stats` JSON. The instances answer as one queue group,
//! since each has the full picture, so a request gets one reply.
//!
//! The body means nothing, but it is an intake all the same: a request over
//! `max_message_bytes` is not read. It is counted in
//! `messages_rejected_total{reason="too_large"}`, logged at warn, and
//! answered with an error rather than left to time out: the headers of the
//! NATS service convention (`Nats-Service-Error`,
//! `Nats-Service-Error-Code: 413`) and the body
//! `{"error": {"code": "too_large", "message": "..."}}`.

use async_nats::HeaderMap;
use common::{
    codec::{Codec, CodecError},
    metrics::MESSAGES_REJECTED,
};
use futures::StreamExt;

use crate::report::StatsHandle;

/// Queue group of the `sensor.stats` responders: one instance answers.
pub const STATS_QUEUE_GROUP: &str = "monitor-stats";

/// The error header of the NATS service convention (`nats micro`).
const SERVICE_ERROR: &str = "Nats-Service-Error";
/// Its code header: HTTP-like numbers, 413 for a request too large.
const SERVICE_ERROR_CODE: &str = "Nats-Service-Error-Code";

/// Answers each request on the stats subscription with the report JSON,
/// until the subscription ends (the connection is drained at shutdown).
/// `codec` holds the request size limit.
pub(crate) async fn answer_stats_requests(
    client: async_nats::Client,
    mut requests: async_nats::Subscriber,
    stats: StatsHandle,
    codec: Codec,
) {
    while let Some(request) = requests.next().await {
        let refused = codec.check_size(request.payload.len()).err();
        if let Some(error) = &refused {
            metrics::counter!(MESSAGES_REJECTED, "reason" => error.reason()).increment(1);
            tracing::warn!(subject = %request.subject, reason = error.reason(), %error, "stats request rejected");
        }
        let Some(reply) = request.reply else {
            tracing::warn!(subject = %request.subject, "stats request without a reply subject");
            continue;
        };
        let sent = match refused {
            Some(error) => {
                let (headers, body) = refusal(&error);
                client
                    .publish_with_headers(reply, headers, body.into())
                    .await
            }
            None => match serde_json::to_vec(&stats.report()) {
                Ok(body) => client.publish(reply, body.into()).await,
                Err(error) => {
                    tracing::error!(%error, "cannot encode the stats report");
                    continue;
                }
            },
        };
        if let Err(error) = sent {
            tracing::warn!(%error, "cannot answer a stats request");
        }
    }
}

/// The error answer to a request refused for `error`.
fn refusal(error: &CodecError) -> (HeaderMap, Vec<u8>) {
    let message = error.to_string();
    let mut headers = HeaderMap::new();
    headers.insert(SERVICE_ERROR, message.as_str());
    headers.insert(SERVICE_ERROR_CODE, "413");
    let body = serde_json::json!({"error": {"code": error.reason(), "message": message}});
    (headers, body.to_string().into_bytes())
}
