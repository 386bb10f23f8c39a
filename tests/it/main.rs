//! Firebreak's integration tests: one binary, one module per area (see STYLE.md).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod cli;
mod config;
mod fixtures;
mod notify;
mod parsers;
mod playbooks;
mod support;
