//! Typed configuration. (Being written.)
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Firebreak's configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Notification settings.
    pub notify: NotifyConfig,
}

/// `notify:` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// Outbound HTTP timeout.
    pub timeout_seconds: u64,
    /// Named webhook endpoints.
    pub webhooks: BTreeMap<String, WebhookEndpoint>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            timeout_seconds: 10,
            webhooks: BTreeMap::new(),
        }
    }
}

/// A named webhook endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookEndpoint {
    /// The URL (a secret: Slack-style URLs carry credentials).
    pub url: crate::redact::Redacted<String>,
}
