//! `#[repr(C)]` map keys and values shared by the TC programs and the node agent (not built
//! yet: the dataplane issue adds them).
//!
//! Their layout follows `palisade_policy::lower`: an LPM trie from address to identity, an LPM
//! trie of 96-bit rule keys (endpoint, direction, identity, protocol, port), and endpoint
//! isolation flags by address.
#![no_std]
