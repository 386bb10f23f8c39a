//! Intake: how findings arrive and how they are made durable before anyone is told "accepted".
//!
//! Owns the transport side of ingestion: [`Intake`] parses a request body with the parser the
//! route names (outside the writer), queues it on a bounded channel and waits for the one
//! store writer task to commit it. The writer groups every job waiting in the queue (up to
//! `max_batch` findings) into one [`Store::record`] call, i.e. one transaction — group commit —
//! so a thousand concurrent webhook posts cost a handful of fsyncs, not a thousand. Each caller
//! is answered only after the transaction holding its findings committed.
//!
//! This module must not know what bytes *mean* (that is [`crate::finding`]), must not block a
//! caller when the queue is full (it answers [`IntakeError::Busy`] at once), and must never
//! acknowledge input before it is committed. The HTTP route lives in [`http`], the SQS poller
//! in [`sqs`].

pub mod github;
pub mod http;
pub mod sqs;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::finding::{
    Finding, ParseReport, ParserChoice, ParserPermit, Rejection, parse_input_allowed,
};
use crate::store::{IngestBatch, PreparedFinding, Receipt, Store, StoreError, prepare_finding};
use crate::telemetry::metrics::Metrics;

/// The intake of findings `firebreak run` reads from a file or stdin (HTTP findings record
/// `http:<token-name>`, SQS findings `sqs:<queue-name>`).
pub const CLI_INTAKE: &str = "cli";

/// How the intake queues and groups work.
#[derive(Debug, Clone)]
pub struct IntakeConfig {
    /// Jobs (one per submitted payload) that may wait for the writer (`server.queue_capacity`).
    pub queue_capacity: usize,
    /// Bytes of encoded findings that may wait for the writer (`server.queue_bytes`).
    pub queue_bytes: usize,
    /// Most records (findings plus rejected records) merged into one store transaction
    /// (`server.max_batch`); a single larger payload is still written whole, on its own.
    pub max_batch: usize,
    /// Most records (findings plus rejected records) one submitted request may carry
    /// (`server.max_records_per_request`); see [`Intake::submit_allowed`].
    pub max_records: usize,
    /// Duplicates within this window are counted, not stored (`store.dedup_window_seconds`).
    pub dedup_window: Duration,
    /// What a caller refused with [`IntakeError::Busy`] is told to wait.
    pub retry_after: Duration,
    /// Where batch sizes, commit times and queue depth are recorded.
    pub metrics: Arc<Metrics>,
}

impl IntakeConfig {
    /// The intake settings from `cfg`, recording into `metrics`.
    #[must_use]
    pub fn from_config(cfg: &Config, metrics: Arc<Metrics>) -> Self {
        Self {
            queue_capacity: cfg.server.queue_capacity,
            queue_bytes: cfg.server.queue_bytes,
            max_batch: cfg.server.max_batch,
            max_records: cfg.server.max_records_per_request,
            dedup_window: Duration::from_secs(cfg.store.dedup_window_seconds),
            retry_after: Duration::from_secs(1),
            metrics,
        }
    }
}

/// At most this many rejected records of one payload are kept with their reasons (stored and
/// answered); the rest are counted. A body of half a million broken records costs a count,
/// not half a million rows and a 100 MB answer.
pub const REJECTIONS_KEPT: usize = 100;

/// What became of one submitted payload, after its findings committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    /// One receipt per parsed finding, in input order.
    pub receipts: Vec<Receipt>,
    /// The first [`REJECTIONS_KEPT`] records that could not be parsed (recorded in the store
    /// too).
    pub rejected: Vec<Rejection>,
    /// Every record that could not be parsed, including those past the first
    /// [`REJECTIONS_KEPT`].
    pub rejected_total: usize,
}

impl Submitted {
    /// Findings stored as new.
    #[must_use]
    pub fn accepted(&self) -> usize {
        self.receipts.iter().filter(|r| !r.duplicate).count()
    }

    /// Findings counted as duplicates of a stored one.
    #[must_use]
    pub fn duplicates(&self) -> usize {
        self.receipts.iter().filter(|r| r.duplicate).count()
    }
}

/// Why a payload was not committed.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The queue to the writer is full: try again after `retry_after`. Nothing was stored.
    #[error("intake queue is full; retry after {}s", retry_after.as_secs())]
    Busy {
        /// How long the caller should wait.
        retry_after: Duration,
    },
    /// The request carries more records than `server.max_records_per_request`. Nothing was
    /// stored.
    #[error(
        "{records} records in one request, over the limit of {limit} (server.max_records_per_request)"
    )]
    TooManyRecords {
        /// Records in the request (findings plus rejected records).
        records: usize,
        /// The limit.
        limit: usize,
    },
    /// The writer is gone (shutting down). Nothing was stored.
    #[error("intake is shutting down")]
    Closed,
    /// The store failed to commit the group holding this payload. Nothing was stored.
    #[error("store failed to commit the findings: {0}")]
    Store(#[source] Arc<StoreError>),
}

/// Where the writer answers one payload's submitter.
type Reply = oneshot::Sender<Result<Submitted, IntakeError>>;

/// One payload waiting for the writer.
struct Job {
    intake: String,
    findings: Vec<Finding>,
    prepared: Vec<PreparedFinding>,
    rejected: Vec<Rejection>,
    /// Rejected records past the first [`REJECTIONS_KEPT`]: counted, not kept.
    rejected_omitted: usize,
    /// Its share of `server.queue_bytes`, given back once it is committed (or failed).
    bytes: OwnedSemaphorePermit,
    reply: Reply,
}

/// A job whose findings moved into a group: how many receipts are its, and whom to answer.
struct Pending {
    findings: usize,
    rejected: Vec<Rejection>,
    rejected_omitted: usize,
    _bytes: OwnedSemaphorePermit,
    reply: Reply,
}

/// The front door for findings: parse, queue, wait for the group commit.
///
/// Cheap to clone (a channel sender); the writer task ends once every clone is dropped and the
/// queue is drained.
#[derive(Debug, Clone)]
pub struct Intake {
    tx: mpsc::Sender<Job>,
    /// Bytes of encoded findings queued or being committed, bounded by `server.queue_bytes`.
    bytes: Arc<Semaphore>,
    queue_bytes: usize,
    max_records: usize,
    retry_after: Duration,
    metrics: Arc<Metrics>,
}

impl Intake {
    /// Starts the writer task over `store` (call inside a Tokio runtime). After each commit it
    /// calls `wake.notify_one()` so the engine looks for new work (a hint only: state lives in
    /// the store).
    ///
    /// The task ends once every [`Intake`] clone is dropped and the queue is drained; await the
    /// handle after the HTTP server stopped so no accepted-but-unanswered job is cut off.
    pub fn start<S: Store>(
        store: Arc<S>,
        cfg: IntakeConfig,
        wake: Arc<Notify>,
    ) -> (Intake, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(cfg.queue_capacity.max(1));
        let queue_bytes = cfg.queue_bytes.clamp(1, Semaphore::MAX_PERMITS);
        let intake = Intake {
            tx,
            bytes: Arc::new(Semaphore::new(queue_bytes)),
            queue_bytes,
            max_records: cfg.max_records,
            retry_after: cfg.retry_after,
            metrics: Arc::clone(&cfg.metrics),
        };
        let writer = Writer {
            store,
            rx,
            max_batch: cfg.max_batch.max(1),
            dedup_window: cfg.dedup_window,
            metrics: cfg.metrics,
            wake,
            carry: None,
        };
        (intake, tokio::spawn(writer.run()))
    }

    /// Whether the writer task still takes work (false once it stopped).
    #[must_use]
    pub fn is_running(&self) -> bool {
        !self.tx.is_closed()
    }

    /// Parses `bytes` with `choice`, queues the result for `intake` (how it arrived:
    /// `http:<token-name>`, `sqs:<queue-name>`) and waits until it is committed.
    ///
    /// # Errors
    /// [`IntakeError::Busy`] at once when the queue is full (nothing was parsed into the store);
    /// [`IntakeError::Store`] when the commit failed; [`IntakeError::Closed`] while shutting down.
    pub async fn submit(
        &self,
        intake: String,
        choice: ParserChoice,
        bytes: &[u8],
    ) -> Result<Submitted, IntakeError> {
        self.submit_allowed(intake, choice, bytes, &|_| Ok(()))
            .await
    }

    /// Like [`Intake::submit`] for a sender that may use only the parsers `allowed` permits (a
    /// scoped ingest token): a record whose parser is refused is rejected with the reason
    /// `allowed` gives (see [`parse_input_allowed`]).
    ///
    /// A request is one unit: with more records (findings plus rejected records) than
    /// `server.max_records_per_request` nothing of it is stored. (The SQS poller, which calls
    /// [`Intake::submit_parsed`], is not capped: SQS bounds a message's size itself.)
    ///
    /// # Errors
    /// As [`Intake::submit`], and [`IntakeError::TooManyRecords`].
    pub async fn submit_allowed(
        &self,
        intake: String,
        choice: ParserChoice,
        bytes: &[u8],
        allowed: &ParserPermit<'_>,
    ) -> Result<Submitted, IntakeError> {
        // Refuse before parsing when there is obviously no room: parsing is the costly part.
        if self.tx.capacity() == 0 {
            return Err(IntakeError::Busy {
                retry_after: self.retry_after,
            });
        }
        let report = parse_input_allowed(&intake, bytes, choice, allowed);
        let records = report.findings.len() + report.rejected.len();
        if records > self.max_records {
            return Err(IntakeError::TooManyRecords {
                records,
                limit: self.max_records,
            });
        }
        self.submit_parsed(intake, report).await
    }

    /// Queues an already parsed `report` for `intake` and waits until it is committed: for
    /// transports that must look at what a payload holds before deciding what to record (the
    /// SQS poller records a poison message's rejection only once). Every finding records
    /// `intake` (its [`Finding::intake`], the store's `findings.intake`). Same errors as
    /// [`Intake::submit`].
    ///
    /// # Errors
    /// [`IntakeError::Busy`], [`IntakeError::Store`] or [`IntakeError::Closed`].
    pub async fn submit_parsed(
        &self,
        intake: String,
        report: ParseReport,
    ) -> Result<Submitted, IntakeError> {
        let mut report = report.with_intake(&intake);
        let rejected_omitted = report.rejected.len().saturating_sub(REJECTIONS_KEPT);
        if rejected_omitted > 0 {
            report.rejected.truncate(REJECTIONS_KEPT);
            report.rejected.shrink_to_fit();
        }
        // Encoded here, in the submitting task, so the one writer only binds and commits.
        let prepared = report
            .findings
            .iter()
            .map(prepare_finding)
            .collect::<Result<Vec<_>, StoreError>>()
            .map_err(|e| IntakeError::Store(Arc::new(e)))?;
        // Bounded by bytes as well as by requests: one request larger than the whole budget
        // still goes through, alone, when nothing else waits.
        let weight = prepared
            .iter()
            .map(|p| p.body.len())
            .sum::<usize>()
            .clamp(1, self.queue_bytes);
        let Ok(bytes) = Arc::clone(&self.bytes)
            .try_acquire_many_owned(u32::try_from(weight).unwrap_or(u32::MAX))
        else {
            return Err(IntakeError::Busy {
                retry_after: self.retry_after,
            });
        };
        let (reply, answer) = oneshot::channel();
        let job = Job {
            intake,
            findings: report.findings,
            prepared,
            rejected: report.rejected,
            rejected_omitted,
            bytes,
            reply,
        };
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                return Err(IntakeError::Busy {
                    retry_after: self.retry_after,
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(IntakeError::Closed),
        }
        self.metrics
            .set_queue_depth(self.tx.max_capacity() - self.tx.capacity());
        answer.await.unwrap_or(Err(IntakeError::Closed))
    }
}

/// The single task that writes ingest groups to the store.
struct Writer<S> {
    store: Arc<S>,
    rx: mpsc::Receiver<Job>,
    max_batch: usize,
    dedup_window: Duration,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
    /// A job taken while filling a group that would have overflowed it; it starts the next one.
    carry: Option<Job>,
}

impl<S: Store> Writer<S> {
    async fn run(mut self) {
        loop {
            let first = match self.carry.take() {
                Some(job) => job,
                None => match self.rx.recv().await {
                    Some(job) => job,
                    None => break,
                },
            };
            let group = self.fill(first);
            self.metrics.set_queue_depth(self.rx.len());
            self.commit(group).await;
        }
        tracing::debug!("intake writer stopped: every sender is gone and the queue is drained");
    }

    /// Takes whatever else is already queued, up to `max_batch` findings, without waiting.
    fn fill(&mut self, first: Job) -> Vec<Job> {
        let mut size = first.findings.len() + first.rejected.len();
        let mut group = vec![first];
        while size < self.max_batch {
            let Ok(job) = self.rx.try_recv() else {
                break;
            };
            let n = job.findings.len() + job.rejected.len();
            if size + n > self.max_batch {
                self.carry = Some(job);
                break;
            }
            size += n;
            group.push(job);
        }
        group
    }

    /// Writes a group: one transaction per distinct intake name in it (the store records one
    /// intake per batch; under load nearly every group has a single one), then answers each job.
    async fn commit(&self, group: Vec<Job>) {
        let mut intakes: Vec<String> = Vec::new();
        for job in &group {
            if !intakes.contains(&job.intake) {
                intakes.push(job.intake.clone());
            }
        }
        let mut jobs: Vec<Option<Job>> = group.into_iter().map(Some).collect();
        for intake in intakes {
            let part: Vec<Job> = jobs
                .iter_mut()
                .filter(|j| j.as_ref().is_some_and(|j| j.intake == intake))
                .filter_map(Option::take)
                .collect();
            self.commit_one(intake, part).await;
        }
        self.wake.notify_one();
    }

    async fn commit_one(&self, intake: String, jobs: Vec<Job>) {
        let mut batch = IngestBatch {
            intake,
            findings: Vec::new(),
            rejected: Vec::new(),
            ..IngestBatch::default()
        };
        let mut pending = Vec::with_capacity(jobs.len());
        for job in jobs {
            pending.push(Pending {
                findings: job.findings.len(),
                rejected: job.rejected.clone(),
                rejected_omitted: job.rejected_omitted,
                _bytes: job.bytes,
                reply: job.reply,
            });
            batch.rejected_omitted += job.rejected_omitted;
            batch.findings.extend(job.findings);
            batch.prepared.extend(job.prepared);
            batch.rejected.extend(job.rejected);
        }
        let sources: Vec<String> = batch.findings.iter().map(|f| f.source.clone()).collect();
        let mut rejected_by: Vec<(String, usize)> = batch
            .rejected
            .iter()
            .map(|r| (r.parser.clone(), 1))
            .collect();
        // Records past the kept ones count on the parser of the last kept one (a payload's
        // records mostly share one).
        if let Some(last) = rejected_by.last_mut() {
            last.1 += batch.rejected_omitted;
        }
        let total = sources.len();

        let started = Instant::now();
        let result = self.store.record(batch, self.dedup_window).await;
        let seconds = started.elapsed().as_secs_f64();

        let receipts = match result {
            Ok(receipts) if receipts.len() == total => receipts,
            Ok(receipts) => {
                // The store broke its contract (one receipt per finding); nobody can be told
                // which of their findings is which, so nobody is told "accepted".
                let e = StoreError::Corrupt {
                    table: "findings",
                    reason: format!(
                        "record returned {} receipts for {total} findings",
                        receipts.len()
                    ),
                };
                self.fail(pending, e, total, seconds);
                return;
            }
            Err(e) => {
                self.fail(pending, e, total, seconds);
                return;
            }
        };
        self.metrics.commit(total, seconds, true);
        for (source, receipt) in sources.iter().zip(&receipts) {
            self.metrics.received(source, 1);
            if receipt.duplicate {
                self.metrics.deduplicated(source);
            }
        }
        for (parser, n) in &rejected_by {
            self.metrics
                .rejected(parser, u64::try_from(*n).unwrap_or(u64::MAX));
        }

        let mut receipts = receipts.into_iter();
        for p in pending {
            let mine: Vec<Receipt> = receipts.by_ref().take(p.findings).collect();
            // A caller that went away (client disconnected) still had its findings committed.
            let rejected_total = p.rejected.len() + p.rejected_omitted;
            let _ = p.reply.send(Ok(Submitted {
                receipts: mine,
                rejected: p.rejected,
                rejected_total,
            }));
        }
    }

    fn fail(&self, pending: Vec<Pending>, e: StoreError, total: usize, seconds: f64) {
        self.metrics.commit(total, seconds, false);
        tracing::error!(
            error = %e,
            jobs = pending.len(),
            findings = total,
            "ingest commit failed; every request in the group is answered with an error"
        );
        let e = Arc::new(e);
        for p in pending {
            let _ = p.reply.send(Err(IntakeError::Store(Arc::clone(&e))));
        }
    }
}
