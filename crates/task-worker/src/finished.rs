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
}

impl FinishedTasks {
    /// Remembers up to `capacity` ids (at least 1).
    pub fn new(capacity: usize) -> Self {
        FinishedTasks {
            inner: Arc::new(Mutex::new(Inner {
                capacity: capacity.max(1),
                ids: HashSet::new(),
                order: VecDeque::new(),
            })),
        }
    }

    /// `true` if `id` finished recently.
    pub fn contains(&self, id: &str) -> bool {
        self.lock().ids.contains(id)
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
}
