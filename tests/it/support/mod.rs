//! Test peers: local servers that speak the real protocols.

pub mod kube_api;
pub mod moto;
pub mod receiver;
