//! What one message from the controller does to the slice an agent holds, decided without
//! I/O: the slice to install next (checked against the digest the controller says it has),
//! an ack of what is held already, or a nack saying why not. The node agent saves and
//! installs what this decides; the test harness's agents hold it in memory.

use palisade_policy::delta::{self, SliceDelta};
use palisade_policy::slice::NodeSlice;
use palisade_policy::Digest;

use crate::convert;
use crate::v1::controller_message::Msg;

/// What a message calls for.
#[derive(Debug)]
pub enum Received {
    /// Install `slice` (its version and digest are the message's; `delta`: what changed,
    /// for a snapshot `None`).
    Install {
        slice: NodeSlice,
        delta: Option<SliceDelta>,
    },
    /// The message confirms what is held: ack it.
    Held { version: u64, digest: Digest },
    /// Refused: nack `version` with the reason.
    Refused { version: u64, why: String },
    /// Nothing to answer (a keepalive).
    Nothing,
}

/// What `msg` does to `held`.
pub fn receive(held: &NodeSlice, msg: Msg) -> Received {
    let refused = |version, why: String| Received::Refused { version, why };
    match msg {
        Msg::Keepalive(_) => Received::Nothing,
        Msg::Snapshot(s) => {
            let Some(wire) = s.slice else {
                return refused(0, "snapshot without a slice".into());
            };
            let version = wire.version;
            match convert::slice_from_pb(&wire) {
                Err(e) => refused(version, format!("unreadable snapshot: {e}")),
                Ok((slice, digest)) if slice.digest() != digest => refused(
                    version,
                    format!(
                        "snapshot content has digest {}, not {digest}",
                        slice.digest()
                    ),
                ),
                Ok((slice, _)) => Received::Install { slice, delta: None },
            }
        }
        Msg::Update(u) => {
            let to = u.to_version;
            if u.from_version != held.version {
                return refused(
                    to,
                    format!(
                        "update from version {}, but holding {}",
                        u.from_version, held.version
                    ),
                );
            }
            let Some(digest) = Digest::from_hex(&u.digest) else {
                return refused(to, "update digest is not 64 hex digits".into());
            };
            let delta = match u.delta.as_ref().map(convert::delta_from_pb).transpose() {
                Ok(d) => d.unwrap_or_default(),
                Err(e) => return refused(to, format!("unreadable update: {e}")),
            };
            let mut target = held.clone();
            if let Err(e) = delta::apply(&mut target, &delta) {
                return refused(to, format!("update does not fit the held slice: {e}"));
            }
            target.version = to;
            if target.digest() != digest {
                return refused(
                    to,
                    format!(
                        "slice after the update has digest {}, not {digest}",
                        target.digest()
                    ),
                );
            }
            if delta.is_empty() && held.version == to {
                return Received::Held {
                    version: to,
                    digest,
                };
            }
            Received::Install {
                slice: target,
                delta: Some(delta),
            }
        }
    }
}
