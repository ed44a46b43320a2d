//! The Palisade node agent (not built yet: the distribution and dataplane issues add it).
//!
//! Data comes from the controller's sync stream as slice snapshots and deltas, is lowered by
//! `palisade_policy::lower` to map operations and goes into the dataplane (eBPF maps or an
//! in-memory fake); what the dataplane holds is acked back by version and digest.
