//! Encoding what the controller sends, once.
//!
//! An [`Encoded`] is a finished `ControllerMessage`; cloning it shares the bytes, so every send
//! of one update (to each connection of a node, to watchers) reuses one encoding. Within a
//! revision, a member change carried by many nodes' updates (a pod joining a set that thousands
//! of nodes hold) is encoded once too: protobuf messages are concatenations of their fields, so
//! each node's update is its own header and endpoint changes followed by the shared bytes of
//! the member changes, spliced in as already-encoded repeated fields.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use palisade_policy::delta::{MemberChange, SliceDelta};
use palisade_policy::slice::NodeSlice;
use palisade_policy::Digest;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use prost::Message;

use crate::convert;
use crate::v1 as pb;

/// A pre-encoded protobuf message (here: a `ControllerMessage`), sent as is.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Encoded(pub Bytes);

impl Encoded {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Message for Encoded {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // Only ever encoded by the server; decoding goes through the generated types.
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = Bytes::new();
    }
}

// Field numbers of the messages assembled by hand (see sync.proto and types.proto).
const CONTROLLER_MESSAGE_UPDATE: u32 = 2;
const UPDATE_DELTA: u32 = 5;
const SLICE_DELTA_MEMBERS: u32 = 3;

/// Member changes of one revision, each encoded once, keyed by the shared `Arc`.
#[derive(Default)]
pub struct SharedParts {
    members: HashMap<*const MemberChange, (Arc<MemberChange>, Bytes)>,
}

impl SharedParts {
    fn member_change(&mut self, c: &Arc<MemberChange>) -> Bytes {
        let (_, bytes) = self.members.entry(Arc::as_ptr(c)).or_insert_with(|| {
            (
                c.clone(),
                convert::member_change_to_pb(c).encode_to_vec().into(),
            )
        });
        bytes.clone()
    }

    /// Distinct member changes encoded so far.
    pub fn encoded_member_changes(&self) -> usize {
        self.members.len()
    }
}

fn put_length_delimited(buf: &mut BytesMut, tag: u32, body: &[u8]) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(body.len() as u64, buf);
    buf.put_slice(body);
}

/// `ControllerMessage { update }` taking `node` from `from` to `to` (whose digest is `digest`).
pub fn update(
    node: &str,
    from: u64,
    to: u64,
    digest: &Digest,
    delta: &SliceDelta,
    shared: &mut SharedParts,
) -> Encoded {
    let own = convert::delta_to_pb_without_members(delta).encode_to_vec();
    let members: Vec<Bytes> = delta
        .members
        .iter()
        .map(|c| shared.member_change(c))
        .collect();
    let members_len: usize = members
        .iter()
        .map(|m| 1 + encoded_len_varint(m.len() as u64) + m.len())
        .sum();
    let mut delta_bytes = BytesMut::with_capacity(own.len() + members_len);
    delta_bytes.put_slice(&own);
    for m in &members {
        put_length_delimited(&mut delta_bytes, SLICE_DELTA_MEMBERS, m);
    }
    let header = pb::Update {
        node: node.to_string(),
        from_version: from,
        to_version: to,
        digest: digest.to_hex(),
        delta: None,
    }
    .encode_to_vec();
    let mut update = BytesMut::with_capacity(header.len() + delta_bytes.len() + 12);
    update.put_slice(&header);
    put_length_delimited(&mut update, UPDATE_DELTA, &delta_bytes);
    let mut msg = BytesMut::with_capacity(update.len() + 6);
    put_length_delimited(&mut msg, CONTROLLER_MESSAGE_UPDATE, &update);
    Encoded(msg.freeze())
}

/// `ControllerMessage { snapshot }` of `slice` (with its digest).
pub fn snapshot(slice: &NodeSlice) -> Encoded {
    let msg = pb::ControllerMessage {
        msg: Some(pb::controller_message::Msg::Snapshot(pb::Snapshot {
            slice: Some(convert::slice_to_pb(slice)),
        })),
    };
    Encoded(msg.encode_to_vec().into())
}

/// `ControllerMessage { keepalive }`.
pub fn keepalive(keepalive: pb::Keepalive) -> Encoded {
    let msg = pb::ControllerMessage {
        msg: Some(pb::controller_message::Msg::Keepalive(keepalive)),
    };
    Encoded(msg.encode_to_vec().into())
}
