//! `palisadectl`, the user's command line. Manifests come in from files, directories or stdin
//! ([`load`]), are compiled by `palisade-policy` into node slices, and go out as reachability
//! matrices, flow explanations ([`evaluate`]) and slices ([`show`]) on stdout; problems with
//! the input go to stderr; [`lint`] finds valid policies that are probably wrong. `demo` runs the seed scenarios embedded in the binary ([`demo`]).
//! Online, [`remote`] asks a running controller (nodes, waits, explanations; [`fresh`]: how
//! current each answer is, `--consistent`), [`get`] shows
//! the objects its replicated state holds, and [`store`]
//! sends objects to its replicated store (`apply`, `delete`) and lists its replicas.

pub mod certs;
pub mod config;
pub mod demo;
pub mod evaluate;
pub mod explain;
pub mod fresh;
pub mod get;
pub mod held;
pub mod lint;
pub mod load;
pub mod members;
pub mod output;
pub mod remote;
pub mod show;
pub mod store;

/// Why a `palisadectl` command could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The arguments or input do not allow it; the message says what to change.
    #[error("{0}")]
    Usage(String),
    #[error("cannot read {0}: {1}")]
    Read(std::path::PathBuf, std::io::Error),
}
