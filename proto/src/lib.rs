//! Palisade's wire API, package `palisade.v1` (not built yet: the distribution issue adds it).
//!
//! Data comes from `palisade-policy` (slices, deltas, digests, verdicts) and goes out as
//! protobuf messages over the agent sync stream and the introspection service; agent acks and
//! nacks come back the same way. This crate will hold the `.proto` files, the generated code
//! and the conversions between them and the policy types.
