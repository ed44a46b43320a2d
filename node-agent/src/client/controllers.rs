//! The controller replicas an agent may sync with, and which one it uses. Every replica serves
//! agents from its own applied state (contracts.md §9), so the agent stays on one while it
//! works and moves to the next when it fails or refuses it (a replica cut off from its quorum,
//! or one that has not yet applied what the agent holds). Agents start on different replicas
//! (by a hash of the node name), so a cluster's agents spread over the replicas.

use tonic::transport::Endpoint;

pub(crate) struct Controllers {
    list: Vec<(String, Endpoint)>,
    current: usize,
    /// Addresses that failed since the last session that worked (in this round).
    tried: Vec<bool>,
    /// Rounds in which every address failed, since the last session that worked.
    rounds: u32,
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
        let tried = vec![false; list.len()];
        Controllers {
            list,
            current,
            tried,
            rounds: 0,
        }
    }

    /// The address in use, and its endpoint.
    pub(crate) fn current(&self) -> (&str, &Endpoint) {
        let (a, e) = &self.list[self.current];
        (a, e)
    }

    /// A session with the current one worked.
    pub(crate) fn worked(&mut self) {
        self.tried.fill(false);
        self.rounds = 0;
    }

    /// The current one failed: move to another, chosen at random among those not tried since
    /// the last session that worked (so the agents of a lost replica spread over the
    /// others). Returns how many times every address has failed in a row (0 while some
    /// address is untried: try it now; then back off).
    pub(crate) fn failed(&mut self) -> u32 {
        self.tried[self.current] = true;
        let untried: Vec<usize> = (0..self.list.len()).filter(|i| !self.tried[*i]).collect();
        if untried.is_empty() {
            self.rounds += 1;
            self.tried.fill(false);
            // A new round starts elsewhere than where the last one ended, when it can.
            let others: Vec<usize> = (0..self.list.len())
                .filter(|i| *i != self.current)
                .collect();
            if !others.is_empty() {
                self.current = others[fastrand::usize(..others.len())];
            }
        } else {
            self.current = untried[fastrand::usize(..untried.len())];
        }
        self.rounds
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
        for _ in 0..20 {
            let mut c = Controllers::new("node-a", list(3));
            let mut seen = std::collections::BTreeSet::new();
            seen.insert(c.current().0.to_string());
            let before = c.current().0.to_string();
            assert_eq!(c.failed(), 0);
            assert_ne!(c.current().0, before, "moved to another replica");
            seen.insert(c.current().0.to_string());
            assert_eq!(c.failed(), 0);
            seen.insert(c.current().0.to_string());
            assert_eq!(seen.len(), 3, "every replica tried once before backing off");
            let last = c.current().0.to_string();
            assert_eq!(c.failed(), 1, "every replica failed once: back off");
            assert_ne!(c.current().0, last, "the next round starts elsewhere");
            assert_eq!(c.failed(), 1);
            c.worked();
            assert_eq!(c.failed(), 0);
        }
        let mut one = Controllers::new("x", list(1));
        assert_eq!(one.failed(), 1);
        assert_eq!(one.failed(), 2);
    }

    #[test]
    fn the_agents_of_a_lost_replica_spread_over_the_others() {
        let mut went = [0usize; 3];
        for i in 0..600 {
            let mut c = Controllers::new(&format!("node-{i}"), list(3));
            if c.current == 0 {
                c.failed();
                went[c.current] += 1;
            }
        }
        assert_eq!(went[0], 0);
        assert!(went[1] > 50 && went[2] > 50, "{went:?}");
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
