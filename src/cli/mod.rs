//! The command line: argument definitions and dispatch. One file per subcommand; only
//! [`output`] prints. stdout carries data, stderr carries messages for people.

mod audit;
mod bench;
mod catalog;
pub mod docs;
mod findings;
pub mod input;
pub mod output;
mod playbooks;
mod rollback;
mod run;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::Config;
use crate::error::Exit;

/// Firebreak acts on what cloud and Kubernetes scanners see: it matches findings against
/// playbooks and plans, approves and applies the remediation, with an audit trail.
#[derive(Debug, Parser)]
#[command(name = "firebreak", version, about, long_about = None, propagate_version = true)]
#[command(
    after_help = "Examples:\n  firebreak run --playbooks playbooks --finding alert.json --dry-run\n  firebreak playbooks check playbooks\n  firebreak findings parse guardduty-export.json --format json"
)]
pub struct Cli {
    /// Configuration file (YAML). Layered over the embedded defaults; `FIREBREAK_*` variables
    /// (e.g. FIREBREAK_ENGINE__DRY_RUN=true) and flags override it.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "FIREBREAK_CONFIG_FILE"
    )]
    pub config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormatArg>,
    /// More log output on stderr (-v: info, -vv: debug, -vvv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Less log output: only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormatArg {
    /// Human-readable.
    Pretty,
    /// JSON lines.
    Json,
}

/// Output formats of data commands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A table for people.
    #[default]
    Table,
    /// One JSON document for programs.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Match findings against playbooks and plan (and, without --dry-run, apply) their steps.
    Run(RunArgs),
    /// Run the service: authenticated HTTP ingest, durable ledger, engine, metrics.
    Serve {
        /// Directory of playbook files (default: `playbooks.dir`).
        #[arg(long, value_name = "DIR")]
        playbooks: Option<PathBuf>,
        /// Listen address (default: `server.listen`).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Plan and record every step, apply nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Work with scanner findings.
    #[command(subcommand)]
    Findings(FindingsCmd),
    /// Check, test and describe playbooks.
    #[command(subcommand)]
    Playbooks(PlaybooksCmd),
    /// List the scanner formats Firebreak parses.
    #[command(subcommand)]
    Parsers(ListCmd),
    /// List the actions playbooks can use, and the permissions they need.
    #[command(subcommand)]
    Actions(ActionsCmd),
    /// Read and verify the tamper-evident audit trail in the store.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// List, approve or deny executions held for a person (break-glass, audited).
    #[command(subcommand)]
    Approvals(ApprovalsCmd),
    /// Undo what an execution applied, last step first (audited).
    Rollback(RollbackArgs),
    /// Cancel an unfinished execution for good (audited)
    ///
    /// For an execution in flight, scheduled, held or parked, e.g. one whose playbook was
    /// removed: it runs no further step. What it already applied stays; `rollback` undoes it.
    Cancel {
        /// The execution id (from `firebreak run`, `approvals list` or `audit list`).
        execution: String,
        /// Why (recorded in the audit trail with your user name).
        #[arg(long)]
        reason: String,
    },
    /// Turn the kill switch on: engines sharing the store park work until `resume`
    ///
    /// Every execution is parked before its next step; its state and timers are kept, and it
    /// continues after `firebreak resume`.
    Pause {
        /// Why (recorded in the audit trail).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Turn the kill switch off.
    Resume {
        /// Why (recorded in the audit trail).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Measure throughput of the hot paths with real input (use a release build).
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Generate the reference pages from the code (playbooks, actions, parser tables).
    #[command(subcommand)]
    Docs(DocsCmd),
}

/// `firebreak docs …`.
#[derive(Debug, Subcommand)]
pub enum DocsCmd {
    /// Write docs/playbooks.md and docs/actions.md, and the generated tables of
    /// docs/parsers.md, from the playbook schema and the action and parser registries.
    Generate {
        /// The docs directory (it must hold parsers.md).
        #[arg(long, value_name = "DIR", default_value = "docs")]
        out: PathBuf,
        /// Write nothing; exit 1 naming every page that differs from what would be written.
        #[arg(long)]
        check: bool,
    },
}

/// `firebreak approvals …`.
#[derive(Debug, Subcommand)]
pub enum ApprovalsCmd {
    /// List executions waiting for a person, oldest first.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Show what an execution waits for: its targets, each step's plan and the plan hash.
    Show {
        /// The execution id (from `approvals list`).
        execution: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Approve a held execution: the exact plan `--plan-hash` names, for a playbook that asks
    /// first; or let an execution a guard held pass its guards once
    Approve {
        /// The execution id (from `approvals list`).
        execution: String,
        /// Why (recorded in the audit trail with your user name).
        #[arg(long)]
        reason: String,
        /// The plan you approve (from `approvals show`); refused when it is not the current
        /// plan. Required for a playbook that asks first.
        #[arg(long, value_name = "HASH")]
        plan_hash: Option<String>,
        /// Who approves (recorded; default: your user name).
        #[arg(long, value_name = "NAME")]
        by: Option<String>,
    },
    /// Cancel a held execution.
    Deny {
        /// The execution id (from `approvals list`).
        execution: String,
        /// Why (recorded in the audit trail with your user name).
        #[arg(long)]
        reason: String,
    },
}

/// `firebreak audit …`.
#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// List records in chain order.
    List {
        /// Only records about this finding.
        #[arg(long, value_name = "ID")]
        finding: Option<String>,
        /// Only records after this sequence number.
        #[arg(long, value_name = "SEQ")]
        after: Option<i64>,
        /// At most this many records.
        #[arg(long)]
        limit: Option<i64>,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Show one record.
    Show {
        /// Its sequence number.
        seq: i64,
    },
    /// Recompute the hash chain; exit 1 if any record was edited, removed or reordered.
    Verify {
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Print every record as JSON lines.
    Export {
        /// JSON lines (the only export format).
        #[arg(long, default_value_t = true)]
        jsonl: bool,
    },
    /// Print an evidence bundle (kubernetes.capture-evidence) that an audit record names.
    Evidence {
        /// Its digest, `sha256:…`, as the step's audit record gives it.
        sha256: String,
    },
}

/// `firebreak bench …`.
#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Decode, parse and canonicalise N records replicated from a real scanner file.
    Parse {
        /// A scanner file (JSON, JSON lines).
        #[arg(value_name = "FILE")]
        file: String,
        /// Records per run.
        #[arg(long, default_value_t = 100_000)]
        records: usize,
        /// Records per parsed body, as requests bring them; 0 parses all records as one input.
        #[arg(long, default_value_t = 1000)]
        chunk: usize,
        /// Timed runs (after one warm-up).
        #[arg(long, default_value_t = 5)]
        iterations: u32,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Durable HTTP ingest: clients post one record of FILE per request to the real router and
    /// a SQLite store in a temp directory (or `--store-url`); reports findings/s, p50/p99 latency
    /// and RSS.
    Ingest {
        /// Store to ingest into instead of a fresh SQLite file (e.g. `postgres://…` of an empty
        /// database you can throw away).
        #[arg(long, value_name = "URL")]
        store_url: Option<String>,
        /// A scanner file; its first record is posted.
        #[arg(value_name = "FILE")]
        file: String,
        /// Requests in total.
        #[arg(long, default_value_t = 50_000)]
        requests: usize,
        /// Concurrent clients.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Findings per request body (JSON lines); 1 is how Falcosidekick posts.
        #[arg(long, default_value_t = 1)]
        per_request: usize,
        /// Requests per second to send at (paced); 0 sends as fast as the clients can.
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Finding received → first action applied: submits findings of FILE one at a time through
    /// the durable intake (SQLite, `synchronous=FULL`) to a running engine whose playbook
    /// notifies a local HTTP receiver; reports p50/p99 and idle and loaded RSS.
    Action {
        /// A scanner file; its first record is submitted.
        #[arg(value_name = "FILE")]
        file: String,
        /// Findings, one after the other.
        #[arg(long, default_value_t = 500)]
        findings: usize,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Evaluate N findings (replicated from FILE) against the playbooks in DIR.
    Match {
        /// Directory of playbooks.
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// A scanner file.
        #[arg(value_name = "FILE")]
        file: String,
        /// Findings per run.
        #[arg(long, default_value_t = 100_000)]
        records: usize,
        /// Timed runs (after one warm-up).
        #[arg(long, default_value_t = 5)]
        iterations: u32,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

/// `firebreak run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Directory of playbook files.
    #[arg(long, value_name = "DIR", default_value = "playbooks")]
    pub playbooks: PathBuf,
    /// Findings to process: a file, or `-` for stdin (JSON, JSON lines, or a scanner report).
    #[arg(long, value_name = "FILE|-")]
    pub finding: String,
    /// Parser for the input, or `auto` to detect it per record.
    #[arg(long, value_name = "ID", default_value = "auto")]
    pub parser: String,
    /// Plan only: show what would change, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not record in the store (`store.url`): no shared history, dedup, guards or locks.
    #[arg(long)]
    pub no_store: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// `firebreak rollback`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The execution id, as `firebreak run` prints it next to each playbook.
    #[arg(value_name = "EXECUTION_ID")]
    pub execution: String,
    /// Show what would be undone; change nothing, record nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Who is rolling back, for the audit trail (default: $USER, else `cli`).
    #[arg(long, value_name = "NAME")]
    pub by: Option<String>,
    /// Roll back again although the audit trail already records a rollback of it.
    #[arg(long)]
    pub force: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// `firebreak findings …`.
#[derive(Debug, Subcommand)]
pub enum FindingsCmd {
    /// Parse scanner output into canonical findings and show them (and any rejected records).
    Parse(ParseArgs),
}

/// `firebreak findings parse`.
#[derive(Debug, Args)]
pub struct ParseArgs {
    /// The input: a file, or `-` for stdin.
    #[arg(value_name = "FILE|-")]
    pub input: String,
    /// Parser, or `auto` to detect it per record.
    #[arg(long, value_name = "ID", default_value = "auto")]
    pub parser: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// `firebreak playbooks …`.
#[derive(Debug, Subcommand)]
pub enum PlaybooksCmd {
    /// Load every playbook in DIR and report every problem with its location.
    Check {
        /// Directory of playbook files.
        #[arg(value_name = "DIR", default_value = "playbooks")]
        dir: PathBuf,
        /// Output format (`json` lists diagnostics as objects).
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Print the JSON Schema of a playbook file (for editors and CI).
    Schema,
    /// Show which playbooks match the findings in FILE, and their dry-run plans.
    Test {
        /// Directory of playbook files.
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// Findings: a file, or `-` for stdin.
        #[arg(value_name = "FINDING_FILE|-")]
        finding: String,
        /// Parser, or `auto`.
        #[arg(long, value_name = "ID", default_value = "auto")]
        parser: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

/// `… list`.
#[derive(Debug, Subcommand)]
pub enum ListCmd {
    /// List them.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

/// `firebreak actions …`.
#[derive(Debug, Subcommand)]
pub enum ActionsCmd {
    /// List them, with whether they are reversible and the permissions they use.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Print the Kubernetes RBAC (ServiceAccount, ClusterRole, binding) the actions need: what
    /// `deploy/rbac.yaml` holds.
    Rbac,
    /// Print the IAM policy (JSON) the AWS actions need: what `deploy/iam-policy.json` holds.
    IamPolicy,
    /// Print the GitHub App permissions and webhook events Firebreak needs (Markdown): what
    /// `deploy/github-app.md` holds.
    GithubApp,
}

/// Runs the parsed command line; returns the process exit code.
pub fn main(cli: Cli) -> ExitCode {
    let env: Vec<(String, String)> = std::env::vars().collect();
    let mut overrides: Vec<(&str, String)> = Vec::new();
    if let Some(f) = cli.log_format {
        overrides.push((
            "log.format",
            match f {
                LogFormatArg::Pretty => "pretty".into(),
                LogFormatArg::Json => "json".into(),
            },
        ));
    }
    if let Command::Run(args) = &cli.command
        && args.dry_run
    {
        overrides.push(("engine.dry_run", "true".into()));
    }
    let config = match crate::config::load(cli.config.as_deref(), &env, &overrides) {
        Ok(c) => c,
        Err(e) => {
            output::config_error(&e);
            return exit(Exit::Usage);
        }
    };
    let mode = if matches!(cli.command, Command::Serve { .. }) {
        crate::telemetry::Mode::Service
    } else {
        crate::telemetry::Mode::Command
    };
    crate::telemetry::init(&config.log, mode, cli.verbose, cli.quiet);
    let code = dispatch(cli.command, &config);
    exit(code)
}

/// The multi-threaded Tokio runtime a command runs on; when it cannot start, the error is
/// printed and the command exits 2.
/// Opens the configured store (`store.url`, `store.password_file`); on failure says why on
/// stderr, the URL scrubbed, and answers the usage exit code.
async fn open_store(config: &Config) -> Result<crate::store::AnyStore, Exit> {
    crate::store::open_with(&config.store.url, config.store.password_file.as_deref())
        .await
        .map_err(|e| {
            output::error(
                &format!(
                    "cannot open the store {}: {e}",
                    crate::redact::scrub(&config.store.url)
                ),
                Some("set store.url (or FIREBREAK_STORE__URL)"),
            );
            Exit::Usage
        })
}

fn runtime() -> Result<tokio::runtime::Runtime, Exit> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // The AWS SDK's deserialisers of large documents (a full Security Hub finding, read on
        // a task of its own by `aws.securityhub.update-finding`) need more than the default
        // 2 MiB of stack, and more than 8 MiB in a debug build.
        .thread_stack_size(16 << 20)
        .build()
        .map_err(|e| {
            output::error(&format!("cannot start the async runtime: {e}"), None);
            Exit::Usage
        })
}

fn exit(code: Exit) -> ExitCode {
    ExitCode::from(code as u8)
}

fn dispatch(command: Command, config: &Config) -> Exit {
    match command {
        Command::Run(args) => run::run(&args, config),
        Command::Serve {
            playbooks,
            listen,
            dry_run,
        } => serve::serve(
            &serve::ServeOptions {
                playbooks,
                listen,
                dry_run,
            },
            config,
        ),
        Command::Findings(FindingsCmd::Parse(args)) => findings::parse(&args),
        Command::Playbooks(PlaybooksCmd::Check { dir, format }) => playbooks::check(&dir, format),
        Command::Playbooks(PlaybooksCmd::Schema) => playbooks::schema(),
        Command::Playbooks(PlaybooksCmd::Test {
            dir,
            finding,
            parser,
            format,
        }) => {
            let args = RunArgs {
                playbooks: dir,
                finding,
                parser,
                dry_run: true,
                // Testing playbooks is a rehearsal: it leaves no trace in the ledger.
                no_store: true,
                format,
            };
            run::run(&args, config)
        }
        Command::Parsers(ListCmd::List { format }) => catalog::parsers(format),
        Command::Actions(ActionsCmd::List { format }) => catalog::actions(format),
        Command::Actions(ActionsCmd::Rbac) => {
            output::text(&crate::action::rbac::kubernetes_rbac());
            Exit::Ok
        }
        Command::Actions(ActionsCmd::IamPolicy) => {
            output::text(&crate::action::iam_policy::aws_iam_policy());
            Exit::Ok
        }
        Command::Actions(ActionsCmd::GithubApp) => {
            output::text(&crate::action::github::app::github_app_markdown());
            Exit::Ok
        }
        Command::Audit(AuditCmd::List {
            finding,
            after,
            limit,
            format,
        }) => audit::list(config, finding, after, limit, format),
        Command::Audit(AuditCmd::Show { seq }) => audit::show(config, seq),
        Command::Audit(AuditCmd::Verify { format }) => audit::verify(config, format),
        Command::Audit(AuditCmd::Export { .. }) => audit::export(config),
        Command::Audit(AuditCmd::Evidence { sha256 }) => audit::evidence(config, &sha256),
        Command::Approvals(ApprovalsCmd::List { format }) => audit::approvals(config, format),
        Command::Approvals(ApprovalsCmd::Show { execution, format }) => {
            audit::approval_show(config, &execution, format)
        }
        Command::Approvals(ApprovalsCmd::Approve {
            execution,
            reason,
            plan_hash,
            by,
        }) => audit::approve(config, &execution, &reason, plan_hash.as_deref(), by),
        Command::Approvals(ApprovalsCmd::Deny { execution, reason }) => {
            audit::deny(config, &execution, &reason)
        }
        Command::Rollback(args) => rollback::rollback(&args, config),
        Command::Cancel { execution, reason } => audit::cancel(config, &execution, &reason),
        Command::Pause { reason } => audit::kill_switch(config, true, reason),
        Command::Resume { reason } => audit::kill_switch(config, false, reason),
        Command::Docs(DocsCmd::Generate { out, check }) => docs::generate(&out, check),
        Command::Bench(BenchCmd::Parse {
            file,
            records,
            chunk,
            iterations,
            format,
        }) => bench::parse(&file, records, chunk, iterations, format),
        Command::Bench(BenchCmd::Ingest {
            store_url,
            file,
            requests,
            concurrency,
            per_request,
            rate,
            format,
        }) => bench::ingest(
            store_url.as_deref(),
            &file,
            requests,
            concurrency,
            per_request,
            rate,
            format,
        ),
        Command::Bench(BenchCmd::Action {
            file,
            findings,
            format,
        }) => bench::action(&file, findings, format),
        Command::Bench(BenchCmd::Match {
            dir,
            file,
            records,
            iterations,
            format,
        }) => bench::matching(&dir, &file, records, iterations, format),
    }
}

/// Whether any playbook of `set` has a `kubernetes.*` step.
/// Whether a step acts on Kubernetes: a `kubernetes.*` action, or another that declares
/// Kubernetes permissions (`aws.iam.rotate-access-key` delivers the new key to a Secret).
fn uses_kubernetes(set: &crate::playbook::PlaybookSet) -> bool {
    set.playbooks().iter().flat_map(|p| &p.steps).any(|s| {
        s.action.kind().starts_with("kubernetes.")
            || s.action
                .permissions()
                .iter()
                .any(|p| p.system == "kubernetes")
    })
}

fn uses_aws(set: &crate::playbook::PlaybookSet) -> bool {
    set.playbooks()
        .iter()
        .flat_map(|p| &p.steps)
        .any(|s| s.action.kind().starts_with("aws."))
}

fn uses_github(set: &crate::playbook::PlaybookSet) -> bool {
    set.playbooks().iter().any(|p| {
        matches!(p.approval, crate::playbook::ApprovalSpec::Github(_))
            || p.steps
                .iter()
                .any(|s| s.action.kind().starts_with("github."))
    })
}

/// Builds the GitHub client once (asking GitHub who Firebreak is) when GitHub access is
/// configured or `needed`, and says so loudly, once, when it is not usable: GitHub actions then
/// only plan. Credentials are never printed.
async fn github_client(config: &Config, needed: bool) -> Option<crate::clients::github::GitHub> {
    match crate::clients::github::GitHub::load(&config.github).await {
        Ok(Some(gh)) => Some(gh),
        Ok(None) => {
            if needed {
                output::note(
                    "no GitHub access is configured (github.app or github.token_env): GitHub \
                     actions plan only",
                );
            }
            None
        }
        Err(e) => {
            output::note(&format!("{e}: GitHub actions plan only"));
            None
        }
    }
}

/// Builds the AWS configuration once (probing the credential chain) and says so loudly, once,
/// when AWS is not usable: AWS actions then only plan.
async fn aws_clients(config: &Config) -> crate::clients::aws::Aws {
    let aws = crate::clients::aws::Aws::load(&config.aws).await;
    if let Some(why) = aws.unusable() {
        output::note(&format!(
            "{}: AWS actions plan only",
            crate::redact::scrub(&why)
        ));
    }
    aws
}

/// Builds the Kubernetes clients once (probing each cluster) and says so loudly, once, when a
/// cluster is not usable: Kubernetes actions then only plan.
async fn kube_clients(config: &Config) -> crate::clients::kube::Kube {
    let kube = crate::clients::kube::Kube::load(&config.kubernetes).await;
    if let Some(why) = kube.unusable() {
        output::note(&format!(
            "{}: Kubernetes actions plan only (set kubernetes.url or run in a cluster)",
            crate::redact::scrub(&why)
        ));
    }
    kube
}
