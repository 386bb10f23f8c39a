//! The GitHub client: one `octocrab` instance, built once from `github:` configuration and shared
//! by every `github.*` action (and the approval flow) through the action context.
//!
//! Two ways to authenticate, as GitHub offers them:
//! - a GitHub App installation (`github.app`): octocrab signs a short-lived RS256 JWT with the
//!   App's private key, exchanges it for an installation token
//!   (`POST /app/installations/{id}/access_tokens`) and mints a new one before the cached one
//!   expires (30 s ahead); Firebreak's identity is the App's bot account, `<slug>[bot]`, learnt
//!   from `GET /app`;
//! - a token (`github.token_env`): sent as a bearer token; Firebreak's identity is its user,
//!   learnt from `GET /user`.
//!
//! [`GitHub::load`] builds the client and asks GitHub who it is, once: that proves the
//! credentials work (so the service can say at start when they do not) and gives the login the
//! approval flow must never count as a reviewer ([`GitHub::is_own_login`]). `github.base_url`
//! points it at GitHub Enterprise Server (`https://HOST/api/v3`) or at the emulator in tests.
//!
//! Secrets arrive already read from the environment by `crate::config::load` (the App's key may
//! come from a file, read here); they live in [`Redacted`] values and octocrab's `SecretString`,
//! and no error or log line names them. TLS goes through rustls with the aws-lc-rs provider, the
//! one kube, reqwest and the AWS SDK use; JWTs are signed with aws-lc-rs too.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use octocrab::Octocrab;
use octocrab::models::{AppId, InstallationId};
use serde::Deserialize;

use crate::config::GithubConfig;
use crate::redact::Redacted;

/// How Firebreak authenticates to GitHub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GithubAuth {
    /// A token from `github.token_env`.
    Token,
    /// A GitHub App installation.
    App {
        /// The App's id.
        app_id: u64,
        /// The installation acted as.
        installation_id: u64,
    },
}

/// The GitHub client, with Firebreak's own identity on GitHub. Cheap to clone.
#[derive(Clone)]
pub struct GitHub {
    octo: Arc<Octocrab>,
    login: String,
    auth: GithubAuth,
    base_url: String,
}

impl fmt::Debug for GitHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitHub")
            .field("base_url", &self.base_url)
            .field("login", &self.login)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

/// Why the GitHub client could not be set up. Never carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum GithubSetupError {
    /// `github.app.private_key_file` could not be read.
    #[error("github.app.private_key_file: cannot read {path}: {source}")]
    KeyFile {
        /// The file named in configuration.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The App's private key is not an RSA private key in PEM.
    #[error("github.app: the private key is not an RSA private key in PEM ({0})")]
    BadKey(String),
    /// `github.base_url` is not usable.
    #[error("github.base_url: {0}")]
    BaseUrl(String),
    /// octocrab could not build its HTTP client.
    #[error("cannot build the GitHub client: {0}")]
    Build(String),
    /// GitHub did not answer who Firebreak is: the credentials or the URL are wrong, or GitHub
    /// is unreachable.
    #[error("GitHub did not confirm Firebreak's identity ({call}): {message}")]
    Identity {
        /// The call made (`GET /user`, `GET /app`).
        call: &'static str,
        /// What GitHub (or the transport) said, scrubbed.
        message: String,
    },
}

/// The part of `GET /user` read here.
#[derive(Deserialize)]
struct UserLogin {
    login: String,
}

/// The part of `GET /app` read here.
#[derive(Deserialize)]
struct AppSlug {
    slug: String,
}

impl GitHub {
    /// Builds the client from `cfg` and asks GitHub who Firebreak is. `Ok(None)` when neither a
    /// token nor an App is configured.
    ///
    /// # Errors
    /// When the App's key cannot be read or parsed, the URL is unusable, or GitHub does not
    /// confirm the identity (bad credentials, wrong URL, unreachable).
    pub async fn load(cfg: &GithubConfig) -> Result<Option<Self>, GithubSetupError> {
        let base_url = cfg.base_url.trim().trim_end_matches('/').to_owned();
        let builder = || -> Result<octocrab::OctocrabBuilder<_, _, _, _>, GithubSetupError> {
            let timeout = Some(Duration::from_secs(cfg.timeout_seconds.max(1)));
            Ok(Octocrab::builder()
                .base_uri(base_url.as_str())
                .map_err(|e| GithubSetupError::BaseUrl(e.to_string()))?
                .set_connect_timeout(timeout)
                .set_read_timeout(timeout)
                .set_write_timeout(timeout))
        };
        if let Some(app) = &cfg.app {
            let pem =
                match (&app.private_key, &app.private_key_file) {
                    (Some(key), _) => key.clone(),
                    (None, Some(path)) => std::fs::read_to_string(path)
                        .map(Redacted::new)
                        .map_err(|source| GithubSetupError::KeyFile {
                            path: path.clone(),
                            source,
                        })?,
                    // `config::load` refuses an App without a key; say so if built by hand.
                    (None, None) => {
                        return Err(GithubSetupError::BadKey("no key configured".to_owned()));
                    }
                };
            let key = octocrab::auth::EncodingKey::from_rsa_pem(pem.expose().as_bytes())
                .map_err(|e| GithubSetupError::BadKey(e.to_string()))?;
            let as_app = builder()?
                .app(AppId(app.id), key)
                .build()
                .map_err(|e| GithubSetupError::Build(error_text(&e)))?;
            let slug: AppSlug =
                as_app
                    .get("/app", None::<&()>)
                    .await
                    .map_err(|e| GithubSetupError::Identity {
                        call: "GET /app",
                        message: error_text(&e),
                    })?;
            let octo = as_app
                .installation(InstallationId(app.installation_id))
                .map_err(|e| GithubSetupError::Build(error_text(&e)))?;
            // Mint the first installation token now, so wrong ids fail at start, not mid-step.
            octo.installation_token()
                .await
                .map_err(|e| GithubSetupError::Identity {
                    call: "POST /app/installations/{id}/access_tokens",
                    message: error_text(&e),
                })?;
            return Ok(Some(Self {
                octo: Arc::new(octo),
                login: format!("{}[bot]", slug.slug),
                auth: GithubAuth::App {
                    app_id: app.id,
                    installation_id: app.installation_id,
                },
                base_url,
            }));
        }
        let Some(token) = &cfg.token else {
            return Ok(None);
        };
        let octo = builder()?
            .personal_token(token.expose().clone())
            .build()
            .map_err(|e| GithubSetupError::Build(error_text(&e)))?;
        let user: UserLogin =
            octo.get("/user", None::<&()>)
                .await
                .map_err(|e| GithubSetupError::Identity {
                    call: "GET /user",
                    message: error_text(&e),
                })?;
        Ok(Some(Self {
            octo: Arc::new(octo),
            login: user.login,
            auth: GithubAuth::Token,
            base_url,
        }))
    }

    /// The octocrab client, authenticated (for an App: as the installation).
    #[must_use]
    pub fn octocrab(&self) -> &Octocrab {
        &self.octo
    }

    /// Firebreak's own login on GitHub: the token's user, or the App's bot (`<slug>[bot]`).
    #[must_use]
    pub fn login(&self) -> &str {
        &self.login
    }

    /// Whether `login` is Firebreak itself (GitHub logins are case-insensitive). Approvals by
    /// Firebreak's own identity never count.
    #[must_use]
    pub fn is_own_login(&self, login: &str) -> bool {
        self.login.eq_ignore_ascii_case(login)
    }

    /// How Firebreak authenticates.
    #[must_use]
    pub fn auth(&self) -> GithubAuth {
        self.auth
    }

    /// The API root requests go to.
    #[must_use]
    pub fn base_url(&self) -> &str {
        &self.base_url
    }
}

/// What an octocrab error says, for people: GitHub's message and status, or the transport's
/// error; scrubbed of anything secret-looking.
#[must_use]
pub fn error_text(e: &octocrab::Error) -> String {
    let text = match e {
        octocrab::Error::GitHub { source, .. } => {
            format!("{} (HTTP {})", source.message, source.status_code.as_u16())
        }
        other => {
            // Display of transport errors is terse ("Service error"); the source says why.
            let mut s = other.to_string();
            let mut cause = std::error::Error::source(other);
            while let Some(c) = cause {
                s.push_str(": ");
                s.push_str(&c.to_string());
                cause = c.source();
            }
            s
        }
    };
    crate::redact::scrub(&text).into_owned()
}

/// The HTTP status of an error GitHub answered, if it answered.
#[must_use]
pub fn error_status(e: &octocrab::Error) -> Option<u16> {
    match e {
        octocrab::Error::GitHub { source, .. } => Some(source.status_code.as_u16()),
        _ => None,
    }
}
