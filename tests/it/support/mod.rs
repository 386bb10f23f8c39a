//! Test peers: local servers that speak the real protocols.

pub mod approvals;
pub mod aws_proxy;
pub mod github_api;
pub mod kube_api;
pub mod moto;
pub mod pg;
pub mod pg_auth;
pub mod receiver;
pub mod securityhub_shim;
