//! Palisade's wire API, package `palisade.v1`.
//!
//! Data comes from `palisade-policy` (slices, deltas, digests, verdicts), is converted here
//! ([`convert`]) into the generated protobuf types ([`v1`]) and encoded ([`encode`]) for the
//! agent sync stream and the introspection service; agent acks and nacks, and slices received
//! by agents, come back through the same conversions; [`receive`] decides what a message does
//! to the slice an agent holds. [`v1::FILE_DESCRIPTOR_SET`] feeds server
//! reflection. [`endpoint`] is how every client reaches a controller.

pub mod convert;
pub mod encode;
pub mod endpoint;
pub mod receive;

/// The generated `palisade.v1` messages, clients and servers.
pub mod v1 {
    tonic::include_proto!("palisade.v1");

    /// The compiled descriptors of `palisade.v1` (with comments), for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/palisade_v1_descriptor.bin"));
}

/// The Sync server as the controller runs it (`pre_encoded::sync_server::SyncServer`): its
/// responses are [`Encoded`] `ControllerMessage`s, encoded once per update and shared by every
/// send.
pub mod pre_encoded {
    include!(concat!(env!("OUT_DIR"), "/pre_encoded/palisade.v1.rs"));
}

pub use encode::Encoded;

/// Who a certificate names, by URI subject alternative name (the convention `palisadectl
/// certs` mints and the controller checks).
pub mod identity {
    /// `palisade://node/NAME`: the agent of node NAME; may sync only NAME's slice.
    pub const NODE: &str = "palisade://node/";
    /// `palisade://operator/NAME`: may call introspection.
    pub const OPERATOR: &str = "palisade://operator/";
    /// `palisade://controller`: a controller replica.
    pub const CONTROLLER: &str = "palisade://controller";
    /// `palisade://replica/N`: controller replica N of a Raft group; may speak Raft as N.
    pub const REPLICA: &str = "palisade://replica/";

    pub fn replica_uri(id: u64) -> String {
        format!("{REPLICA}{id}")
    }

    pub fn node_uri(node: &str) -> String {
        format!("{NODE}{node}")
    }

    pub fn operator_uri(name: &str) -> String {
        format!("{OPERATOR}{name}")
    }
}

/// An error with its causes, repeated levels dropped: "transport error: tcp connect error:
/// Connection refused (os error 111)" (tonic's own message says only "transport error").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cause = c.source();
    }
    out
}
