//! The eBPF dataplane: the node's slice in pinned eBPF maps that TC programs on every local
//! pod's host-side veth consult (`dataplane-ebpf/`, built by `build.rs`).
//!
//! Maps and TC links are pinned under the bpffs directory (`--bpffs`), so a stopped agent (or
//! an unreachable controller) leaves the last installed policy enforced, and a restarted agent
//! re-adopts them: it reads the maps back, moves the pinned links to its freshly loaded
//! programs atomically, and its first install of the same slice writes nothing. Every install
//! is the core's make-before-break plan ([`palisade_policy::lower::plan`]) from what the maps
//! hold to the fitted new image, one map write per operation; a failed write undoes the ones
//! before it, so the maps hold the old slice or the new one, and the agent acks only the
//! latter.

mod attach;
pub mod bpffs;
pub mod counters;
mod maps;
pub mod routes;
pub mod testrun;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use aya::maps::{HashMap, IterableMap, LpmTrie, Map, MapData, RingBuf};
use aya::programs::SchedClassifier;
use aya::{Ebpf, EbpfLoader};
use palisade_ebpf_common::{defaults, map_names, program_names};
use palisade_policy::delta::SliceDelta;
use palisade_policy::lower::{self, Identities, MapImage, MapOp};
use palisade_policy::slice::NodeSlice;
use tracing::{debug, info, warn};

use crate::dataplane::{Capacities, Dataplane, DataplaneError, Installed};
use maps::PolicyMaps;

/// The TC programs' object, built by `build.rs` (empty when built with `AYA_BUILD_SKIP=1`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/palisade-tc"));

/// Sizes of the maps the agent creates. Maps already pinned keep the size they were created
/// with (the capacities reported are always what the maps hold).
#[derive(Clone, Debug)]
pub struct EbpfConfig {
    /// A directory on a bpffs (mounted there if it is not one).
    pub bpffs: PathBuf,
    pub endpoints: u32,
    pub identities: u32,
    pub rules: u32,
    pub conntrack: u32,
}

impl EbpfConfig {
    pub fn new(bpffs: impl Into<PathBuf>) -> EbpfConfig {
        EbpfConfig {
            bpffs: bpffs.into(),
            endpoints: defaults::ENDPOINTS,
            identities: defaults::IDENTITIES,
            rules: defaults::RULES,
            conntrack: defaults::CONNTRACK,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error(
        "this agent was built without its eBPF programs (AYA_BUILD_SKIP); run scripts/setup.sh and rebuild"
    )]
    NotBuilt,
    #[error("{0}")]
    Bpffs(String),
    #[error("cannot load the eBPF programs: {0}")]
    Load(String),
    #[error("cannot read the pinned maps: {0}")]
    Read(String),
    #[error("{0}")]
    Attach(String),
}

pub struct EbpfDataplane {
    maps: PolicyMaps,
    image: MapImage,
    /// Identity numbers of the installed image; `None` until the first install, which infers
    /// them from what the maps held at start.
    identities: Option<Identities>,
    capacities: Capacities,
    /// Tells the interface thread to stop.
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn take<T>(bpf: &mut Ebpf, name: &str) -> Result<T, EbpfError>
where
    T: TryFrom<Map>,
    <T as TryFrom<Map>>::Error: std::fmt::Display,
{
    let map = bpf
        .take_map(name)
        .ok_or_else(|| EbpfError::Load(format!("the object has no map {name}")))?;
    T::try_from(map).map_err(|e| EbpfError::Load(format!("{name}: {e}")))
}

fn max_entries(m: &MapData) -> Option<u64> {
    m.info().ok().map(|i| u64::from(i.max_entries()))
}

impl EbpfDataplane {
    /// Load (or re-adopt) the programs and maps pinned under `config.bpffs` and put the
    /// programs on every local pod interface, now and as they come and go.
    pub fn open(config: &EbpfConfig) -> Result<EbpfDataplane, EbpfError> {
        if OBJECT.is_empty() {
            return Err(EbpfError::NotBuilt);
        }
        bpffs::ensure(&config.bpffs).map_err(EbpfError::Bpffs)?;
        let progs_dir = config.bpffs.join("progs");
        std::fs::create_dir_all(&progs_dir)
            .map_err(|e| EbpfError::Bpffs(format!("cannot create {}: {e}", progs_dir.display())))?;
        let maps_dir = config.bpffs.join("maps");
        std::fs::create_dir_all(&maps_dir)
            .map_err(|e| EbpfError::Bpffs(format!("cannot create {}: {e}", maps_dir.display())))?;
        let mut bpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .map_max_entries(map_names::ENDPOINTS, config.endpoints)
            .map_max_entries(map_names::IDENTITIES, config.identities)
            .map_max_entries(map_names::RULES, config.rules)
            .map_max_entries(map_names::CONNTRACK, config.conntrack)
            .map_max_entries(map_names::LOCAL, config.endpoints)
            .map_max_entries(map_names::IFACES, config.endpoints)
            .map_max_entries(map_names::COUNTERS, config.endpoints)
            .load(OBJECT)
            .map_err(|e| EbpfError::Load(e.to_string()))?;
        for name in [program_names::FROM_POD, program_names::TO_POD] {
            let prog: &mut SchedClassifier = bpf
                .program_mut(name)
                .ok_or_else(|| EbpfError::Load(format!("the object has no program {name}")))?
                .try_into()
                .map_err(|e| EbpfError::Load(format!("{name}: {e}")))?;
            prog.load()
                .map_err(|e| EbpfError::Load(format!("{name}: {e}")))?;
            // Pinned for inspection (bpftool) and for BPF_PROG_TEST_RUN in tests; the links,
            // not these pins, keep the programs on the interfaces.
            let pin = progs_dir.join(name);
            let _ = std::fs::remove_file(&pin);
            prog.pin(&pin)
                .map_err(|e| EbpfError::Load(format!("cannot pin {}: {e}", pin.display())))?;
        }
        let maps = PolicyMaps {
            endpoints: take::<HashMap<MapData, _, _>>(&mut bpf, map_names::ENDPOINTS)?,
            identities: take::<LpmTrie<MapData, _, _>>(&mut bpf, map_names::IDENTITIES)?,
            rules: take::<LpmTrie<MapData, _, _>>(&mut bpf, map_names::RULES)?,
        };
        let capacities = Capacities {
            endpoints: max_entries(maps.endpoints.map()),
            identities: max_entries(maps.identities.map()),
            rules: max_entries(maps.rules.map()),
        };
        let image = maps.read().map_err(|e| EbpfError::Read(e.to_string()))?;
        if image.entry_count() > 0 {
            info!(
                endpoints = image.endpoints.len(),
                identities = image.identities.len(),
                rules = image.rules.len(),
                "re-adopting the policy maps pinned under {}",
                config.bpffs.display()
            );
        }
        let interfaces = attach::InterfaceMaps {
            local: take::<HashMap<MapData, _, _>>(&mut bpf, map_names::LOCAL)?,
            ifaces: take::<HashMap<MapData, _, _>>(&mut bpf, map_names::IFACES)?,
        };
        let events = take::<RingBuf<MapData>>(&mut bpf, map_names::EVENTS)
            .map_err(|e| warn!("deny events unavailable: {e}"))
            .ok();
        let attacher = attach::Attacher::new(bpf, interfaces, &config.bpffs.join("links"))
            .map_err(EbpfError::Attach)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = watch::start(attacher, events, stop.clone());
        Ok(EbpfDataplane {
            maps,
            image,
            identities: None,
            capacities,
            stop,
            thread: Some(thread),
        })
    }

    /// Apply `ops` in order; on a failed write, undo the ones before it.
    fn write(&mut self, ops: &[MapOp]) -> Result<(), (usize, aya::maps::MapError)> {
        let mut undo = Vec::with_capacity(ops.len());
        let mut image = self.image.clone();
        for (i, op) in ops.iter().enumerate() {
            if let Err(e) = self.maps.apply(op) {
                for u in undo.iter().rev() {
                    if let Err(e) = self.maps.apply(u) {
                        warn!(undo = %u, "cannot undo a map write: {e}");
                    }
                }
                return Err((i, e));
            }
            if let Some(u) = op.undo(&image) {
                undo.push(u);
            }
            image.apply(op);
        }
        Ok(())
    }
}

/// The same operations with every removal first: needs no room beyond the larger of the two
/// images, at the price of a moment where the removed entries' traffic is already denied.
fn removals_first(ops: &[MapOp]) -> Vec<MapOp> {
    let removal = |op: &&MapOp| {
        matches!(
            op,
            MapOp::DeleteRule(_) | MapOp::DeleteIdentity(_) | MapOp::DeleteEndpoint(_)
        )
    };
    let mut out: Vec<MapOp> = ops.iter().filter(removal).copied().collect();
    out.extend(ops.iter().filter(|op| !removal(op)).copied());
    out
}

impl Dataplane for EbpfDataplane {
    fn kind(&self) -> crate::dataplane::Kind {
        crate::dataplane::Kind::Ebpf
    }

    fn capacities(&self) -> Capacities {
        self.capacities
    }

    fn install(
        &mut self,
        target: &NodeSlice,
        _delta: Option<&SliceDelta>,
    ) -> Result<Installed, DataplaneError> {
        let prev = match &self.identities {
            Some(ids) => ids.clone(),
            None => Identities::infer(target, &self.image.identities),
        };
        let fitted = lower::fit(target, &prev, &self.capacities)?;
        let ops = lower::plan(&self.image, &fitted.image);
        debug!(
            ops = ops.len(),
            version = target.version,
            "writing the policy maps"
        );
        if let Err((at, e)) = self.write(&ops) {
            if !maps::is_full(&e) {
                return Err(DataplaneError::Failed(format!(
                    "map write {at} of {} ({}) failed: {e}",
                    ops.len(),
                    ops[at]
                )));
            }
            // The old and the new image together do not fit: make room first.
            warn!(
                "the maps cannot hold the old and the new policy at once; removing before adding"
            );
            let ops = removals_first(&ops);
            self.write(&ops).map_err(|(at, e)| {
                DataplaneError::Failed(format!(
                    "map write {at} of {} ({}) failed: {e}",
                    ops.len(),
                    ops[at]
                ))
            })?;
        }
        let installed = Installed::of(&fitted, &self.capacities);
        self.image = fitted.image;
        self.identities = Some(fitted.identities);
        Ok(installed)
    }
}

impl Drop for EbpfDataplane {
    /// Stops watching interfaces; maps and links stay pinned, so policy stays enforced.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Remove everything the agent pinned under `bpffs`: the programs leave every interface and
/// the maps are freed once nothing uses them. For uninstalling, and for tests.
pub fn unpin_all(bpffs: &Path) -> std::io::Result<()> {
    for sub in ["links", "maps", "progs"] {
        let dir = bpffs.join(sub);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
    }
    Ok(())
}
