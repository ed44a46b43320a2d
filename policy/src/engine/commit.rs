//! Committing a revision: recompute the touched endpoints, update which address sets each
//! node holds, and assemble each changed node's delta, digest and version.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use rayon::prelude::*;
use rustc_hash::FxHashMap;

use super::nodes::Work;
use super::{compile, Engine, NodeUpdate, Tx, PARALLEL_MIN};
use crate::delta::{diff_endpoint, MemberChange};
use crate::digest::Accumulator;
use crate::model::{Labels, Name, NamedPort, Pod};
use crate::slice::{AddressSet, Endpoint, SetId};

impl Engine {
    /// The pod enforced at `ip` on node `n`, if any.
    pub(super) fn pod_at(&self, n: u32, ip: Ipv4Addr) -> Option<&Pod> {
        let key = self.nodes.list[n as usize].claims.get(&ip)?.first()?;
        let pod = self.pods.get(&key.namespace)?.get(&key.name)?;
        pod.endpoint().is_some().then_some(pod)
    }

    /// The endpoints (with digest parts) at `touched` locations. Rules are computed once per
    /// class of alike pods (namespace, labels, named ports) and shared. Pure, so a large
    /// revision (a full compile) runs on every core; results keep `touched`'s order.
    fn compute_endpoints(
        &self,
        touched: &[(u32, Ipv4Addr)],
    ) -> Vec<Option<(Endpoint, Accumulator)>> {
        let pods: Vec<Option<&Pod>> = touched.iter().map(|&(n, ip)| self.pod_at(n, ip)).collect();
        let mut class_of: FxHashMap<(&Name, &Labels, &[NamedPort]), usize> = FxHashMap::default();
        let mut examples: Vec<&Pod> = Vec::new();
        let classes: Vec<Option<usize>> = pods
            .iter()
            .map(|p| {
                let p = (*p)?;
                let key = (&p.key.namespace, &p.labels, p.named_ports.as_slice());
                Some(*class_of.entry(key).or_insert_with(|| {
                    examples.push(p);
                    examples.len() - 1
                }))
            })
            .collect();
        let directions = |p: &&Pod| {
            let policies = self
                .policies
                .get(&p.key.namespace)
                .into_iter()
                .flat_map(|m| m.values());
            compile::directions(p, policies)
        };
        let per_class: Vec<compile::Directions> = if examples.len() < PARALLEL_MIN {
            examples.iter().map(directions).collect()
        } else {
            examples.par_iter().map(directions).collect()
        };
        // (address, pod, class) of each location.
        let items: Vec<(Ipv4Addr, Option<&Pod>, Option<usize>)> = touched
            .iter()
            .zip(pods)
            .zip(classes)
            .map(|((&(_, ip), pod), class)| (ip, pod, class))
            .collect();
        let one = |&(ip, pod, class): &(Ipv4Addr, Option<&Pod>, Option<usize>)| {
            per_class[class?].endpoint(pod?, ip)
        };
        if items.len() < PARALLEL_MIN {
            items.iter().map(one).collect()
        } else {
            items.par_iter().map(one).collect()
        }
    }

    pub(super) fn commit(&mut self, revision: u64, tx: Tx) -> Vec<NodeUpdate> {
        let track = tx.log.is_some();
        let changes = self.member_changes(&tx);
        let mut work: FxHashMap<u32, Work> = FxHashMap::default();

        // Endpoints, and which sets each node starts or stops holding.
        let mut touched: Vec<(u32, Ipv4Addr)> = tx.touched.into_iter().collect();
        touched.sort_unstable();
        let computed = self.compute_endpoints(&touched);
        for ((n, ip), new) in touched.into_iter().zip(computed) {
            let node = &mut self.nodes.list[n as usize];
            let old = node.endpoints.remove(&ip);
            if old.as_ref().map(|(e, _)| e) == new.as_ref().map(|(e, _)| e) {
                if let Some(old) = old {
                    node.endpoints.insert(ip, old);
                }
                continue;
            }
            let acc = node.acc;
            let w = work.entry(n).or_insert_with(|| Work::new(acc));
            w.changed = true;
            if track {
                w.endpoints.extend(diff_endpoint(
                    ip,
                    old.as_ref().map(|(e, _)| e),
                    new.as_ref().map(|(e, _)| e),
                ));
            }
            if let Some((e, acc)) = old {
                e.set_refs().for_each(|id| node.drop_ref(id, w));
                node.acc.sub(acc);
            }
            if let Some((e, acc)) = new {
                e.set_refs().for_each(|id| node.add_ref(id, w));
                node.acc.add(acc);
                node.endpoints.insert(ip, (e, acc));
            }
        }
        for (&n, w) in work.iter_mut() {
            let node = &mut self.nodes.list[n as usize];
            for (id, &before) in &w.refs_before {
                let after = node.set_refs.contains_key(id);
                let e = self.sets.entries.get_mut(id).expect("held set exists");
                match (before, after) {
                    (false, true) => {
                        e.node_refs.insert(n);
                        node.acc.add(e.acc);
                        w.sets_added.push(*id);
                    }
                    (true, false) => {
                        e.node_refs.remove(&n);
                        let old_acc = changes.get(id).map_or(e.acc, |(_, d)| e.acc.minus(*d));
                        node.acc.sub(old_acc);
                        w.sets_removed.push(*id);
                    }
                    _ => {}
                }
            }
        }
        // Member changes reach every node holding the set before and after.
        for (id, (change, acc)) in &changes {
            for &n in &self.sets.entries[id].node_refs {
                let before = self.nodes.list[n as usize].acc;
                let w = work.entry(n).or_insert_with(|| Work::new(before));
                if w.refs_before.get(id) == Some(&false) {
                    continue; // newly held: sent whole in sets_added
                }
                w.changed = true;
                w.members.push(change.clone());
                self.nodes.list[n as usize].acc.add(*acc);
            }
        }

        let mut snapshots: FxHashMap<SetId, Arc<AddressSet>> = FxHashMap::default();
        let entries = &self.sets.entries;
        let mut snapshot = |id: SetId| {
            snapshots
                .entry(id)
                .or_insert_with(|| Arc::new(entries[&id].snapshot(id)))
                .clone()
        };
        let mut updates: Vec<NodeUpdate> = Vec::with_capacity(work.len());
        for (n, w) in work {
            if !w.changed && w.sets_added.is_empty() && w.sets_removed.is_empty() {
                continue;
            }
            let node = &mut self.nodes.list[n as usize];
            let from_version = node.version;
            node.version = revision;
            let w_acc_before = w.acc_before;
            let delta = if track {
                w.into_delta(&mut snapshot)
            } else {
                Default::default()
            };
            updates.push(NodeUpdate {
                node: node.name.clone(),
                from_version,
                to_version: revision,
                from_accumulator: w_acc_before,
                accumulator: node.acc,
                delta,
            });
        }
        updates.sort_unstable_by(|a, b| a.node.cmp(&b.node));
        for id in tx.released {
            if self
                .sets
                .entries
                .get(&id)
                .is_some_and(|e| e.policy_refs == 0)
            {
                self.sets.remove(id);
            }
        }
        self.revision = revision;
        updates
    }

    /// Net member changes of the revision, with their digest parts; sets created in it are
    /// sent whole instead.
    fn member_changes(&self, tx: &Tx) -> BTreeMap<SetId, (Arc<MemberChange>, Accumulator)> {
        let mut out = BTreeMap::new();
        let Some(log) = &tx.log else { return out };
        for (id, members) in log {
            if tx.created.contains(id) {
                continue;
            }
            let Some(e) = self.sets.entries.get(id) else {
                continue;
            };
            let mut c = MemberChange {
                set: *id,
                added: Vec::new(),
                removed: Vec::new(),
            };
            for (m, &before) in members {
                match (before, e.members.contains_key(m)) {
                    (false, true) => c.added.push(*m),
                    (true, false) => c.removed.push(*m),
                    _ => {}
                }
            }
            if !c.is_empty() {
                let acc = c.digest_part();
                out.insert(*id, (Arc::new(c), acc));
            }
        }
        out
    }
}
