//! Palisade's load and scale tests. Synthetic multi-tenant clusters come from [`synth`]
//! (deterministic for a seed); [`compile`] feeds them to the policy engine and measures full
//! compile time, peak memory, incremental latency and slice sizes, reporting JSON or a table
//! on stdout with progress on stderr.

pub mod compile;
pub mod synth;
