//! The stream registry: the one open Sync stream of each node on this replica, owned by the
//! sync service (its own lock, a leaf: nothing is taken while it is held). A newer stream
//! of a node replaces the older one; rebalancing asks it to send agents elsewhere.

use std::collections::HashMap;
use std::sync::Mutex;

use palisade_policy::model::Name;
use tokio_util::sync::CancellationToken;

/// An open Sync stream: its number, and how to end it.
#[derive(Clone)]
pub struct Stream {
    pub id: u64,
    /// Cancelled when a newer stream of the same node replaces it.
    pub replaced: CancellationToken,
    /// Cancelled to send the agent to another replica (this one holds more than its share).
    pub moved: CancellationToken,
}

#[derive(Default)]
pub struct Streams {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    open: HashMap<Name, Stream>,
    next: u64,
}

impl Streams {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("stream registry lock poisoned")
    }

    /// A new stream of `node` (one stream per node: an older one is replaced).
    pub fn open(&self, node: &Name) -> Stream {
        let mut inner = self.lock();
        inner.next += 1;
        let stream = Stream {
            id: inner.next,
            replaced: CancellationToken::new(),
            moved: CancellationToken::new(),
        };
        if let Some(older) = inner.open.insert(node.clone(), stream.clone()) {
            older.replaced.cancel();
        }
        stream
    }

    /// Stream `id` of `node` ended (a newer one of the same node stays).
    pub fn close(&self, node: &Name, id: u64) {
        let mut inner = self.lock();
        if inner.open.get(node).is_some_and(|s| s.id == id) {
            inner.open.remove(node);
        }
    }

    /// Agent streams open here.
    pub fn count(&self) -> usize {
        self.lock().open.len()
    }

    /// Send up to `n` agents streaming here to other replicas, those here longest first (not
    /// agents that just arrived); how many were told.
    pub fn move_agents(&self, n: usize) -> usize {
        let inner = self.lock();
        let mut open: Vec<&Stream> = inner
            .open
            .values()
            .filter(|s| !s.moved.is_cancelled())
            .collect();
        open.sort_unstable_by_key(|s| s.id);
        open.iter().take(n).for_each(|s| s.moved.cancel());
        open.len().min(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_stream_replaces_the_older_and_moves_go_oldest_first() {
        let s = Streams::default();
        let (a, b): (Name, Name) = ("a".into(), "b".into());
        let first = s.open(&a);
        let other = s.open(&b);
        let second = s.open(&a);
        assert!(first.replaced.is_cancelled() && !second.replaced.is_cancelled());
        // The replaced stream's end leaves the newer one registered.
        s.close(&a, first.id);
        assert_eq!(s.count(), 2);
        assert_eq!(s.move_agents(1), 1);
        assert!(other.moved.is_cancelled() && !second.moved.is_cancelled());
        // Already told: not counted again.
        assert_eq!(s.move_agents(5), 1);
        assert!(second.moved.is_cancelled());
        s.close(&a, second.id);
        s.close(&b, other.id);
        assert_eq!(s.count(), 0);
    }
}
