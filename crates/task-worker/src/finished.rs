//! The bounded memory of finished task ids that makes the worker idempotent.
//!
//! RabbitMQ delivers at least once: a task whose ack was lost (connection
//! dropped between the work and the ack) comes back. Before running a task
//! the worker looks its id up here; a finished one is acked and skipped. The
//! store keeps the most recent `capacity` ids (oldest evicted first), which
//! covers redeliveries — they arrive within seconds of the lost ack — with a
//! fixed amount of memory. It is per process: a redelivery to *another*
//! worker process is caught by [`crate::shared_finished`] when Redis is
//! configured, and otherwise only if the work itself is idempotent, which is
//! why `notify` is keyed by alert id downstream.
//!
//! Two copies of one task can also be in the same process *at once*: a
//! publisher that lost its connection before the confirm sends the task
//! again, and both copies reach the queue. Looking up finished ids alone
//! would let both run side by side (neither is finished yet), so a task is
//! claimed while it runs ([`FinishedTasks::claim`]) and a second copy that
//! arrives meanwhile is a duplicate too. Acking that copy is safe: the
//! running one ends done, re-routed to a retry tier, dead-lettered, or
//! (aborted with its connection) handed back by the broker.

use std::{
    collections::{HashSet, VecDeque},
    sync::{Arc, Mutex},
};

/// Finished task ids, most recent `capacity` of them. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct FinishedTasks {
    /// Shared by every clone.
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    /// Most ids kept.
    capacity: usize,
    /// The remembered ids (one allocation per id, shared with `order`).
    ids: HashSet<Arc<str>>,
    /// The same ids, oldest first, for eviction.
    order: VecDeque<Arc<str>>,
    /// Ids of the tasks running now (claimed, not yet released).
    running: HashSet<Arc<str>>,
}

/// A task claimed as running in this process; released when dropped.
#[derive(Debug)]
#[must_use = "the claim is released when dropped"]
pub struct Claim {
    tasks: FinishedTasks,
    id: Arc<str>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.tasks.lock().running.remove(&self.id);
    }
}

impl FinishedTasks {
    /// Remembers up to `capacity` ids (at least 1).
    pub fn new(capacity: usize) -> Self {
        FinishedTasks {
            inner: Arc::new(Mutex::new(Inner {
                capacity: capacity.max(1),
                ids: HashSet::new(),
                order: VecDeque::new(),
                running: HashSet::new(),
            })),
        }
    }

    /// `true` if `id` finished recently.
    pub fn contains(&self, id: &str) -> bool {
        self.lock().ids.contains(id)
    }

    /// Claims `id` as running in this process: `None` when it finished
    /// recently or another copy of it is running now (a duplicate).
    pub fn claim(&self, id: &str) -> Option<Claim> {
        let mut inner = self.lock();
        if inner.ids.contains(id) || inner.running.contains(id) {
            return None;
        }
        let id: Arc<str> = Arc::from(id);
        inner.running.insert(id.clone());
        Some(Claim {
            tasks: self.clone(),
            id,
        })
    }

    /// Records `id` as finished; `false` if it already was.
    pub fn insert(&self, id: &str) -> bool {
        let mut inner = self.lock();
        if inner.ids.contains(id) {
            return false;
        }
        let id: Arc<str> = Arc::from(id);
        inner.ids.insert(id.clone());
        inner.order.push_back(id);
        while inner.order.len() > inner.capacity {
            if let Some(oldest) = inner.order.pop_front() {
                inner.ids.remove(&oldest);
            }
        }
        true
    }

    /// Ids remembered now.
    pub fn len(&self) -> usize {
        self.lock().order.len()
    }

    /// `true` when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_most_recent_ids_only() {
        let finished = FinishedTasks::new(2);
        assert!(finished.insert("a"));
        assert!(!finished.insert("a"), "a second insert is a duplicate");
        finished.insert("b");
        finished.insert("c");
        assert!(!finished.contains("a"), "the oldest is evicted");
        assert!(finished.contains("b") && finished.contains("c"));
        assert_eq!(finished.len(), 2);
    }

    #[test]
    fn a_running_task_is_claimed_once_until_released() {
        let finished = FinishedTasks::new(8);
        let claim = finished.claim("a").expect("nothing runs yet");
        assert!(finished.claim("a").is_none(), "a copy while it runs");
        assert!(finished.claim("b").is_some(), "other ids are free");
        drop(claim);
        let again = finished.claim("a").expect("released: e.g. the run failed");
        finished.insert("a");
        drop(again);
        assert!(finished.claim("a").is_none(), "finished: a duplicate");
    }
}
