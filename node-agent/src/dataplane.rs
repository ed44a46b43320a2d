//! Where an agent's policy goes. A dataplane takes a whole slice at a time, all or nothing:
//! when `install` fails it still holds what it held before, so the agent acks only what the
//! dataplane holds. Both dataplanes fit the slice to their capacities the same way
//! (`palisade_policy::lower::fit`): a slice that does not fit fails whole endpoints closed,
//! and the install says which, so the agent reports it with its ack.
//!
//! * [`MemoryDataplane`]: the lowered map image in memory (many agents in one process, tests,
//!   machines without BPF).
//! * [`crate::ebpf::EbpfDataplane`]: the same image in pinned eBPF maps that TC programs on
//!   every local pod's veth consult.

use std::net::Ipv4Addr;
use std::time::Duration;

use palisade_policy::delta::SliceDelta;
use palisade_policy::lower::{self, FitError, Fitted, Identities, MapImage};
use palisade_policy::slice::NodeSlice;

pub use palisade_policy::lower::Capacities;

/// What an install left in force, besides the slice itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Installed {
    /// Endpoints failed closed because the slice does not fit the maps.
    pub failed_closed: Vec<Ipv4Addr>,
    /// Why, when some did: the entries needed against the capacities.
    pub warning: Option<String>,
}

impl Installed {
    pub(crate) fn of(fitted: &Fitted, caps: &Capacities) -> Installed {
        if fitted.failed_closed.is_empty() {
            return Installed::default();
        }
        let [_, identities, rules] = fitted.needed;
        let cap = |c: Option<u64>| c.map_or("unlimited".to_string(), |c| c.to_string());
        Installed {
            failed_closed: fitted.failed_closed.iter().copied().collect(),
            warning: Some(format!(
                "the slice needs {identities} identity and {rules} rule entries, the maps hold {} and {}: {} endpoint(s) failed closed",
                cap(caps.identities),
                cap(caps.rules),
                fitted.failed_closed.len()
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataplaneError {
    #[error(transparent)]
    Fit(#[from] FitError),
    #[error("dataplane failure: {0}")]
    Failed(String),
}

/// Where a dataplane holds the slice, and so whether the node enforces it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Pinned eBPF maps consulted by TC programs on every pod interface: enforced.
    Ebpf,
    /// In memory only (tests, load tests, machines without BPF): enforces nothing.
    Memory,
}

impl Kind {
    pub fn enforces(self) -> bool {
        self == Kind::Ebpf
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Ebpf => "ebpf",
            Kind::Memory => "memory",
        }
    }
}

pub trait Dataplane: Send + 'static {
    /// Where it holds the slice (said in Hello, shown by introspection).
    fn kind(&self) -> Kind;

    fn capacities(&self) -> Capacities;

    /// Hold `target` from now on. `delta` is the change from what it held, when the agent
    /// has one. All or nothing.
    fn install(
        &mut self,
        target: &NodeSlice,
        delta: Option<&SliceDelta>,
    ) -> Result<Installed, DataplaneError>;
}

/// A dataplane that keeps the lowered map image in memory: what the eBPF maps would hold,
/// fitted to capacities the same way. For running many agents in one process (tests, load
/// tests) and on machines without BPF.
pub struct MemoryDataplane {
    image: MapImage,
    identities: Identities,
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
            identities: Identities::default(),
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

impl Dataplane for MemoryDataplane {
    fn kind(&self) -> Kind {
        Kind::Memory
    }

    fn capacities(&self) -> Capacities {
        self.capacities
    }

    fn install(
        &mut self,
        target: &NodeSlice,
        _delta: Option<&SliceDelta>,
    ) -> Result<Installed, DataplaneError> {
        let fitted = lower::fit(target, &self.identities, &self.capacities)?;
        if let Some(d) = self.delay {
            std::thread::sleep(d);
        }
        let installed = Installed::of(&fitted, &self.capacities);
        self.image = fitted.image;
        self.identities = fitted.identities;
        Ok(installed)
    }
}
