//! File helpers shared by every Palisade binary, one per job, so that each job is done one way
//! everywhere.
//!
//! Data comes from the local file system and goes back to it: [`atomic::write`] replaces a
//! file so that a crash leaves the old or the new content (the controller's revision
//! reservation and source state, the agent's saved slice, manifests written by the lab and the
//! load test); [`read::file`] reads at most a given number of bytes and never blocks on a FIFO
//! or device; [`walk::manifests`] lists the manifest files of a directory tree the same way for
//! the controller and `palisadectl` (regular files only, no link cycles, each bad path reported
//! on its own).

pub mod atomic;
pub mod read;
pub mod walk;
