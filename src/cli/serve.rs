//! `firebreak serve`: the long-running service. Wires the store, the playbooks (hot reloaded),
//! the group-commit intake behind the HTTP routes and the SQS pollers, and the durable engine
//! worker; stops gracefully on SIGTERM or Ctrl-C: intake first, then in-flight work, within a
//! bound.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::output;
use crate::action::ActionCtx;
use crate::clients::aws::Aws;
use crate::config::Config;
use crate::engine::RunOptions;
use crate::engine::approval::github::GithubApprovals;
use crate::engine::reload::{Reload, Reloader};
use crate::engine::worker::{Worker, WorkerOptions};
use crate::error::Exit;
use crate::ingest::github::GithubHook;
use crate::ingest::sqs::{SqsPoller, SqsSource};
use crate::ingest::{Intake, IntakeConfig};
use crate::playbook::{LoadError, load_dir};
use crate::server::{AppState, router, serve_http};
use crate::store::Store;
use crate::telemetry::metrics::Metrics;

/// How long shutdown waits for in-flight work before exiting anyway.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(10);

/// `serve` options that override configuration.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Playbook directory (else `playbooks.dir`).
    pub playbooks: Option<PathBuf>,
    /// Listen address (else `server.listen`); `127.0.0.1:0` picks a free port.
    pub listen: Option<String>,
    /// Plan only.
    pub dry_run: bool,
}

/// Checks every `ingest.sqs` entry; all problems are returned.
fn sqs_sources(config: &Config) -> Result<Vec<SqsSource>, Vec<String>> {
    let mut sources = Vec::new();
    let mut problems = Vec::new();
    for (i, q) in config.ingest.sqs.iter().enumerate() {
        match SqsSource::from_config(i, q) {
            Ok(s) => sources.push(s),
            Err(p) => problems.extend(p),
        }
    }
    if problems.is_empty() {
        Ok(sources)
    } else {
        Err(problems)
    }
}

/// Starts one poller per queue when AWS is usable; says loudly when it is not.
async fn start_sqs(
    aws: Option<&Aws>,
    sources: Vec<SqsSource>,
    intake: &Intake,
    metrics: &Arc<Metrics>,
    stop: &watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let Some(aws) = aws.filter(|_| !sources.is_empty()) else {
        return Vec::new();
    };
    if let Some(why) = aws.unusable() {
        output::note(&format!(
            "{why}: SQS intake OFF for {} queue(s)",
            sources.len()
        ));
        return Vec::new();
    }
    let names: Vec<&str> = sources.iter().map(|s| s.queue_name.as_str()).collect();
    output::note(&format!(
        "SQS intake: polling {} queue(s) ({}) in {}",
        sources.len(),
        names.join(", "),
        aws.region().unwrap_or("?")
    ));
    let client = aws.sqs();
    sources
        .into_iter()
        .map(|source| {
            let poller =
                SqsPoller::new(client.clone(), source, intake.clone(), Arc::clone(metrics));
            tokio::spawn(poller.run(stopped(stop.clone())))
        })
        .collect()
}

/// Runs the service until a shutdown signal.
pub fn serve(opts: &ServeOptions, config: &Config) -> Exit {
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(exit) => return exit,
    };
    rt.block_on(run(opts, config))
}

/// Turns SIGTERM and Ctrl-C into the shutdown notice. The SIGTERM handler is installed before
/// this returns (not inside the spawned task): a SIGTERM that arrives just after the service
/// says it is listening must shut it down gracefully, not kill it with the default action.
fn shutdown_signal(tx: watch::Sender<bool>) {
    #[cfg(unix)]
    let sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match sigterm {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            () = term => {}
        }
        tracing::info!("shutdown requested: stopping intake, finishing in-flight work");
        let _ = tx.send(true);
    });
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            break;
        }
    }
}

async fn run(opts: &ServeOptions, config: &Config) -> Exit {
    let store = match super::open_store(config).await {
        Ok(s) => Arc::new(s),
        Err(code) => return code,
    };
    let dir = opts
        .playbooks
        .clone()
        .unwrap_or_else(|| PathBuf::from(&config.playbooks.dir));
    let set = match load_dir(&dir) {
        Ok(set) => set,
        Err(e) => {
            let ds = match e {
                LoadError::Invalid(ds) => ds,
                LoadError::Unreadable(d) => vec![d],
            };
            output::diagnostics(&ds, super::Format::Table);
            output::error(
                "the playbooks have problems; the service did not start",
                Some("fix them, then check with `firebreak playbooks check`"),
            );
            return Exit::Usage;
        }
    };
    let ctx = match ActionCtx::from_config(config) {
        Ok(c) => c,
        Err(e) => {
            output::error(&format!("cannot set up the HTTP client: {e}"), None);
            return Exit::Usage;
        }
    };
    // Always built by the service: playbooks are reloaded, so Kubernetes steps may appear later.
    let ctx = ctx.with_kube(super::kube_clients(config).await);
    let sqs_sources = match sqs_sources(config) {
        Ok(s) => s,
        Err(problems) => {
            for p in &problems {
                output::error(p, None);
            }
            output::error(
                "the SQS intake configuration has problems; the service did not start",
                Some("fix ingest.sqs in the --config file (see config/default.yaml)"),
            );
            return Exit::Usage;
        }
    };
    // AWS is set up only when something needs it: the credential probe may wait seconds on the
    // EC2 metadata service. (A playbook with AWS steps added by a later reload plans only until
    // the service restarts.)
    let metrics = Arc::new(Metrics::new());
    let aws = if super::uses_aws(&set) || !sqs_sources.is_empty() {
        let aws = super::aws_clients(config).await;
        aws.report_to(Arc::clone(&metrics));
        Some(aws)
    } else {
        None
    };
    let ctx = match &aws {
        Some(aws) => ctx.with_aws(aws.clone()),
        None => ctx,
    };
    let ctx = match super::github_client(config, super::uses_github(&set)).await {
        Some(gh) => ctx.with_github(gh),
        None => ctx,
    };
    let dry_run = opts.dry_run || config.engine.dry_run;
    let listen = opts
        .listen
        .clone()
        .unwrap_or_else(|| config.server.listen.clone());
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => {
            output::error(
                &format!("cannot listen on {listen}: {e}"),
                Some("set server.listen or --listen"),
            );
            return Exit::Usage;
        }
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or(listen);

    let (tx, rx) = watch::channel(false);
    shutdown_signal(tx);

    let shared = Arc::new(RwLock::new(Arc::new(set)));
    let wake = Arc::new(Notify::new());
    let (intake, writer) = Intake::start(
        Arc::clone(&store),
        IntakeConfig::from_config(config, Arc::clone(&metrics)),
        Arc::clone(&wake),
    );
    let intake_for_sqs = intake.clone();
    let state = AppState::new(
        intake,
        Arc::clone(&store),
        Arc::clone(&metrics),
        &config.server,
    );
    // Approval through GitHub pull requests: the engine opens and updates them, the webhook
    // route and a poller decide on them.
    let approvals = ctx
        .github
        .clone()
        .map(|gh| GithubApprovals::new(gh, Arc::clone(&store)));
    let state = match &config.github.webhook_secret {
        Some(secret) => state.with_github(GithubHook {
            secret: secret.clone(),
            approvals: approvals.clone(),
            github: ctx.github.clone(),
        }),
        None => state,
    };
    let ready = Arc::clone(&state.ready);
    let pollers = start_sqs(aws.as_ref(), sqs_sources, &intake_for_sqs, &metrics, &rx).await;
    drop(intake_for_sqs);
    let app = router(state);

    let worker = Worker::new(
        Arc::clone(&store),
        Arc::clone(&shared),
        ctx,
        WorkerOptions {
            lease: Duration::from_secs(config.engine.lease_seconds.max(1)),
            concurrency: usize::try_from(config.engine.concurrency.max(1)).unwrap_or(1),
            run: RunOptions {
                dry_run,
                kill_switch: config.engine.kill_switch,
                ..RunOptions::default()
            },
            ..WorkerOptions::default()
        },
    )
    .with_metrics(Arc::clone(&metrics));
    let worker = match &approvals {
        Some(a) => worker.with_approval_channel(Arc::new(a.clone())),
        None => worker,
    };
    let poll_task = approvals.clone().map(|a| {
        let every = Duration::from_secs(config.github.poll_seconds.max(1));
        let stop = stopped(rx.clone());
        tokio::spawn(async move {
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    () = &mut stop => break,
                    () = tokio::time::sleep(every) => {}
                }
                if let Err(e) = a.poll().await {
                    tracing::warn!(error = %e, "cannot poll approval pull requests; trying again");
                }
            }
        })
    });
    // On PostgreSQL, work another replica stored wakes this engine at once, not at its next poll.
    let watch = match store.watch(Arc::clone(&wake)).await {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot LISTEN for other replicas' work; polling for it");
            None
        }
    };
    let worker_task = tokio::spawn({
        let (wake, stop) = (Arc::clone(&wake), stopped(rx.clone()));
        async move { worker.run(wake, stop).await }
    });
    let reload_metrics = Arc::clone(&metrics);
    let reload_task = tokio::spawn(Reloader::new(&dir, Arc::clone(&shared)).run(
        Duration::from_secs(2),
        move |r| {
            reload_metrics.playbook_reload(match r {
                Reload::Swapped { .. } => "swapped",
                _ => "rejected",
            });
        },
        stopped(rx.clone()),
    ));

    let playbooks = shared.read().map(|s| s.playbooks().len()).unwrap_or(0);
    output::note(&format!("listening on {addr}"));
    output::note(&format!(
        "store {}; {playbooks} playbook(s) from {} (reloaded on change)",
        crate::redact::scrub(&config.store.url),
        dir.display()
    ));
    if dry_run {
        output::note("DRY-RUN: every step is planned and recorded, nothing is applied");
    }
    match (&approvals, &config.github.webhook_secret) {
        (Some(_), Some(_)) => output::note(&format!(
            "approval pull requests: decided through POST /v1/github, and polled every {} s",
            config.github.poll_seconds.max(1)
        )),
        (Some(_), None) => output::note(&format!(
            "approval pull requests: no github.webhook_secret_env, so reviews are read by polling \
             every {} s",
            config.github.poll_seconds.max(1)
        )),
        _ => {}
    }
    if config.server.tokens.is_empty() {
        output::note(
            "no server.tokens configured: POST /v1/findings/* answers 401 until FIREBREAK_SERVER__TOKENS is set",
        );
    }
    match store.flag("kill_switch").await {
        Ok(true) => output::note(
            "the kill switch is ON (firebreak pause): nothing will be applied until `firebreak resume`",
        ),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the kill switch"),
    }
    ready.store(true, Ordering::Release);

    let served = serve_http(
        listener,
        app,
        crate::server::HttpLimits::from_config(&config.server),
        stopped(rx),
    )
    .await;
    // HTTP has stopped accepting; the intake writer drains what was acknowledged… (it only acks
    // after commit, so there is nothing unacknowledged to lose) and the worker finishes its round.
    let drained = tokio::time::timeout(SHUTDOWN_BOUND, async {
        // Pollers finish the batch they hold (commit, delete) and drop their intake handles;
        // only then can the writer drain and stop.
        for p in pollers {
            let _ = p.await;
        }
        let _ = writer.await;
        let _ = worker_task.await;
        let _ = reload_task.await;
        if let Some(p) = poll_task {
            let _ = p.await;
        }
    })
    .await;
    if let Some(w) = watch {
        w.abort();
    }
    if drained.is_err() {
        tracing::warn!(
            "in-flight work did not finish within {SHUTDOWN_BOUND:?}; leases expire and another run resumes it"
        );
    }
    match served {
        Ok(()) => {
            output::note("stopped");
            Exit::Ok
        }
        Err(e) => {
            output::error(&format!("the HTTP server failed: {e}"), None);
            Exit::Failure
        }
    }
}
