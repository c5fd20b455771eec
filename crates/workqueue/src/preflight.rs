//! At start, one declaration of the queues a service's sessions will
//! declare, so that a queue whose type differs from the configured
//! `queue_type` stops the service at once, with an error saying what to do
//! ([`crate::topology::QueueMismatch`]), instead of failing every reconnect
//! while the service looks alive.
//!
//! A broker that cannot be reached is not an error here: the service starts
//! and its sessions keep trying ([`common::reconnect`]); if they then meet a
//! mismatch, each attempt logs the same explanation and `/readyz` stays
//! not ready. Any other failure of a declaration is likewise left to the
//! sessions, which log it and retry.

use common::{config::SecretUrl, tls::TlsFiles};

use crate::{
    connection,
    publisher::PublisherConfig,
    topology::{QueueType, Topology, declare_data_sync_as, is_queue_mismatch},
};

/// One thing a service declares.
#[derive(Debug, Clone, Copy)]
pub enum Declaration<'a> {
    /// The work queue only (what a publisher declares).
    WorkQueue(&'a Topology),
    /// The work queue, its retry tiers and its DLQ (what task-worker declares).
    Topology(&'a Topology),
    /// A user-event queue and, for quorum, its DLQ.
    DataSync {
        /// The queue's name.
        queue: &'a str,
        /// Its configured type.
        queue_type: QueueType,
    },
}

impl PublisherConfig {
    /// The check at start of a service that only publishes tasks: its work
    /// queue, declared once on a connection named `name`.
    pub async fn refuse_mismatched_queue(&self, name: &str) -> Result<(), lapin::Error> {
        let topology = self.topology();
        let declarations = [Declaration::WorkQueue(&topology)];
        refuse_mismatched_queues(&self.amqp_url, &self.amqp_tls, name, &declarations).await
    }
}

/// Declares each of `declarations` once on a connection of its own (named
/// `name`); `Err` only when one of them exists with another type.
pub async fn refuse_mismatched_queues(
    url: &SecretUrl,
    tls: &TlsFiles,
    name: &str,
    declarations: &[Declaration<'_>],
) -> Result<(), lapin::Error> {
    let Ok(connection) = connection::connect(url, tls, name).await else {
        return Ok(());
    };
    let mut outcome = Ok(());
    for declaration in declarations {
        // A refused declaration closes its channel: one channel each.
        let Ok(channel) = connection.create_channel().await else {
            break;
        };
        let declared = match *declaration {
            Declaration::WorkQueue(topology) => topology.declare_work_queue(&channel).await,
            Declaration::Topology(topology) => topology.declare(&channel).await,
            Declaration::DataSync { queue, queue_type } => {
                declare_data_sync_as(&channel, queue, queue_type).await
            }
        };
        match declared {
            Err(error) if is_queue_mismatch(&error) => {
                outcome = Err(error);
                break;
            }
            Err(error) => {
                tracing::debug!(%error, "declaration at start failed; the sessions retry it");
            }
            Ok(()) => {
                let _ = channel.close(200, "declared".into()).await;
            }
        }
    }
    connection::close(&connection, "start-up check done").await;
    outcome
}
