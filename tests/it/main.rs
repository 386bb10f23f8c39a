//! Firebreak's integration tests: one binary, one module per area (see STYLE.md).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod aws_accounts;
mod aws_enforcement;
mod aws_iam;
mod aws_peers;
mod aws_s3;
mod aws_securityhub;
mod cli;
mod config;
mod crash;
mod engine;
mod fixtures;
mod github_actions;
mod github_api;
mod github_approval;
mod github_config;
mod guards;
mod kube_actions;
mod kube_api;
mod notify;
mod parsers;
mod parsers_k8s;
mod parsers_secrets;
mod parsers_securityhub;
mod playbooks;
mod registry;
mod replicas;
mod rollback;
mod secrets;
mod server;
mod service;
mod sqs;
mod store;
mod support;
