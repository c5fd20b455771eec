//! The consumer group: alert-subscriber instances dividing the lanes
//! ([`crate::partition`]) among themselves, each lane owned by at most one
//! member at a time, with no coordinator but the NATS server.
//!
//! Membership and ownership are leases in the JetStream key-value bucket
//! `<group>_leases`, whose entries expire `lease_ttl` after they were last
//! written (the bucket's max age: nats-server 2.9 has no per-key TTL):
//! - `member.<member_id>`: rewritten every `heartbeat` by a live member;
//! - `lane.<lane>`: created by the lane's owner (a create fails while
//!   someone holds it) and renewed every `heartbeat` with the revision the
//!   owner last wrote (a renewal fails once someone else took it).
//!
//! Every heartbeat a member lists the live members and computes the
//! assignment every member computes alike ([`assignment`]: lanes in order,
//! dealt round-robin to the members sorted by id, so partitions per member
//! differ by at most one). It releases the lanes no longer its own (the lane
//! stops and checkpoints first, then its lease is deleted, so the next owner
//! can take it at once), renews the rest and tries to take the lanes now
//! assigned to it.
//!
//! At most one owner: a lease is only taken once its holder deleted it or it
//! expired on the server, `lease_ttl` after the last renewal the server
//! stored. The holder counts its lease valid until [`VALIDITY`] of
//! `lease_ttl` after it *sent* that renewal, and its lane stops evaluating
//! when that passes without a newer one — before the server can let anyone
//! else in. A member killed without a goodbye is gone from the group when its
//! leases expire: its lanes move within `lease_ttl` plus a heartbeat.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_nats::jetstream::{
    self,
    kv::{self, CreateErrorKind, UpdateErrorKind},
    stream::StorageType,
};
use futures::{StreamExt, future::BoxFuture};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::{GROUP_REBALANCES, PARTITION_HANDOVER, PARTITION_LEASE_LOSSES, PARTITIONS_OWNED},
    partition::Lane,
};

/// The share of `lease_ttl` after a renewal was sent during which its holder
/// counts the lease valid: the rest is margin for timers and clocks.
pub const VALIDITY: f64 = 0.8;

/// How the group is set up; every member must use the same values.
#[derive(Debug, Clone)]
pub struct GroupSettings {
    /// The group's name: its buckets are `<group>_leases` and `<group>_state`.
    pub group: String,
    /// This member's id (unique in the group).
    pub member_id: String,
    /// Partitions P (the server's mapping must use the same).
    pub partitions: u16,
    /// How long a lease outlives its last renewal on the server.
    pub lease_ttl: Duration,
    /// How often leases are renewed and the assignment recomputed.
    pub heartbeat: Duration,
    /// Servers keeping a copy of each bucket (`stream_replicas`).
    pub replicas: usize,
}

impl GroupSettings {
    /// The leases bucket: entries expire `lease_ttl` after their last write.
    pub fn leases_bucket(&self) -> kv::Config {
        kv::Config {
            bucket: format!("{}_leases", self.group),
            description: "alert-subscriber group: members and lane leases (switchyard)".into(),
            history: 1,
            max_age: self.lease_ttl,
            storage: StorageType::File,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    /// The checkpoints bucket: kept until overwritten.
    pub fn state_bucket(&self) -> kv::Config {
        kv::Config {
            bucket: format!("{}_state", self.group),
            description: "alert-subscriber group: lane checkpoints (switchyard)".into(),
            history: 1,
            storage: StorageType::File,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }
}

/// A member's hold on one lane, as the lane's worker sees it.
#[derive(Debug)]
pub struct Lease {
    valid_until: Mutex<Instant>,
    lost: CancellationToken,
}

impl Lease {
    fn new(valid_until: Instant) -> Arc<Self> {
        Arc::new(Lease {
            valid_until: Mutex::new(valid_until),
            lost: CancellationToken::new(),
        })
    }

    /// `true` while nobody else can have taken the lane.
    pub fn is_valid(&self) -> bool {
        !self.lost.is_cancelled() && Instant::now() < *self.lock()
    }

    /// Completes when the lease is known lost (someone else renewed it).
    pub async fn lost(&self) {
        self.lost.cancelled().await;
    }

    /// A lease for tests of what holds one: valid for `validity`.
    pub fn for_test(validity: Duration) -> Arc<Self> {
        Lease::new(Instant::now() + validity)
    }

    fn extend(&self, until: Instant) {
        let mut valid_until = self.lock();
        *valid_until = (*valid_until).max(until);
    }

    fn lose(&self) {
        self.lost.cancel();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Instant> {
        self.valid_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Starts the worker of a lane this member just took; the future runs until
/// the token is cancelled (release, shutdown) or the lease is lost.
pub type SpawnLane =
    Arc<dyn Fn(Lane, Arc<Lease>, CancellationToken) -> BoxFuture<'static, ()> + Send + Sync>;

/// The group as one member sees it (`GET /partitions`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GroupView {
    /// The group's name.
    pub group: String,
    /// This member.
    pub member_id: String,
    /// Partitions P.
    pub partitions: u16,
    /// The live members, sorted.
    pub members: Vec<String>,
    /// The lanes each member owns once the group is stable.
    pub assignment: BTreeMap<String, Vec<String>>,
    /// The lanes this member holds now.
    pub owned: Vec<String>,
    /// Of those, the ones being handed over.
    pub releasing: Vec<String>,
}

/// The lanes of each member: lanes in order, dealt round-robin to the
/// members sorted by id.
pub fn assignment(members: &[String], lanes: &[Lane]) -> BTreeMap<String, Vec<Lane>> {
    let mut sorted = members.to_vec();
    sorted.sort();
    sorted.dedup();
    let mut assigned: BTreeMap<String, Vec<Lane>> = sorted
        .iter()
        .map(|member| (member.clone(), Vec::new()))
        .collect();
    if sorted.is_empty() {
        return assigned;
    }
    for (i, lane) in lanes.iter().enumerate() {
        if let Some(lanes) = assigned.get_mut(&sorted[i % sorted.len()]) {
            lanes.push(*lane);
        }
    }
    assigned
}

/// A lane this member holds.
#[derive(Debug)]
struct Held {
    revision: u64,
    lease: Arc<Lease>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    /// Since when it is being released, if it is.
    releasing: Option<Instant>,
}

/// One member of the group.
pub struct Group {
    settings: GroupSettings,
    leases: kv::Store,
    lanes: Vec<Lane>,
    held: BTreeMap<Lane, Held>,
    members: Vec<String>,
    view: watch::Sender<GroupView>,
    /// Whether the last heartbeat reached the server (logs only changes).
    reachable: bool,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("settings", &self.settings)
            .field("held", &self.held.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Group {
    /// Joins: opens the leases bucket (the caller created it, see
    /// `intake::run_partitioned`).
    pub async fn join(
        js: &jetstream::Context,
        settings: GroupSettings,
        view: watch::Sender<GroupView>,
    ) -> Result<Self, async_nats::Error> {
        // Created by the caller (with a setup timeout); opened here on
        // `js`, whose short timeout bounds every renewal.
        let leases = js.get_key_value(settings.leases_bucket().bucket).await?;
        let lanes = Lane::all(settings.partitions);
        Ok(Group {
            settings,
            leases,
            lanes,
            held: BTreeMap::new(),
            members: Vec::new(),
            view,
            reachable: true,
        })
    }

    /// Takes part in the group until `stop` fires, then leaves: stops every
    /// lane (each within `grace`), deletes its leases and its member entry.
    pub async fn run(mut self, spawn: SpawnLane, stop: CancellationToken, grace: Duration) {
        let (finished_tx, mut finished) = mpsc::unbounded_channel::<Lane>();
        let mut heartbeat = tokio::time::interval(self.settings.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(
            group = self.settings.group,
            member_id = self.settings.member_id,
            partitions = self.settings.partitions,
            "joining the alert group"
        );
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                Some(lane) = finished.recv() => self.lane_finished(lane).await,
                _ = heartbeat.tick() => self.reconcile(&spawn, &finished_tx).await,
            }
        }
        self.leave(&mut finished, grace).await;
    }

    /// One heartbeat: announce this member, renew, release, acquire.
    async fn reconcile(&mut self, spawn: &SpawnLane, finished: &mpsc::UnboundedSender<Lane>) {
        let sent = Instant::now();
        let member_key = format!("member.{}", self.settings.member_id);
        let announced = self
            .leases
            .put(&member_key, self.settings.partitions.to_string().into())
            .await;
        let members = match announced {
            Ok(_) => self.live_members().await,
            Err(error) => Err(error.to_string()),
        };
        let members = match members {
            Ok(members) => {
                if !self.reachable {
                    tracing::info!(group = self.settings.group, "group leases reachable again");
                }
                self.reachable = true;
                members
            }
            Err(error) => {
                if self.reachable {
                    tracing::warn!(group = self.settings.group, %error, "cannot renew group leases; lanes stop when their leases run out");
                }
                self.reachable = false;
                return;
            }
        };
        if members != self.members {
            metrics::counter!(GROUP_REBALANCES).increment(1);
            tracing::info!(
                group = self.settings.group,
                ?members,
                "group membership changed"
            );
            self.members = members;
        }
        let assigned = assignment(&self.members, &self.lanes);
        let mine = assigned
            .get(&self.settings.member_id)
            .cloned()
            .unwrap_or_default();
        let valid_until = sent + self.settings.lease_ttl.mul_f64(VALIDITY);
        let lanes: Vec<Lane> = self.held.keys().copied().collect();
        for lane in lanes {
            self.renew(lane, valid_until).await;
            if let Some(held) = self.held.get_mut(&lane)
                && !mine.contains(&lane)
                && held.releasing.is_none()
            {
                tracing::info!(lane = %lane, "releasing lane: assigned to another member");
                held.releasing = Some(Instant::now());
                held.stop.cancel();
            }
        }
        for lane in mine {
            if !self.held.contains_key(&lane) {
                self.acquire(lane, valid_until, spawn, finished).await;
            }
        }
        self.publish_view(&assigned);
    }

    /// The members whose entries have not expired, sorted.
    async fn live_members(&self) -> Result<Vec<String>, String> {
        let mut keys = self.leases.keys().await.map_err(|e| e.to_string())?;
        let mut members = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| e.to_string())?;
            if let Some(member) = key.strip_prefix("member.") {
                members.push(member.to_string());
            }
        }
        members.sort();
        Ok(members)
    }

    async fn renew(&mut self, lane: Lane, valid_until: Instant) {
        let Some(held) = self.held.get_mut(&lane) else {
            return;
        };
        let renewed = self
            .leases
            .update(
                lease_key(lane),
                self.settings.member_id.clone().into(),
                held.revision,
            )
            .await;
        match renewed {
            Ok(revision) => {
                held.revision = revision;
                held.lease.extend(valid_until);
            }
            Err(error) if error.kind() == UpdateErrorKind::WrongLastRevision => {
                metrics::counter!(PARTITION_LEASE_LOSSES).increment(1);
                tracing::warn!(lane = %lane, "lane lease lost: it expired or another member took it; the lane stops");
                held.lease.lose();
                held.stop.cancel();
            }
            // Not renewed this time; the lease runs out unless a later
            // heartbeat gets through.
            Err(error) => tracing::debug!(lane = %lane, %error, "lease not renewed"),
        }
    }

    async fn acquire(
        &mut self,
        lane: Lane,
        valid_until: Instant,
        spawn: &SpawnLane,
        finished: &mpsc::UnboundedSender<Lane>,
    ) {
        let created = self
            .leases
            .create(lease_key(lane), self.settings.member_id.clone().into())
            .await;
        let revision = match created {
            Ok(revision) => revision,
            // Still held: its owner releases it on its next heartbeat, or
            // it expires.
            Err(error) if error.kind() == CreateErrorKind::AlreadyExists => return,
            Err(error) => {
                tracing::debug!(lane = %lane, %error, "cannot take lane");
                return;
            }
        };
        let lease = Lease::new(valid_until);
        let stop = CancellationToken::new();
        let work = spawn(lane, lease.clone(), stop.clone());
        let finished = finished.clone();
        let task = tokio::spawn(async move {
            work.await;
            let _ = finished.send(lane);
        });
        tracing::info!(lane = %lane, "lane acquired");
        self.held.insert(
            lane,
            Held {
                revision,
                lease,
                stop,
                task,
                releasing: None,
            },
        );
        metrics::gauge!(PARTITIONS_OWNED).set(self.held.len() as f64);
    }

    /// A lane's worker ended: hand the lane back unless the lease is lost.
    async fn lane_finished(&mut self, lane: Lane) {
        let Some(held) = self.held.remove(&lane) else {
            return;
        };
        metrics::gauge!(PARTITIONS_OWNED).set(self.held.len() as f64);
        if held.lease.lost.is_cancelled() {
            return;
        }
        if let Err(error) = self
            .leases
            .delete_expect_revision(lease_key(lane), Some(held.revision))
            .await
        {
            tracing::debug!(lane = %lane, %error, "lease not deleted; it expires");
        }
        if let Some(since) = held.releasing {
            metrics::histogram!(PARTITION_HANDOVER, "side" => "release")
                .record(since.elapsed().as_secs_f64());
            tracing::info!(lane = %lane, took_ms = since.elapsed().as_millis() as u64, "lane released");
        } else {
            tracing::info!(lane = %lane, "lane worker ended, lane handed back");
        }
        self.publish_view(&assignment(&self.members, &self.lanes));
    }

    /// Stops every lane, gives their leases back and leaves the group.
    async fn leave(&mut self, finished: &mut mpsc::UnboundedReceiver<Lane>, grace: Duration) {
        for held in self.held.values_mut() {
            held.releasing.get_or_insert_with(Instant::now);
            held.stop.cancel();
        }
        let deadline = tokio::time::Instant::now() + grace;
        while !self.held.is_empty() {
            match tokio::time::timeout_at(deadline, finished.recv()).await {
                Ok(Some(lane)) => self.lane_finished(lane).await,
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        lanes = self.held.len(),
                        "grace period over, lanes stopped before their last checkpoint"
                    );
                    let lanes: Vec<Lane> = self.held.keys().copied().collect();
                    for lane in lanes {
                        if let Some(held) = self.held.get(&lane) {
                            held.task.abort();
                        }
                        self.lane_finished(lane).await;
                    }
                }
            }
        }
        let member_key = format!("member.{}", self.settings.member_id);
        if let Err(error) = self.leases.delete(&member_key).await {
            tracing::debug!(%error, "member entry not deleted; it expires");
        }
        self.members.clear();
        self.publish_view(&BTreeMap::new());
        tracing::info!(
            group = self.settings.group,
            member_id = self.settings.member_id,
            "left the alert group"
        );
    }

    fn publish_view(&self, assigned: &BTreeMap<String, Vec<Lane>>) {
        let names = |lanes: &mut dyn Iterator<Item = &Lane>| -> Vec<String> {
            lanes.map(Lane::to_string).collect()
        };
        let view = GroupView {
            group: self.settings.group.clone(),
            member_id: self.settings.member_id.clone(),
            partitions: self.settings.partitions,
            members: self.members.clone(),
            assignment: assigned
                .iter()
                .map(|(member, lanes)| (member.clone(), names(&mut lanes.iter())))
                .collect(),
            owned: names(&mut self.held.keys()),
            releasing: names(
                &mut self
                    .held
                    .iter()
                    .filter(|(_, held)| held.releasing.is_some())
                    .map(|(lane, _)| lane),
            ),
        };
        self.view.send_replace(view);
    }
}

/// The key of a lane's lease.
fn lease_key(lane: Lane) -> String {
    format!("lane.{lane}")
}

/// A member id for this process: the host name and a random suffix, so two
/// processes on one host (or a restarted pod) never share one.
pub fn default_member_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|host| host.trim().to_string())
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "alert-subscriber".into());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}", &suffix[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("m{i}")).collect()
    }

    #[test]
    fn the_assignment_is_balanced_and_exclusive() {
        let lanes = Lane::all(16);
        for n in 1..=5 {
            let assigned = assignment(&members(n), &lanes);
            assert_eq!(assigned.len(), n);
            let mut all: Vec<Lane> = assigned.values().flatten().copied().collect();
            all.sort();
            assert_eq!(all, lanes, "every lane once, with {n} members");
            let partitions: Vec<usize> = assigned
                .values()
                .map(|lanes| {
                    lanes
                        .iter()
                        .filter(|l| matches!(l, Lane::Partition(_)))
                        .count()
                })
                .collect();
            let (min, max) = (
                partitions.iter().min().unwrap(),
                partitions.iter().max().unwrap(),
            );
            assert!(max - min <= 1, "{n} members: {partitions:?}");
        }
    }

    #[test]
    fn every_member_computes_the_same_assignment_whatever_order_it_lists() {
        let lanes = Lane::all(16);
        let mut shuffled = members(3);
        shuffled.reverse();
        assert_eq!(
            assignment(&members(3), &lanes),
            assignment(&shuffled, &lanes)
        );
    }

    #[test]
    fn a_lease_is_valid_until_its_deadline_or_its_loss() {
        let lease = Lease::new(Instant::now() + Duration::from_secs(60));
        assert!(lease.is_valid());
        lease.lose();
        assert!(!lease.is_valid());
        let expired = Lease::new(Instant::now());
        assert!(!expired.is_valid());
        expired.extend(Instant::now() + Duration::from_secs(60));
        assert!(expired.is_valid(), "a renewal extends it");
    }

    #[test]
    fn member_ids_are_key_tokens_and_unique() {
        let a = default_member_id();
        assert_ne!(a, default_member_id());
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "{a}"
        );
    }
}
