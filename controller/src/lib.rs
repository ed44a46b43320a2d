//! The Palisade controller (not built yet: the distribution issue adds the server).
//!
//! Data comes from Kubernetes watches or manifests, becomes `palisade-policy` commands at
//! revisions, and goes out as per-node slice deltas over gRPC to node agents, whose acks come
//! back into rollout state shown by introspection and metrics.
