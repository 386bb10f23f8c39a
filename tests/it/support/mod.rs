//! Test peers: local servers that speak the real protocols.

pub mod moto;
pub mod receiver;
