//! Every metric family Firebreak exports, defined in this one file.
//!
//! Owns the [`Metrics`] registry and the small recording methods the intake, the HTTP server and
//! the engine call (`received`, `http_request`, `step`, `matched`, …). Names start with
//! `firebreak_`; labels are bounded by construction — parser ids, route templates, status codes,
//! playbook names, action kinds, outcomes and reasons — and must never carry resource names,
//! finding ids or any other value an attacker or a scanner controls without bound.
//!
//! This module does not serve HTTP (see `crate::server`) and does not log.

use std::fmt;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`Metrics::render`]'s output (OpenMetrics text, which Prometheus
/// scrapes natively).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `{source}`: a parser id or a finding's `source` (a bounded set, see
/// `crate::finding::known_sources`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

/// `{route, status}`: a route template (`/v1/findings/{parser}`) and an HTTP status code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: String,
    status: u16,
}

/// `{playbook}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlaybookLabel {
    playbook: String,
}

/// `{action, status}`: an action kind and a step status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    action: String,
    status: String,
}

/// `{reason}`: a guard's reason code (`kill_switch`, `rate_limit`, `blast_radius`, `exclusion`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

/// `{state}`: an execution state (`matched`, `applying`, `scheduled`, `pending_approval`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

/// `{outcome}`: `ok` / `error` (commits), `loaded` / `rejected` (playbook reloads).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

/// `{operation}`: an SQS API call or step that failed (`receive`, `delete`,
/// `change_visibility`, `get_attributes`, `commit`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: String,
}

/// `{account}`: `base` (the base AWS credentials) or an account id of `aws.accounts`
/// (configuration, so bounded).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AccountLabel {
    account: String,
}

/// Firebreak's metric families and the registry that renders them.
///
/// Cheap to share behind an `Arc`; every recording method takes `&self`.
pub struct Metrics {
    registry: Registry,
    findings_received: Family<SourceLabel, Counter>,
    findings_rejected: Family<SourceLabel, Counter>,
    findings_deduplicated: Family<SourceLabel, Counter>,
    http_requests: Family<HttpLabels, Counter>,
    ingest_batch_size: Histogram,
    ingest_commit_seconds: Histogram,
    ingest_commits: Family<OutcomeLabel, Counter>,
    queue_depth: Gauge,
    matches: Family<PlaybookLabel, Counter>,
    steps: Family<StepLabels, Counter>,
    finding_to_action_seconds: Histogram,
    guard_drops: Family<ReasonLabel, Counter>,
    playbook_reloads: Family<OutcomeLabel, Counter>,
    executions: Family<StateLabel, Gauge>,
    approvals_pending: Gauge,
    sqs_messages: Family<OutcomeLabel, Counter>,
    sqs_errors: Family<OperationLabel, Counter>,
    leases_lost: Counter,
    aws_rate_limited: Family<AccountLabel, Counter>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every family (all under the `firebreak_` prefix).
    #[must_use]
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("firebreak");
        let findings_received = Family::<SourceLabel, Counter>::default();
        let findings_rejected = Family::<SourceLabel, Counter>::default();
        let findings_deduplicated = Family::<SourceLabel, Counter>::default();
        let http_requests = Family::<HttpLabels, Counter>::default();
        // 1, 2, 4, … 8192 findings per commit.
        let ingest_batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        // 0.5 ms … ~8 s per commit.
        let ingest_commit_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 15));
        let ingest_commits = Family::<OutcomeLabel, Counter>::default();
        let queue_depth = Gauge::default();
        let matches = Family::<PlaybookLabel, Counter>::default();
        let steps = Family::<StepLabels, Counter>::default();
        // 10 ms … ~1.5 h from receipt to the first applied action (approvals wait long).
        let finding_to_action_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 20));
        let guard_drops = Family::<ReasonLabel, Counter>::default();
        let playbook_reloads = Family::<OutcomeLabel, Counter>::default();
        let executions = Family::<StateLabel, Gauge>::default();
        let approvals_pending = Gauge::default();
        let sqs_messages = Family::<OutcomeLabel, Counter>::default();
        let sqs_errors = Family::<OperationLabel, Counter>::default();
        let leases_lost = Counter::default();
        let aws_rate_limited = Family::<AccountLabel, Counter>::default();

        registry.register(
            "findings_received",
            "Findings parsed from accepted input, by source",
            findings_received.clone(),
        );
        registry.register(
            "findings_rejected",
            "Input records rejected by a parser, by parser",
            findings_rejected.clone(),
        );
        registry.register(
            "findings_deduplicated",
            "Findings counted as duplicates within the dedup window, by source",
            findings_deduplicated.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template and status code",
            http_requests.clone(),
        );
        registry.register(
            "ingest_batch_size",
            "Findings written per store commit (group commit; the count is the number of commits)",
            ingest_batch_size.clone(),
        );
        registry.register(
            "ingest_commit_seconds",
            "Time to write and commit one ingest group",
            ingest_commit_seconds.clone(),
        );
        registry.register(
            "ingest_commits",
            "Ingest group commits, by outcome",
            ingest_commits.clone(),
        );
        registry.register(
            "queue_depth",
            "Ingest jobs waiting for the store writer",
            queue_depth.clone(),
        );
        registry.register(
            "matches",
            "Executions created by a matching playbook, by playbook",
            matches.clone(),
        );
        registry.register(
            "steps",
            "Playbook steps finished, by action and status",
            steps.clone(),
        );
        registry.register(
            "finding_to_action_seconds",
            "Time from receiving a finding to applying its first action",
            finding_to_action_seconds.clone(),
        );
        registry.register(
            "guard_drops",
            "Executions or steps stopped by a guard, by reason",
            guard_drops.clone(),
        );
        registry.register(
            "playbook_reloads",
            "Playbook set reloads, by outcome",
            playbook_reloads.clone(),
        );
        registry.register(
            "sqs_messages",
            "SQS messages, by outcome: received, deleted (after the commit), poison (every record \
             rejected), poison_deleted (no redrive policy, max_receives reached), retained (left \
             on the queue after a failed commit)",
            sqs_messages.clone(),
        );
        registry.register(
            "sqs_errors",
            "Failed SQS calls and commits of SQS batches, by operation",
            sqs_errors.clone(),
        );
        registry.register(
            "leases_lost",
            "Executions this process stopped working on because another worker took over its \
             lease (its refused writes are logged and audited as lease.lost)",
            leases_lost.clone(),
        );
        registry.register(
            "aws_rate_limited",
            "AWS API requests that waited for their account's rate limit (aws.rate_limit_per_second), \
             by account (base: the base credentials; else an account id of aws.accounts)",
            aws_rate_limited.clone(),
        );

        registry.register(
            "executions",
            "Executions in the store that still have work or wait, by state",
            executions.clone(),
        );
        registry.register(
            "approvals_pending",
            "Executions waiting for a person (held by a guard or awaiting approval)",
            approvals_pending.clone(),
        );

        Self {
            registry,
            findings_received,
            findings_rejected,
            findings_deduplicated,
            http_requests,
            ingest_batch_size,
            ingest_commit_seconds,
            ingest_commits,
            queue_depth,
            matches,
            steps,
            finding_to_action_seconds,
            guard_drops,
            playbook_reloads,
            executions,
            approvals_pending,
            sqs_messages,
            sqs_errors,
            leases_lost,
            aws_rate_limited,
        }
    }

    /// Renders every family in the OpenMetrics text format (see [`CONTENT_TYPE`]).
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; an encoder error would leave a partial page, which
        // the scraper reports, so there is nothing better to do with it here.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// `n` findings from `source` were parsed from accepted input.
    pub fn received(&self, source: &str, n: u64) {
        self.findings_received
            .get_or_create(&SourceLabel {
                source: source.to_owned(),
            })
            .inc_by(n);
    }

    /// `n` records were rejected by `parser` (a parser id or `auto`).
    pub fn rejected(&self, parser: &str, n: u64) {
        self.findings_rejected
            .get_or_create(&SourceLabel {
                source: parser.to_owned(),
            })
            .inc_by(n);
    }

    /// A finding from `source` was a duplicate within the dedup window.
    pub fn deduplicated(&self, source: &str) {
        self.findings_deduplicated
            .get_or_create(&SourceLabel {
                source: source.to_owned(),
            })
            .inc();
    }

    /// An HTTP request on route template `route` was answered with `status`.
    pub fn http_request(&self, route: &str, status: u16) {
        self.http_requests
            .get_or_create(&HttpLabels {
                route: route.to_owned(),
                status,
            })
            .inc();
    }

    /// One ingest group of `findings` findings was written in `seconds`; `ok` is whether it
    /// committed.
    pub fn commit(&self, findings: usize, seconds: f64, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.ingest_commits
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .inc();
        if ok {
            #[allow(clippy::cast_precision_loss)] // a batch holds far fewer than 2^52 findings
            self.ingest_batch_size.observe(findings as f64);
            self.ingest_commit_seconds.observe(seconds);
        }
    }

    /// How many ingest groups committed so far (`firebreak_ingest_commits_total{outcome="ok"}`,
    /// equal to the count of `firebreak_ingest_batch_size`).
    #[must_use]
    pub fn commits(&self) -> u64 {
        self.ingest_commits
            .get_or_create(&OutcomeLabel {
                outcome: "ok".to_owned(),
            })
            .get()
    }

    /// Sets how many ingest jobs wait for the store writer.
    pub fn set_queue_depth(&self, depth: usize) {
        self.queue_depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// How many executions are in each non-final state (from the store).
    pub fn set_executions(&self, counts: &[(String, i64)]) {
        for (state, n) in counts {
            self.executions
                .get_or_create(&StateLabel {
                    state: state.clone(),
                })
                .set(*n);
            if state == "pending_approval" {
                self.approvals_pending.set(*n);
            }
        }
    }

    /// Playbook `playbook` matched a finding (one execution created).
    pub fn matched(&self, playbook: &str) {
        self.matches
            .get_or_create(&PlaybookLabel {
                playbook: playbook.to_owned(),
            })
            .inc();
    }

    /// A step of action kind `action` finished with `status` (`planned`, `applied`, `failed`,
    /// `skipped`).
    pub fn step(&self, action: &str, status: &str) {
        self.steps
            .get_or_create(&StepLabels {
                action: action.to_owned(),
                status: status.to_owned(),
            })
            .inc();
    }

    /// The first action for a finding was applied `seconds` after it was received.
    pub fn finding_to_action(&self, seconds: f64) {
        self.finding_to_action_seconds.observe(seconds);
    }

    /// A guard stopped work, for `reason` (`kill_switch`, `rate_limit`, `blast_radius`,
    /// `exclusion`, …).
    pub fn guard_drop(&self, reason: &str) {
        self.guard_drops
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// This process lost the lease of an execution and stopped working on it.
    pub fn lease_lost(&self) {
        self.leases_lost.inc();
    }

    /// A playbook reload finished with `outcome` (`loaded` or `rejected`).
    pub fn playbook_reload(&self, outcome: &str) {
        self.playbook_reloads
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// `n` SQS messages had `outcome` (`received`, `deleted`, `poison`, `poison_deleted`,
    /// `retained`). Queue names are not a label: they are configuration, not bounded.
    pub fn sqs_messages(&self, outcome: &str, n: u64) {
        self.sqs_messages
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .inc_by(n);
    }

    /// How many SQS messages had `outcome` so far.
    #[must_use]
    pub fn sqs_message_count(&self, outcome: &str) -> u64 {
        self.sqs_messages
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .get()
    }

    /// An SQS `operation` failed (`receive`, `delete`, `change_visibility`, `get_attributes`,
    /// `commit`).
    pub fn sqs_error(&self, operation: &str) {
        self.sqs_errors
            .get_or_create(&OperationLabel {
                operation: operation.to_owned(),
            })
            .inc();
    }

    /// How many times the SQS `operation` failed so far.
    #[must_use]
    pub fn sqs_error_count(&self, operation: &str) -> u64 {
        self.sqs_errors
            .get_or_create(&OperationLabel {
                operation: operation.to_owned(),
            })
            .get()
    }

    /// An AWS API request of `account` (`base`, or an account id of `aws.accounts`) waited for
    /// the account's rate limit.
    pub fn aws_rate_limited(&self, account: &str) {
        self.aws_rate_limited
            .get_or_create(&AccountLabel {
                account: account.to_owned(),
            })
            .inc();
    }

    /// How many AWS API requests of `account` waited for its rate limit so far.
    #[must_use]
    pub fn aws_rate_limited_count(&self, account: &str) -> u64 {
        self.aws_rate_limited
            .get_or_create(&AccountLabel {
                account: account.to_owned(),
            })
            .get()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_named_firebreak_and_rendered() {
        let m = Metrics::new();
        m.received("falco", 2);
        m.rejected("auto", 1);
        m.deduplicated("falco");
        m.http_request("/v1/findings/{parser}", 202);
        m.commit(3, 0.002, true);
        m.set_queue_depth(4);
        m.matched("stop-cryptominer");
        m.step("kubernetes.scale-to-zero", "applied");
        m.finding_to_action(1.5);
        m.guard_drop("kill_switch");
        m.playbook_reload("loaded");
        m.sqs_messages("deleted", 3);
        m.sqs_error("receive");
        let text = m.render();
        for name in [
            "firebreak_findings_received_total{source=\"falco\"} 2",
            "firebreak_findings_rejected_total{source=\"auto\"} 1",
            "firebreak_findings_deduplicated_total{source=\"falco\"} 1",
            "firebreak_http_requests_total{route=\"/v1/findings/{parser}\",status=\"202\"} 1",
            "firebreak_ingest_batch_size_count 1",
            "firebreak_ingest_commit_seconds_count 1",
            "firebreak_ingest_commits_total{outcome=\"ok\"} 1",
            "firebreak_queue_depth 4",
            "firebreak_matches_total{playbook=\"stop-cryptominer\"} 1",
            "firebreak_steps_total{action=\"kubernetes.scale-to-zero\",status=\"applied\"} 1",
            "firebreak_finding_to_action_seconds_count 1",
            "firebreak_guard_drops_total{reason=\"kill_switch\"} 1",
            "firebreak_playbook_reloads_total{outcome=\"loaded\"} 1",
            "firebreak_sqs_messages_total{outcome=\"deleted\"} 3",
            "firebreak_sqs_errors_total{operation=\"receive\"} 1",
        ] {
            assert!(text.contains(name), "missing `{name}` in:\n{text}");
        }
        assert_eq!(m.commits(), 1);
    }

    #[test]
    fn failed_commits_are_counted_but_not_observed() {
        let m = Metrics::new();
        m.commit(5, 0.1, false);
        assert_eq!(m.commits(), 0);
        assert!(
            m.render()
                .contains("firebreak_ingest_commits_total{outcome=\"error\"} 1")
        );
    }
}
