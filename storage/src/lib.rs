//! Persistence for the controller's Raft group (not built yet: the replication issue adds it).
//!
//! Data comes from raft-rs (entries, hard state, conf state, snapshots) and goes to sled files
//! under typed big-endian keys; on restart it flows back into raft-rs so a replica rejoins
//! without losing committed revisions.
