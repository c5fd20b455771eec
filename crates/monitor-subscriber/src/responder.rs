//! Request-reply on NATS: a request on `sensor.stats` (any body) is
//! answered with the `/stats` JSON. The instances answer as one queue group,
//! since each has the full picture, so a request gets one reply.

use futures::StreamExt;

use crate::report::StatsHandle;

/// Queue group of the `sensor.stats` responders: one instance answers.
pub const STATS_QUEUE_GROUP: &str = "monitor-stats";

/// Answers each request on the stats subscription with the report JSON,
/// until the subscription ends (the connection is drained at shutdown).
pub(crate) async fn answer_stats_requests(
    client: async_nats::Client,
    mut requests: async_nats::Subscriber,
    stats: StatsHandle,
) {
    while let Some(request) = requests.next().await {
        let Some(reply) = request.reply else {
            tracing::warn!(subject = %request.subject, "stats request without a reply subject");
            continue;
        };
        let body = match serde_json::to_vec(&stats.report()) {
            Ok(body) => body,
            Err(error) => {
                tracing::error!(%error, "cannot encode the stats report");
                continue;
            }
        };
        if let Err(error) = client.publish(reply, body.into()).await {
            tracing::warn!(%error, "cannot answer a stats request");
        }
    }
}
