//! SDK clients for the systems Firebreak talks to, and the only place they are configured.
//!
//! Owns how a client is built from configuration (region, endpoint overrides, where credentials
//! come from) and whether credentials were found, so every caller says the same thing when they
//! are missing. It does not decide what to do without them (the service does) and never logs or
//! prints credentials.

pub mod aws;
pub mod aws_rate;
pub mod github;
pub mod kube;
