//! Where an agent's policy goes. A dataplane takes a whole slice at a time, all or nothing:
//! when `install` fails it still holds what it held before, so the agent acks only what the
//! dataplane holds. The eBPF dataplane (next issue) and the in-memory one here implement the
//! same trait.

use std::time::Duration;

use palisade_policy::delta::SliceDelta;
use palisade_policy::lower::{self, MapImage};
use palisade_policy::slice::NodeSlice;

/// What a dataplane can hold, in map entries (`None`: unlimited).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capacities {
    pub endpoints: Option<u64>,
    pub identities: Option<u64>,
    pub rules: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataplaneError {
    #[error("the slice needs {needed} {map} entries; the dataplane holds {capacity}")]
    Capacity {
        map: &'static str,
        needed: u64,
        capacity: u64,
    },
    #[error("dataplane failure: {0}")]
    Failed(String),
}

pub trait Dataplane: Send + 'static {
    /// For logs and introspection.
    fn name(&self) -> &'static str;

    fn capacities(&self) -> Capacities;

    /// Hold `target` from now on. `delta` is the change from what it held, when the agent
    /// has one (an implementation may use it to change only what differs, in make-before-break
    /// order). All or nothing.
    fn install(
        &mut self,
        target: &NodeSlice,
        delta: Option<&SliceDelta>,
    ) -> Result<(), DataplaneError>;
}

/// A dataplane that keeps the lowered map image in memory: what the eBPF maps would hold,
/// checked against capacities the same way. For running many agents in one process (tests,
/// load tests) and on machines without BPF.
pub struct MemoryDataplane {
    image: MapImage,
    capacities: Capacities,
    delay: Option<Duration>,
}

impl Default for MemoryDataplane {
    fn default() -> MemoryDataplane {
        MemoryDataplane::new(Capacities::default())
    }
}

impl MemoryDataplane {
    pub fn new(capacities: Capacities) -> MemoryDataplane {
        MemoryDataplane {
            image: MapImage::default(),
            capacities,
            delay: None,
        }
    }

    /// Take `delay` per install, like a dataplane that is slow to program (load tests).
    pub fn with_delay(mut self, delay: Duration) -> MemoryDataplane {
        self.delay = Some(delay);
        self
    }

    pub fn image(&self) -> &MapImage {
        &self.image
    }
}

fn check(map: &'static str, needed: usize, capacity: Option<u64>) -> Result<(), DataplaneError> {
    match capacity {
        Some(c) if needed as u64 > c => Err(DataplaneError::Capacity {
            map,
            needed: needed as u64,
            capacity: c,
        }),
        _ => Ok(()),
    }
}

impl Dataplane for MemoryDataplane {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn capacities(&self) -> Capacities {
        self.capacities
    }

    fn install(
        &mut self,
        target: &NodeSlice,
        _delta: Option<&SliceDelta>,
    ) -> Result<(), DataplaneError> {
        let image = lower::lower(target);
        check("endpoint", image.endpoints.len(), self.capacities.endpoints)?;
        check(
            "identity",
            image.identities.len(),
            self.capacities.identities,
        )?;
        check("rule", image.rules.len(), self.capacities.rules)?;
        if let Some(d) = self.delay {
            std::thread::sleep(d);
        }
        self.image = image;
        Ok(())
    }
}
