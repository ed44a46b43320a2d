//! Real `palisade-controller` replica processes, for everything that runs a group of them:
//! the lab (`palisade-lab`), the load test and the controller's process tests. The caller
//! says where each replica listens, is reached, keeps its state and logs ([`Member`]), and
//! how the group is secured ([`Security`]); the [`Group`] starts each one with the right
//! `--id`, `--peers`, `--bootstrap` and certificate flags, kills, stops or signals it by the
//! PID it started, reaps it, and tails its log. A [`Handle`] asks the replicas who leads,
//! through `palisadectl`'s library (the command line's code), without holding the group.
//!
//! Nothing here depends on the controller's crate: the binary is a path, so the controller's
//! own tests use the kit without a cycle.

mod group;
mod handle;
mod util;

pub use group::{Group, Member, Security, Spec, Start};
pub use handle::{Handle, NoLeader, Rule};
pub use util::{beside_executable, free_port, http_get, stop, sum};
