//! Kubernetes clients: one `kube::Client` per configured cluster, built once and shared by every
//! `kubernetes.*` action through the action context.
//!
//! The default cluster comes from `kubernetes.url` when set (used as is, without credentials:
//! a local `kubectl proxy`, or the emulator in tests), else from kube's `Config::infer` (the
//! in-cluster service account, else the kubeconfig). Named clusters
//! (`kubernetes.clusters.<name>`) take a URL or a kubeconfig context. Whether a cluster answers
//! is probed once, with a bound, at [`Kube::load`]; a cluster that is not configured or does not
//! answer is left out and [`Kube::unusable`] says why, so the service can say it once at start
//! and Kubernetes actions only plan.
//!
//! TLS goes through rustls with the aws-lc-rs provider, the one the AWS SDK and reqwest use.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use kube::config::KubeConfigOptions;

use crate::config::{KubeClusterConfig, KubernetesConfig};

/// How long the probe of one cluster (`GET /version`) may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The clients of every usable cluster, and why the others are not usable.
#[derive(Clone, Default)]
pub struct Kube {
    default: Option<kube::Client>,
    clusters: BTreeMap<String, kube::Client>,
    /// One line per cluster that is not usable (configured but unreachable, or not configured).
    problems: Vec<String>,
}

impl fmt::Debug for Kube {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kube")
            .field("default", &self.default.is_some())
            .field("clusters", &self.clusters.keys().collect::<Vec<_>>())
            .field("problems", &self.problems)
            .finish()
    }
}

/// Why a cluster named by a finding cannot be acted on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// No client for the default cluster (or for the named one).
    #[error("no Kubernetes cluster is configured or reachable{}", .0.as_deref().map(|c| format!(" for cluster `{c}`")).unwrap_or_default())]
    NotConnected(Option<String>),
    /// Named clusters are configured and the finding names another one.
    #[error("the finding names cluster `{0}`, which is not among kubernetes.clusters ({1})")]
    UnknownCluster(String, String),
}

impl Kube {
    /// Builds a client per configured cluster and probes each once (bounded). Never fails:
    /// what is not usable is recorded for [`Kube::unusable`].
    pub async fn load(cfg: &KubernetesConfig) -> Self {
        let mut kube = Self::default();
        let default = match cfg.url.as_deref().map(str::trim).filter(|u| !u.is_empty()) {
            Some(url) => client_for_url(url),
            None => match kube::Config::infer().await {
                Ok(c) => kube::Client::try_from(c).map_err(|e| e.to_string()),
                Err(e) => Err(format!(
                    "no in-cluster service account and no usable kubeconfig ({e})"
                )),
            },
        };
        match probed(default).await {
            Ok(c) => kube.default = Some(c),
            Err(why) => kube.problems.push(format!("default cluster: {why}")),
        }
        for (name, c) in &cfg.clusters {
            match probed(client_for_cluster(c).await).await {
                Ok(client) => {
                    kube.clusters.insert(name.clone(), client);
                }
                Err(why) => kube.problems.push(format!("cluster `{name}`: {why}")),
            }
        }
        kube
    }

    /// A context with one default cluster at `url`, without a probe (tests against the
    /// emulator).
    ///
    /// # Errors
    /// When the URL is not valid or the client cannot be built.
    pub fn from_url(url: &str) -> Result<Self, String> {
        Ok(Self {
            default: Some(client_for_url(url)?),
            ..Self::default()
        })
    }

    /// The client for a finding's cluster: the named cluster when the finding names one that is
    /// configured, else the default cluster. When named clusters are configured and the
    /// finding names another one, it is refused rather than acted on in the default cluster.
    ///
    /// # Errors
    /// When no client serves that cluster.
    pub fn client(&self, cluster: Option<&str>) -> Result<&kube::Client, ClusterError> {
        if let Some(name) = cluster {
            if let Some(c) = self.clusters.get(name) {
                return Ok(c);
            }
            if !self.clusters.is_empty() {
                let names: Vec<&str> = self.clusters.keys().map(String::as_str).collect();
                return Err(ClusterError::UnknownCluster(
                    name.to_owned(),
                    names.join(", "),
                ));
            }
        }
        self.default
            .as_ref()
            .ok_or_else(|| ClusterError::NotConnected(cluster.map(str::to_owned)))
    }

    /// Why some configured cluster is not usable, one line, if any is not; `None` when every
    /// cluster answered.
    #[must_use]
    pub fn unusable(&self) -> Option<String> {
        if self.problems.is_empty() {
            None
        } else {
            Some(self.problems.join("; "))
        }
    }

    /// Whether any cluster is usable.
    #[must_use]
    pub fn any_usable(&self) -> bool {
        self.default.is_some() || !self.clusters.is_empty()
    }
}

fn client_for_url(url: &str) -> Result<kube::Client, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("kubernetes url is not a valid URL: {e}"))?;
    kube::Client::try_from(kube::Config::new(uri)).map_err(|e| e.to_string())
}

async fn client_for_cluster(c: &KubeClusterConfig) -> Result<kube::Client, String> {
    if let Some(url) = c.url.as_deref().map(str::trim).filter(|u| !u.is_empty()) {
        return client_for_url(url);
    }
    let options = KubeConfigOptions {
        context: c.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = kube::Config::from_kubeconfig(&options)
        .await
        .map_err(|e| format!("kubeconfig: {e}"))?;
    kube::Client::try_from(config).map_err(|e| e.to_string())
}

/// Keeps a client only when its cluster answers `GET /version` within [`PROBE_TIMEOUT`].
async fn probed(client: Result<kube::Client, String>) -> Result<kube::Client, String> {
    let client = client?;
    match tokio::time::timeout(PROBE_TIMEOUT, client.apiserver_version()).await {
        Ok(Ok(_)) => Ok(client),
        Ok(Err(e)) => Err(format!("the API server did not answer: {e}")),
        Err(_) => Err(format!(
            "the API server did not answer within {}s",
            PROBE_TIMEOUT.as_secs()
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_url_is_reported_not_used() {
        let cfg = KubernetesConfig {
            url: Some("http://127.0.0.1:1".to_owned()),
            clusters: BTreeMap::new(),
        };
        let kube = Kube::load(&cfg).await;
        assert!(!kube.any_usable());
        assert!(kube.unusable().unwrap().contains("default cluster"));
        assert_eq!(
            kube.client(None).err(),
            Some(ClusterError::NotConnected(None))
        );
    }

    #[tokio::test]
    async fn a_finding_naming_an_unlisted_cluster_is_refused_when_clusters_are_named() {
        let mut kube = Kube::from_url("http://127.0.0.1:1").unwrap();
        assert!(
            kube.client(Some("any")).is_ok(),
            "no named clusters: default"
        );
        let other = kube.default.clone().unwrap();
        kube.clusters.insert("prod".to_owned(), other);
        assert!(kube.client(Some("prod")).is_ok());
        assert!(matches!(
            kube.client(Some("staging")),
            Err(ClusterError::UnknownCluster(..))
        ));
    }
}
