//! The controller replicas an agent may sync with, and which one it uses. Every replica serves
//! agents from its own applied state (DESIGN.md contract 9), so the agent stays on one while it
//! works and moves to the next when it fails or refuses it (a replica cut off from its quorum,
//! or one that has not yet applied what the agent holds). Agents start on different replicas
//! (by a hash of the node name), so a cluster's agents spread over the replicas.

use tonic::transport::Endpoint;

pub(crate) struct Controllers {
    list: Vec<(String, Endpoint)>,
    current: usize,
    /// Attempts that failed since the last session that worked.
    failed: usize,
}

/// Which of `replicas` addresses (by position) the agent of `node` starts on: FNV-1a of the
/// name, stable across builds and platforms, so a node starts on the same replica.
pub fn home(node: &str, replicas: usize) -> usize {
    let h = node.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (h % replicas.max(1) as u64) as usize
}

impl Controllers {
    /// `list` must not be empty.
    pub(crate) fn new(node: &str, list: Vec<(String, Endpoint)>) -> Controllers {
        assert!(!list.is_empty(), "at least one controller address");
        let current = home(node, list.len());
        Controllers {
            list,
            current,
            failed: 0,
        }
    }

    /// The address in use, and its endpoint.
    pub(crate) fn current(&self) -> (&str, &Endpoint) {
        let (a, e) = &self.list[self.current];
        (a, e)
    }

    /// A session with the current one worked.
    pub(crate) fn worked(&mut self) {
        self.failed = 0;
    }

    /// The current one failed: move to the next. Returns how many times every address has
    /// failed in a row (0 while some address is untried since the last success: try it now).
    pub(crate) fn failed(&mut self) -> u32 {
        self.failed += 1;
        self.current = (self.current + 1) % self.list.len();
        (self.failed / self.list.len()) as u32
    }

    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(n: usize) -> Vec<(String, Endpoint)> {
        (0..n)
            .map(|i| {
                let a = format!("http://127.0.0.1:{}", 7000 + i);
                (a.clone(), Endpoint::from_shared(a).unwrap())
            })
            .collect()
    }

    #[test]
    fn moves_on_failure_and_backs_off_only_after_a_full_round() {
        let mut c = Controllers::new("node-a", list(3));
        let first = c.current().0.to_string();
        assert_eq!(c.failed(), 0);
        assert_ne!(c.current().0, first, "moved to the next replica");
        assert_eq!(c.failed(), 0);
        assert_eq!(c.failed(), 1, "every replica failed once: back off");
        assert_eq!(c.current().0, first, "round robin");
        c.worked();
        assert_eq!(c.failed(), 0);
    }

    #[test]
    fn nodes_spread_over_replicas() {
        let mut seen = [0usize; 3];
        for i in 0..300 {
            let c = Controllers::new(&format!("node-{i}"), list(3));
            seen[c.current] += 1;
        }
        assert!(seen.iter().all(|n| *n > 60), "{seen:?}");
        let one = Controllers::new("x", list(1));
        assert_eq!(one.current, 0);
    }
}
