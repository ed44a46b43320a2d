//! Identities: what each address prefix of a slice *is* with respect to the slice's sets (its
//! membership), and the numbers the maps use for memberships.
//!
//! Numbers are kept stable across updates: a membership that persists keeps its number, and a
//! new membership gets a number the previous image does not use. So while the maps move from
//! one image to the next (see [`super::plan`]), a number in an identity entry or a rule key
//! never changes meaning.

use std::collections::{BTreeMap, BTreeSet};

use super::IDENTITY_FIRST;
use crate::net::Prefix;
use crate::slice::{Member, NodeSlice, SetId};

/// One thing an address can be, with respect to the slice's sets.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Atom {
    /// A member of the set.
    In(SetId),
    /// A member of the (named-port) set, naming this port number.
    Port(SetId, u16),
}

/// Everything an address is: the atoms of every set member covering it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Membership(BTreeSet<Atom>);

impl Membership {
    pub(crate) fn atoms(&self) -> impl Iterator<Item = &Atom> {
        self.0.iter()
    }
}

/// The membership of every prefix some set of `slice` mentions: the atoms of itself and of
/// every prefix covering it. Overlapping CIDRs, `except` holes and a pod in many sets are all
/// resolved here, once, so that the longest match of an address finds its whole membership.
pub(crate) fn memberships(slice: &NodeSlice) -> BTreeMap<Prefix, Membership> {
    let mut at_prefix: BTreeMap<Prefix, BTreeSet<Atom>> = BTreeMap::new();
    for (id, set) in &slice.sets {
        for m in &set.members {
            let (p, atom) = match m {
                Member::Net(p) => (*p, Atom::In(*id)),
                Member::Port(ip, port) => (Prefix::host(*ip), Atom::Port(*id, *port)),
            };
            at_prefix.entry(p).or_default().insert(atom);
        }
    }
    // In (address, length) order a prefix comes after every prefix covering it, so a stack of
    // the current chain of covering prefixes suffices.
    let mut stack: Vec<(Prefix, BTreeSet<Atom>)> = Vec::new();
    let mut out = BTreeMap::new();
    for (p, atoms) in at_prefix {
        while stack.last().is_some_and(|(top, _)| !top.covers(p)) {
            stack.pop();
        }
        let mut m = stack.last().map(|(_, m)| m.clone()).unwrap_or_default();
        m.extend(atoms);
        out.insert(p, Membership(m.clone()));
        stack.push((p, m));
    }
    out
}

/// Identity numbers of memberships.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identities {
    ids: BTreeMap<Membership, u32>,
    /// Numbers in use whose membership is not known (read back from maps after a restart, or
    /// ambiguous there): never given to a membership while they may still be in the maps.
    reserved: BTreeSet<u32>,
}

impl Identities {
    pub fn id(&self, m: &Membership) -> Option<u32> {
        self.ids.get(m).copied()
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Membership, u32)> {
        self.ids.iter().map(|(m, id)| (m, *id))
    }

    /// Numbers for `memberships`: the one `prev` gave, when it gave one; otherwise the smallest
    /// number `prev` neither gave nor reserved.
    pub(crate) fn assign<'a>(
        memberships: impl Iterator<Item = &'a Membership>,
        prev: &Identities,
    ) -> Identities {
        let distinct: BTreeSet<&Membership> = memberships.collect();
        let used: BTreeSet<u32> = prev
            .ids
            .values()
            .chain(prev.reserved.iter())
            .copied()
            .collect();
        let mut ids = BTreeMap::new();
        let mut fresh = (IDENTITY_FIRST..).filter(|id| !used.contains(id));
        for m in distinct {
            let id = match prev.ids.get(m) {
                Some(id) => *id,
                None => fresh.next().expect("u32 identities exhausted"),
            };
            ids.insert(m.clone(), id);
        }
        Identities {
            ids,
            reserved: BTreeSet::new(),
        }
    }

    /// What the numbers in maps read back after a restart (`in_maps`, prefix → number) mean,
    /// given the memberships the slice those maps should hold gives the same prefixes. A number
    /// is attributed to a membership when every prefix holding it that the slice still has has
    /// that membership, and no other number claims the membership; every number in the maps is
    /// reserved, so no other membership gets it while it may still be there.
    pub fn infer(slice: &NodeSlice, in_maps: &BTreeMap<Prefix, u32>) -> Identities {
        let wanted = memberships(slice);
        let mut meaning: BTreeMap<u32, Option<&Membership>> = BTreeMap::new();
        for (p, id) in in_maps {
            let Some(m) = wanted.get(p) else { continue };
            meaning
                .entry(*id)
                .and_modify(|seen| {
                    if *seen != Some(m) {
                        *seen = None;
                    }
                })
                .or_insert(Some(m));
        }
        let mut claims: BTreeMap<&Membership, Vec<u32>> = BTreeMap::new();
        for (id, m) in &meaning {
            if let Some(m) = m {
                claims.entry(*m).or_default().push(*id);
            }
        }
        Identities {
            ids: claims
                .into_iter()
                .filter(|(_, ids)| ids.len() == 1)
                .map(|(m, ids)| (m.clone(), ids[0]))
                .collect(),
            reserved: in_maps.values().copied().collect(),
        }
    }
}
