//! Fitting a slice into maps of fixed capacity. A slice that does not fit is never truncated
//! silently: whole endpoints *fail closed* (isolated in both directions, with no rules, so
//! nothing reaches them or leaves them) until the rest fits, and the caller reports which.
//! Endpoints that need the most rule entries go first, so as few endpoints as possible are
//! affected. The endpoint map itself cannot be fitted this way (an endpoint missing from it
//! is not isolated at all), so too many endpoints is an error: the dataplane keeps what it had.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use super::{lower_with, Identities, MapImage};
use crate::slice::{DirPolicy, NodeSlice};

/// What a dataplane's maps hold, in entries (`None`: unlimited).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capacities {
    pub endpoints: Option<u64>,
    pub identities: Option<u64>,
    pub rules: Option<u64>,
}

impl Capacities {
    pub fn holds(&self, image: &MapImage) -> bool {
        let within = |n: usize, cap: Option<u64>| cap.is_none_or(|c| n as u64 <= c);
        within(image.endpoints.len(), self.endpoints)
            && within(image.identities.len(), self.identities)
            && within(image.rules.len(), self.rules)
    }
}

/// A slice's image as it fits the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fitted {
    pub image: MapImage,
    pub identities: Identities,
    /// Endpoints failed closed for lack of room (empty when the whole slice fits).
    pub failed_closed: BTreeSet<Ipv4Addr>,
    /// Entries the whole slice would need: endpoints, identities, rules.
    pub needed: [usize; 3],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FitError {
    #[error("the slice has {needed} endpoints and the endpoint map holds {capacity}")]
    Endpoints { needed: u64, capacity: u64 },
}

/// The image of `slice` that fits `caps`, numbering identities after `prev` (see
/// [`lower_with`]).
pub fn fit(slice: &NodeSlice, prev: &Identities, caps: &Capacities) -> Result<Fitted, FitError> {
    if let Some(capacity) = caps.endpoints {
        let needed = slice.endpoints.len() as u64;
        if needed > capacity {
            return Err(FitError::Endpoints { needed, capacity });
        }
    }
    let (image, identities) = lower_with(slice, prev);
    let needed = [
        image.endpoints.len(),
        image.identities.len(),
        image.rules.len(),
    ];
    if caps.holds(&image) {
        return Ok(Fitted {
            image,
            identities,
            failed_closed: BTreeSet::new(),
            needed,
        });
    }

    let mut cost: BTreeMap<Ipv4Addr, usize> = slice.endpoints.keys().map(|ip| (*ip, 0)).collect();
    for r in &image.rules {
        *cost.entry(r.endpoint).or_default() += 1;
    }
    let mut order: Vec<(usize, Ipv4Addr)> = cost.into_iter().map(|(ip, c)| (c, ip)).collect();
    order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut order = order.into_iter();
    let mut failed = BTreeSet::new();
    let mut rules_left = image.rules.len();
    loop {
        // Fail closed until the rules would fit (an upper bound: fewer sets can only merge
        // identities), then check everything on the real image.
        while caps.rules.is_some_and(|c| rules_left as u64 > c) {
            let Some((c, ip)) = order.next() else { break };
            failed.insert(ip);
            rules_left -= c;
        }
        let (mut image, identities) = lower_with(&failed_closed(slice, &failed), prev);
        for ip in &failed {
            if let Some(f) = image.endpoints.get_mut(ip) {
                f.fail_closed = true;
            }
        }
        if caps.holds(&image) {
            return Ok(Fitted {
                image,
                identities,
                failed_closed: failed,
                needed,
            });
        }
        match order.next() {
            Some((c, ip)) => {
                failed.insert(ip);
                rules_left -= c;
            }
            // Every endpoint failed closed needs no identities and no rules, and the endpoints
            // fit: unreachable unless a capacity is zero.
            None => {
                return Ok(Fitted {
                    image,
                    identities,
                    failed_closed: failed,
                    needed,
                })
            }
        }
    }
}

/// `slice` with the endpoints in `failed` isolated both ways with no rules, and the sets only
/// they referenced dropped.
fn failed_closed(slice: &NodeSlice, failed: &BTreeSet<Ipv4Addr>) -> NodeSlice {
    let mut out = slice.clone();
    let closed = Arc::new(DirPolicy::default());
    for ip in failed {
        if let Some(e) = out.endpoints.get_mut(ip) {
            e.ingress = Some(closed.clone());
            e.egress = Some(closed.clone());
        }
    }
    let used: BTreeSet<_> = out.endpoints.values().flat_map(|e| e.set_refs()).collect();
    out.sets.retain(|id, _| used.contains(id));
    out
}
