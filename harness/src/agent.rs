//! A fake agent: what the node agent does with a stream, without a dataplane or a disk. It
//! holds a slice (kept across reconnections, as the agent's saved state is), says hello with
//! it, takes each message as `palisade_proto::receive` decides, and acks or nacks.

use palisade_policy::model::Name;
use palisade_policy::slice::NodeSlice;
use palisade_policy::Digest;
use palisade_proto::receive::{receive, Received};
use palisade_proto::v1 as pb;
use palisade_proto::v1::agent_message::Msg;
use prost::Message as _;

pub struct Agent {
    pub node: Name,
    pub held: NodeSlice,
    /// The replica its stream is open to.
    pub at: Option<u64>,
    /// Whole slices it installed.
    pub snapshots: u32,
    /// Updates it installed (deltas, and confirmations that moved it to another version).
    pub updates: u32,
}

impl Agent {
    pub fn new(node: &str) -> Agent {
        Agent {
            node: node.into(),
            held: NodeSlice::empty(node),
            at: None,
            snapshots: 0,
            updates: 0,
        }
    }

    /// What its Hello says it holds.
    pub fn holds(&self) -> (u64, Digest) {
        (self.held.version, self.held.digest())
    }

    /// Take one message; the answer, if any.
    pub fn receive(&mut self, bytes: &[u8]) -> Option<pb::AgentMessage> {
        let msg = pb::ControllerMessage::decode(bytes)
            .expect("the controller's message decodes")
            .msg?;
        let ack = |version, digest: Digest| {
            Msg::Ack(pb::Ack {
                version,
                digest: digest.to_hex(),
                ..pb::Ack::default()
            })
        };
        let answer = match receive(&self.held, msg) {
            Received::Nothing => return None,
            Received::Refused { version, why } => Msg::Nack(pb::Nack {
                version,
                error: why,
            }),
            Received::Held { version, digest } => ack(version, digest),
            Received::Install { slice, delta } => {
                match delta {
                    Some(_) => self.updates += 1,
                    None => self.snapshots += 1,
                }
                self.held = slice;
                ack(self.held.version, self.held.digest())
            }
        };
        Some(pb::AgentMessage { msg: Some(answer) })
    }
}
