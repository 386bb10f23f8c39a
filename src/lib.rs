//! Firebreak turns cloud and Kubernetes scanner findings into safe, audited remediation.
//!
//! Data flows one way: bytes arrive through [`ingest`], parsers in [`finding`] turn them into
//! canonical [`finding::Finding`]s, [`playbook`] decides which playbooks match, and
//! [`engine`] plans and applies each playbook step through the [`action`] registry.
//! Only [`cli::output`] prints; everything else returns values.

pub mod action;
pub mod cli;
pub mod clients;
pub mod config;
pub mod engine;
pub mod error;
pub mod finding;
pub mod ingest;
pub mod playbook;
pub mod redact;
pub mod server;
pub mod store;
pub mod telemetry;
