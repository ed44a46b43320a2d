//! Keeping the TC programs on exactly the local pods' host-side interfaces. Each attachment is
//! a TCX link pinned under `<bpffs>/links/`, named `<ifindex>-<program>-<interface>` (bpffs
//! refuses dots in names): it stays
//! attached when the agent exits, and a restarted agent moves it to its freshly loaded program
//! in one `bpf_link_update`, so a pod is never unfiltered across an agent restart.
//!
//! `PAL_LOCAL` lists the addresses routed to each pod interface (the anti-spoofing check), and
//! `PAL_IFACES` names each interface's endpoints (its addresses: frames of other address
//! families are judged by their isolation); both are written before an interface's programs
//! attach and removed after they detach.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, MapData};
use aya::programs::links::{FdLink, LinkOrder, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{SchedClassifier, TcAttachType};
use aya::Ebpf;
use palisade_ebpf_common::{program_names, IfaceEndpoint, LocalKey, IFACE_ADDRS};
use tracing::{info, warn};

use super::routes::PodInterfaces;

/// The two programs and where each attaches.
const PROGRAMS: [(&str, TcAttachType); 2] = [
    (program_names::FROM_POD, TcAttachType::Ingress),
    (program_names::TO_POD, TcAttachType::Egress),
];

/// One interface the programs are on.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Attached {
    ifindex: u32,
    addrs: BTreeSet<Ipv4Addr>,
}

/// The maps describing pod interfaces to the programs.
pub struct InterfaceMaps {
    pub local: HashMap<MapData, LocalKey, u32>,
    pub ifaces: HashMap<MapData, u32, IfaceEndpoint>,
}

pub struct Attacher {
    bpf: Ebpf,
    local: HashMap<MapData, LocalKey, u32>,
    ifaces: HashMap<MapData, u32, IfaceEndpoint>,
    links: PathBuf,
    attached: BTreeMap<String, Attached>,
}

fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: a NUL-terminated name.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

fn pin_name(iface: &str, ifindex: u32, program: &str) -> String {
    format!("{ifindex}-{program}-{iface}")
}

/// `(interface, ifindex)` of a pin's name.
fn parse_pin(name: &str) -> Option<(&str, u32)> {
    let mut parts = name.splitn(3, '-');
    let index = parts.next()?.parse().ok()?;
    let _program = parts.next()?;
    Some((parts.next()?, index))
}

impl Attacher {
    /// Programs in `bpf` are loaded; `links` is the pin directory. Links pinned there by an
    /// earlier agent are adopted by the next [`Attacher::sync`].
    pub fn new(bpf: Ebpf, maps: InterfaceMaps, links: &Path) -> Result<Attacher, String> {
        let InterfaceMaps { local, ifaces } = maps;
        std::fs::create_dir_all(links)
            .map_err(|e| format!("cannot create {}: {e}", links.display()))?;
        let mut attached: BTreeMap<String, Attached> = BTreeMap::new();
        for entry in std::fs::read_dir(links).map_err(|e| e.to_string())? {
            let name = entry.map_err(|e| e.to_string())?.file_name();
            if let Some((iface, index)) = parse_pin(&name.to_string_lossy()) {
                attached.insert(
                    iface.to_string(),
                    Attached {
                        ifindex: index,
                        addrs: BTreeSet::new(),
                    },
                );
            }
        }
        // What PAL_LOCAL holds, by interface index.
        let mut a = Attacher {
            bpf,
            local,
            ifaces,
            links: links.to_path_buf(),
            attached,
        };
        let held: Vec<LocalKey> = a.local.keys().filter_map(Result::ok).collect();
        for k in held {
            let addr = Ipv4Addr::from(k.addr);
            match a.attached.values_mut().find(|at| at.ifindex == k.ifindex) {
                Some(at) => {
                    at.addrs.insert(addr);
                }
                None => {
                    let _ = a.local.remove(&k);
                }
            }
        }
        let described: Vec<u32> = a.ifaces.keys().filter_map(Result::ok).collect();
        for index in described {
            if !a.attached.values().any(|at| at.ifindex == index) {
                let _ = a.ifaces.remove(&index);
            }
        }
        Ok(a)
    }

    /// Interfaces the programs are on, with their pod addresses.
    pub fn attached(&self) -> PodInterfaces {
        self.attached
            .iter()
            .map(|(n, a)| (n.clone(), a.addrs.clone()))
            .collect()
    }

    /// Put the programs on exactly the interfaces of `wanted`, with its addresses in
    /// PAL_LOCAL. `adopt`: links pinned by an earlier agent are moved to this agent's programs.
    pub fn sync(&mut self, wanted: &PodInterfaces, adopt: bool) {
        let gone: Vec<String> = self
            .attached
            .keys()
            .filter(|n| !wanted.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            self.detach(&name);
        }
        for (name, addrs) in wanted {
            let Some(index) = ifindex(name) else { continue };
            let current = self.attached.get(name).cloned();
            if current.as_ref().is_some_and(|c| c.ifindex != index) {
                // The name now belongs to another interface: the old one is gone.
                self.detach(name);
            }
            let current = self.attached.get(name).cloned();
            let old_addrs = current
                .as_ref()
                .map(|c| c.addrs.clone())
                .unwrap_or_default();
            for a in addrs.difference(&old_addrs) {
                let key = LocalKey {
                    ifindex: index,
                    addr: a.octets(),
                };
                if let Err(e) = self.local.insert(key, 1, 0) {
                    warn!(iface = %name, addr = %a, "cannot record the pod address: {e}");
                }
            }
            let mut endpoint = IfaceEndpoint {
                count: addrs.len() as u32,
                ..IfaceEndpoint::default()
            };
            for (slot, a) in endpoint.addrs.iter_mut().zip(addrs) {
                *slot = a.octets();
            }
            if addrs.len() > IFACE_ADDRS {
                warn!(iface = %name, addrs = addrs.len(), "more pod addresses on one interface than the datapath describes ({IFACE_ADDRS}): its non-IPv4 frames are dropped both ways");
            }
            if let Err(e) = self.ifaces.insert(index, endpoint, 0) {
                warn!(iface = %name, "cannot record the interface's endpoints: {e}");
            }
            let needs_attach = current.is_none() || adopt;
            if needs_attach {
                if let Err(e) = self.attach(name, index) {
                    warn!(iface = %name, "cannot attach the TC programs: {e}");
                    continue;
                }
                if current.is_none() {
                    info!(iface = %name, ifindex = index, pods = %addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", "), "filtering a pod interface");
                }
            }
            for a in old_addrs.difference(addrs) {
                let _ = self.local.remove(&LocalKey {
                    ifindex: index,
                    addr: a.octets(),
                });
            }
            self.attached.insert(
                name.clone(),
                Attached {
                    ifindex: index,
                    addrs: addrs.clone(),
                },
            );
        }
    }

    fn attach(&mut self, iface: &str, index: u32) -> Result<(), String> {
        for (program, attach_type) in PROGRAMS {
            let path = self.links.join(pin_name(iface, index, program));
            let prog: &mut SchedClassifier = self
                .bpf
                .program_mut(program)
                .ok_or_else(|| format!("no program {program} in the object"))?
                .try_into()
                .map_err(|e| format!("{program}: {e}"))?;
            if path.exists() {
                // An earlier agent's link: move it to this program atomically.
                let adopted = PinnedLink::from_pin(&path)
                    .map_err(|e| e.to_string())
                    .map(FdLink::from)
                    .and_then(|l| SchedClassifierLink::try_from(l).map_err(|e| e.to_string()))
                    .and_then(|l| prog.attach_to_link(l).map_err(|e| e.to_string()));
                match adopted {
                    Ok(_) => continue,
                    Err(e) => {
                        warn!(
                            iface,
                            program, "cannot adopt the pinned link ({e}); attaching anew"
                        );
                        let _ = std::fs::remove_file(&path);
                    }
                }
            }
            let id = prog
                .attach_with_options(
                    iface,
                    attach_type,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(|e| format!("{program}: {e}"))?;
            let link = prog.take_link(id).map_err(|e| e.to_string())?;
            let link = FdLink::try_from(link).map_err(|e| e.to_string())?;
            link.pin(&path)
                .map_err(|e| format!("cannot pin {}: {e}", path.display()))?;
        }
        Ok(())
    }

    /// Take the programs off `iface` (if it still exists) and forget its addresses.
    fn detach(&mut self, iface: &str) {
        let Some(at) = self.attached.remove(iface) else {
            return;
        };
        for (program, _) in PROGRAMS {
            let path = self.links.join(pin_name(iface, at.ifindex, program));
            // Unpinned and closed, the link is released and the program leaves the interface.
            if let Ok(link) = PinnedLink::from_pin(&path) {
                let _ = link.unpin();
            } else {
                let _ = std::fs::remove_file(&path);
            }
        }
        for a in &at.addrs {
            let _ = self.local.remove(&LocalKey {
                ifindex: at.ifindex,
                addr: a.octets(),
            });
        }
        let _ = self.ifaces.remove(&at.ifindex);
        info!(iface, "pod interface gone: not filtering it any more");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_round_trip_without_dots() {
        let n = pin_name("veth-a_1", 42, program_names::FROM_POD);
        assert!(!n.contains('.'));
        assert_eq!(parse_pin(&n), Some(("veth-a_1", 42)));
    }
}
