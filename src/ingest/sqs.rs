//! The SQS intake: one long-polling [`SqsPoller`] per configured queue (`ingest.sqs`), for the
//! EventBridge → SQS path that carries GuardDuty and Security Hub findings.
//!
//! Owns the queue protocol around the shared [`Intake`]; what a body *means* is
//! [`crate::finding`]'s business, and the durable write is the Intake's (the same parse → group
//! commit path as HTTP, intake name `sqs:<queue-name>`). Per received batch:
//!
//! 1. `ReceiveMessage` with `WaitTimeSeconds` (long poll), `VisibilityTimeout` and the
//!    `ApproximateReceiveCount` system attribute.
//! 2. Each body is parsed (rejections carry the source `sqs:<queue-name>/<message-id>`, so a
//!    rejected row names the message). The batch's findings and rejections go to the store as
//!    one job; while the commit is pending, the batch's visibility is extended every half
//!    visibility timeout (`ChangeMessageVisibilityBatch`) so no other consumer gets it.
//! 3. Only after the commit returned are messages deleted (`DeleteMessageBatch`). If the commit
//!    failed nothing is deleted: the messages come back after their visibility timeout (after
//!    `retry_after` when the intake queue was merely full). A crash anywhere loses nothing.
//!
//! **Poison messages** — bodies whose every record is rejected (truncated JSON, an unknown
//! format, an empty body) — are never deleted while the queue has a redrive policy: they stay on
//! the queue's dead-letter path, and the queue moves them to its DLQ after `maxReceiveCount`
//! receives. So they do not loop hot meanwhile, each receive hides the message for
//! `poison_retry_seconds`, doubled per receive (capped at one hour). Their rejection is recorded
//! in the store's `rejected` table once: the poller remembers (bounded, in memory) which message
//! ids it has recorded and records again only after a restart — a duplicate rejected row is
//! harmless, a lost one is not, so a failed commit is retried on the next receive rather than
//! keyed on `ApproximateReceiveCount == 1`. When the queue has **no** redrive policy (checked
//! with `GetQueueAttributes`, cached for a few minutes), a poison message is deleted, with an
//! error log, once it was received `max_receives` times and its rejection is recorded; if the
//! policy cannot be read, nothing is deleted. A body with some good records and some bad is not
//! poison: its findings and rejections are stored and it is deleted.
//!
//! Shutdown: the poller stops receiving (an in-flight long poll is dropped; SQS makes anything it
//! had handed out visible again after the timeout) and finishes the batch it holds — commit,
//! delete — before returning, so the Intake writer can drain.
//!
//! This module must not delete a message before its commit, must not log message bodies, and
//! uses queue names only in logs, never in metric labels.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
    MessageSystemAttributeName, QueueAttributeName,
};
use tokio::time::Instant;

use super::{Intake, IntakeError};
use crate::config::SqsQueueConfig;
use crate::finding::{ParseReport, ParserChoice, Rejection, parse_input};
use crate::telemetry::metrics::Metrics;

/// The longest any message may stay hidden (an SQS limit).
const MAX_VISIBILITY_SECONDS: u32 = 43_200;
/// The longest a poison message is hidden after one receive.
const MAX_POISON_RETRY_SECONDS: u32 = 3_600;
/// How long a queue's redrive policy is trusted before it is read again.
const REDRIVE_CACHE: Duration = Duration::from_secs(300);
/// How many recorded poison message ids are remembered.
const RECORDED_CAPACITY: usize = 10_000;
/// Longest wait between failed `ReceiveMessage` calls.
const MAX_ERROR_BACKOFF: Duration = Duration::from_secs(30);

/// One queue's validated settings.
#[derive(Debug, Clone)]
pub struct SqsSource {
    /// The queue URL.
    pub queue_url: String,
    /// The queue name (the URL's last segment).
    pub queue_name: String,
    /// How bodies are parsed.
    pub parser: ParserChoice,
    /// Long-poll wait, seconds (0–20).
    pub wait_seconds: u32,
    /// Messages per receive (1–10).
    pub max_messages: u32,
    /// Visibility timeout of received messages, seconds.
    pub visibility_timeout_seconds: u32,
    /// First hiding period of a poison message, seconds (doubled per receive).
    pub poison_retry_seconds: u32,
    /// Receives after which a poison message is deleted when the queue has no redrive policy.
    pub max_receives: u32,
}

impl SqsSource {
    /// Checks `cfg` (entry `index` of `ingest.sqs`); every problem is returned as
    /// `ingest.sqs[i].key: message`.
    ///
    /// # Errors
    /// Each problem found, in order.
    pub fn from_config(index: usize, cfg: &SqsQueueConfig) -> Result<Self, Vec<String>> {
        let at = |key: &str, msg: String| format!("ingest.sqs[{index}].{key}: {msg}");
        let mut problems = Vec::new();
        let queue_url = cfg.queue_url.trim().to_owned();
        let queue_name = queue_url
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        if !(queue_url.starts_with("https://") || queue_url.starts_with("http://"))
            || queue_name.is_empty()
            || queue_name.contains(':')
        {
            problems.push(at(
                "queue_url",
                "expected a queue URL such as https://sqs.REGION.amazonaws.com/ACCOUNT/NAME"
                    .to_owned(),
            ));
        }
        let parser = match ParserChoice::from_id(cfg.parser.trim()) {
            Ok(p) => p,
            Err(e) => {
                problems.push(at("parser", e));
                ParserChoice::Auto
            }
        };
        if cfg.wait_seconds > 20 {
            problems.push(at("wait_seconds", "must be 0 to 20".to_owned()));
        }
        if !(1..=10).contains(&cfg.max_messages) {
            problems.push(at("max_messages", "must be 1 to 10".to_owned()));
        }
        if !(1..=MAX_VISIBILITY_SECONDS).contains(&cfg.visibility_timeout_seconds) {
            problems.push(at(
                "visibility_timeout_seconds",
                format!("must be 1 to {MAX_VISIBILITY_SECONDS}"),
            ));
        }
        if !(1..=MAX_POISON_RETRY_SECONDS).contains(&cfg.poison_retry_seconds) {
            problems.push(at(
                "poison_retry_seconds",
                format!("must be 1 to {MAX_POISON_RETRY_SECONDS}"),
            ));
        }
        if cfg.max_receives == 0 {
            problems.push(at("max_receives", "must be at least 1".to_owned()));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            queue_url,
            queue_name,
            parser,
            wait_seconds: cfg.wait_seconds,
            max_messages: cfg.max_messages,
            visibility_timeout_seconds: cfg.visibility_timeout_seconds,
            poison_retry_seconds: cfg.poison_retry_seconds,
            max_receives: cfg.max_receives,
        })
    }

    /// The intake name recorded with this queue's findings: `sqs:<queue-name>`.
    #[must_use]
    pub fn intake_name(&self) -> String {
        format!("sqs:{}", self.queue_name)
    }

    /// How long a poison message is hidden after its `receive_count`-th receive.
    fn poison_retry(&self, receive_count: u32) -> u32 {
        let doublings = receive_count.saturating_sub(1).min(16);
        self.poison_retry_seconds
            .saturating_mul(1 << doublings)
            .min(MAX_POISON_RETRY_SECONDS)
    }
}

/// What the queue's redrive policy says, as far as the poller needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redrive {
    /// The queue moves a message to its dead-letter queue after this many receives.
    DeadLetterAfter(u32),
    /// The queue has no redrive policy.
    None,
}

/// Reads `maxReceiveCount` from a `RedrivePolicy` attribute (a JSON document; the count may be
/// a number or a string).
fn parse_redrive(policy: &str) -> Option<u32> {
    let v: serde_json::Value = serde_json::from_str(policy).ok()?;
    let count = v.get("maxReceiveCount")?;
    count
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .or_else(|| count.as_str().and_then(|s| s.trim().parse().ok()))
}

/// Message ids whose poison rejection is committed: a bounded set, oldest forgotten first.
#[derive(Debug, Default)]
struct Recorded {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl Recorded {
    fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    fn insert(&mut self, id: String) {
        if self.ids.insert(id.clone()) {
            self.order.push_back(id);
            while self.order.len() > RECORDED_CAPACITY {
                if let Some(old) = self.order.pop_front() {
                    self.ids.remove(&old);
                }
            }
        }
    }
}

/// One received message, parsed.
struct Received {
    /// Batch entry id (`m0`, `m1`, …; unique within one batch call).
    entry: String,
    message_id: String,
    receipt: String,
    receive_count: u32,
    report: ParseReport,
    poison: bool,
}

/// Long-polls one queue and records what arrives through the [`Intake`].
#[derive(Debug)]
pub struct SqsPoller {
    client: Client,
    source: SqsSource,
    intake: Intake,
    metrics: Arc<Metrics>,
    recorded: Recorded,
    redrive: Option<(Instant, Redrive)>,
}

impl SqsPoller {
    /// A poller for `source` that sends what it receives through `intake`.
    #[must_use]
    pub fn new(client: Client, source: SqsSource, intake: Intake, metrics: Arc<Metrics>) -> Self {
        Self {
            client,
            source,
            intake,
            metrics,
            recorded: Recorded::default(),
            redrive: None,
        }
    }

    /// Polls until `stop` completes, then finishes the batch in hand and returns.
    pub async fn run(mut self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let queue = self.source.queue_name.clone();
        match self.redrive().await {
            Some(Redrive::DeadLetterAfter(n)) => tracing::info!(
                queue = %queue,
                max_receive_count = n,
                "SQS intake polling; poison messages are left for the queue's dead-letter queue"
            ),
            Some(Redrive::None) => tracing::warn!(
                queue = %queue,
                max_receives = self.source.max_receives,
                "SQS intake polling a queue without a redrive policy; poison messages are \
                 recorded and deleted after max_receives receives"
            ),
            None => {}
        }
        let mut backoff = Duration::from_secs(1);
        loop {
            let received = tokio::select! {
                biased;
                () = &mut stop => break,
                r = self.receive() => r,
            };
            match received {
                Ok(messages) => {
                    backoff = Duration::from_secs(1);
                    if !messages.is_empty() {
                        // Not raced against `stop`: a batch in hand is always finished.
                        self.record_batch(messages).await;
                    }
                }
                Err(e) => {
                    self.metrics.sqs_error("receive");
                    tracing::warn!(
                        queue = %queue,
                        error = %crate::redact::Scrubbed(&e),
                        retry_in_seconds = backoff.as_secs(),
                        "SQS ReceiveMessage failed"
                    );
                    tokio::select! {
                        biased;
                        () = &mut stop => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_ERROR_BACKOFF);
                }
            }
        }
        tracing::info!(queue = %queue, "SQS intake stopped");
    }

    /// One long poll.
    async fn receive(&self) -> Result<Vec<Message>, String> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.source.queue_url)
            .max_number_of_messages(to_i32(self.source.max_messages))
            .wait_time_seconds(to_i32(self.source.wait_seconds))
            .visibility_timeout(to_i32(self.source.visibility_timeout_seconds))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| DisplayErrorContext(e).to_string())?;
        Ok(out.messages.unwrap_or_default())
    }

    /// Parses, commits and acknowledges one received batch (see the module docs).
    async fn record_batch(&mut self, messages: Vec<Message>) {
        let intake = self.source.intake_name();
        let queue = self.source.queue_name.clone();
        let mut items = Vec::with_capacity(messages.len());
        for (i, m) in messages.into_iter().enumerate() {
            let Some(receipt) = m.receipt_handle else {
                tracing::warn!(queue = %queue, "SQS message without a receipt handle; skipped");
                continue;
            };
            let message_id = m.message_id.unwrap_or_default();
            let receive_count = m
                .attributes
                .as_ref()
                .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                .and_then(|c| c.parse().ok())
                .unwrap_or(1);
            let body = m.body.unwrap_or_default();
            let source = format!("{intake}/{message_id}");
            let mut report = parse_input(&source, body.as_bytes(), self.source.parser);
            let poison = report.findings.is_empty() && report.skipped == 0;
            if poison && report.rejected.is_empty() {
                report.rejected.push(Rejection {
                    source,
                    parser: "auto".to_owned(),
                    index: 0,
                    line: None,
                    pointer: String::new(),
                    reason: "the message holds no record".to_owned(),
                });
            }
            items.push(Received {
                entry: format!("m{i}"),
                message_id,
                receipt,
                receive_count,
                report,
                poison,
            });
        }
        let poison = items.iter().filter(|r| r.poison).count();
        self.metrics.sqs_messages("received", items.len() as u64);
        self.metrics.sqs_messages("poison", poison as u64);

        // What to write: every good message's findings and rejections, and the rejections of
        // poison messages not recorded yet.
        let mut batch = ParseReport::default();
        let mut newly_recorded = Vec::new();
        for item in &mut items {
            if !item.poison {
                batch.findings.append(&mut item.report.findings);
                batch.rejected.append(&mut item.report.rejected);
            } else if !self.recorded.contains(&item.message_id) {
                tracing::warn!(
                    queue = %queue,
                    message_id = %item.message_id,
                    receive_count = item.receive_count,
                    reason = %item.report.rejected.first().map_or("", |r| r.reason.as_str()),
                    "SQS message rejected: every record in it is invalid (poison); recording it"
                );
                batch.rejected.extend(item.report.rejected.iter().cloned());
                newly_recorded.push(item.message_id.clone());
            }
        }

        if !batch.findings.is_empty() || !batch.rejected.is_empty() {
            let handles: Vec<(&str, &str)> = items
                .iter()
                .map(|r| (r.entry.as_str(), r.receipt.as_str()))
                .collect();
            match self.commit(&intake, batch, &handles).await {
                Ok(()) => {}
                Err(e) => {
                    self.metrics.sqs_error("commit");
                    self.metrics.sqs_messages("retained", items.len() as u64);
                    tracing::error!(
                        queue = %queue,
                        messages = items.len(),
                        error = %e,
                        "SQS batch not committed; nothing deleted, the messages will be received again"
                    );
                    if let IntakeError::Busy { retry_after } = e {
                        let secs = u32::try_from(retry_after.as_secs().max(1)).unwrap_or(1);
                        let all: Vec<(&str, &str, u32)> = handles
                            .iter()
                            .map(|(entry, receipt)| (*entry, *receipt, secs))
                            .collect();
                        self.change_visibility(&all).await;
                    }
                    return;
                }
            }
        }
        for id in newly_recorded {
            self.recorded.insert(id);
        }

        // Acknowledge: good messages always; poison only without a redrive policy, after
        // max_receives receives. Other poison is hidden for its back-off period.
        let redrive = if poison > 0 {
            self.redrive().await
        } else {
            None
        };
        let mut delete = Vec::new();
        let mut hide = Vec::new();
        let mut poison_deleted = 0u64;
        for item in &items {
            if !item.poison {
                delete.push((item.entry.as_str(), item.receipt.as_str()));
            } else if redrive == Some(Redrive::None)
                && item.receive_count >= self.source.max_receives
            {
                tracing::error!(
                    queue = %queue,
                    message_id = %item.message_id,
                    receive_count = item.receive_count,
                    "poison SQS message deleted: the queue has no redrive policy and it reached \
                     max_receives; its rejection is in the store's rejected table"
                );
                poison_deleted += 1;
                delete.push((item.entry.as_str(), item.receipt.as_str()));
            } else {
                hide.push((
                    item.entry.as_str(),
                    item.receipt.as_str(),
                    self.source.poison_retry(item.receive_count),
                ));
            }
        }
        self.change_visibility(&hide).await;
        let deleted = self.delete(&delete).await;
        self.metrics.sqs_messages("deleted", deleted);
        self.metrics
            .sqs_messages("poison_deleted", poison_deleted.min(deleted));
    }

    /// Submits `batch` and waits for its commit, extending the visibility of `handles` every
    /// half visibility timeout meanwhile.
    async fn commit(
        &self,
        intake: &str,
        batch: ParseReport,
        handles: &[(&str, &str)],
    ) -> Result<(), IntakeError> {
        let timeout = self.source.visibility_timeout_seconds;
        let period =
            Duration::from_millis(u64::from(timeout) * 500).max(Duration::from_millis(500));
        let extend: Vec<(&str, &str, u32)> = handles
            .iter()
            .map(|(entry, receipt)| (*entry, *receipt, timeout))
            .collect();
        let submit = self.intake.submit_parsed(intake.to_owned(), batch);
        tokio::pin!(submit);
        let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
        loop {
            tokio::select! {
                r = &mut submit => return r.map(|_| ()),
                _ = ticker.tick() => {
                    tracing::debug!(
                        queue = %self.source.queue_name,
                        messages = extend.len(),
                        "commit pending; extending SQS visibility"
                    );
                    self.change_visibility(&extend).await;
                }
            }
        }
    }

    /// Sets the visibility timeout of each `(entry, receipt, seconds)`; failures are logged and
    /// counted (the message then simply reappears at its current timeout).
    async fn change_visibility(&self, entries: &[(&str, &str, u32)]) {
        for chunk in entries.chunks(10) {
            let mut request = self
                .client
                .change_message_visibility_batch()
                .queue_url(&self.source.queue_url);
            for (entry, receipt, seconds) in chunk {
                match ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(*entry)
                    .receipt_handle(*receipt)
                    .visibility_timeout(to_i32((*seconds).min(MAX_VISIBILITY_SECONDS)))
                    .build()
                {
                    Ok(e) => request = request.entries(e),
                    Err(e) => {
                        tracing::warn!(error = %crate::redact::Scrubbed(e), "cannot build a visibility change")
                    }
                }
            }
            match request.send().await {
                Ok(out) => {
                    for f in out.failed() {
                        self.metrics.sqs_error("change_visibility");
                        tracing::warn!(
                            queue = %self.source.queue_name,
                            code = %f.code(),
                            message = %crate::redact::Scrubbed(f.message().unwrap_or_default()),
                            "SQS ChangeMessageVisibility failed for a message"
                        );
                    }
                }
                Err(e) => {
                    self.metrics.sqs_error("change_visibility");
                    tracing::warn!(
                        queue = %self.source.queue_name,
                        error = %crate::redact::Scrubbed(DisplayErrorContext(e)),
                        "SQS ChangeMessageVisibilityBatch failed"
                    );
                }
            }
        }
    }

    /// Deletes each `(entry, receipt)`; returns how many SQS confirmed. A failed delete is
    /// logged: that message comes back and is stored again as a duplicate (counted on the
    /// original within the dedup window, not acted on again).
    async fn delete(&self, entries: &[(&str, &str)]) -> u64 {
        let mut deleted = 0u64;
        for chunk in entries.chunks(10) {
            let mut request = self
                .client
                .delete_message_batch()
                .queue_url(&self.source.queue_url);
            for (entry, receipt) in chunk {
                match DeleteMessageBatchRequestEntry::builder()
                    .id(*entry)
                    .receipt_handle(*receipt)
                    .build()
                {
                    Ok(e) => request = request.entries(e),
                    Err(e) => {
                        tracing::warn!(error = %crate::redact::Scrubbed(e), "cannot build a message deletion")
                    }
                }
            }
            match request.send().await {
                Ok(out) => {
                    deleted += out.successful().len() as u64;
                    for f in out.failed() {
                        self.metrics.sqs_error("delete");
                        tracing::warn!(
                            queue = %self.source.queue_name,
                            code = %f.code(),
                            message = %crate::redact::Scrubbed(f.message().unwrap_or_default()),
                            "SQS DeleteMessage failed for a committed message; it will be \
                             received again and counted as a duplicate"
                        );
                    }
                }
                Err(e) => {
                    self.metrics.sqs_error("delete");
                    tracing::warn!(
                        queue = %self.source.queue_name,
                        error = %crate::redact::Scrubbed(DisplayErrorContext(e)),
                        "SQS DeleteMessageBatch failed for committed messages; they will be \
                         received again and counted as duplicates"
                    );
                }
            }
        }
        deleted
    }

    /// The queue's redrive policy, read at most every few minutes; `None` when it cannot be
    /// read (then no poison message is deleted).
    async fn redrive(&mut self) -> Option<Redrive> {
        if let Some((at, r)) = self.redrive
            && at.elapsed() < REDRIVE_CACHE
        {
            return Some(r);
        }
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.source.queue_url)
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .send()
            .await;
        let attrs: HashMap<QueueAttributeName, String> = match out {
            Ok(out) => out.attributes.unwrap_or_default(),
            Err(e) => {
                self.metrics.sqs_error("get_attributes");
                tracing::warn!(
                    queue = %self.source.queue_name,
                    error = %crate::redact::Scrubbed(DisplayErrorContext(e)),
                    "cannot read the queue's redrive policy; poison messages are kept"
                );
                return None;
            }
        };
        let r = match attrs.get(&QueueAttributeName::RedrivePolicy) {
            Some(policy) if !policy.trim().is_empty() => match parse_redrive(policy) {
                Some(n) => Redrive::DeadLetterAfter(n),
                None => {
                    tracing::warn!(
                        queue = %self.source.queue_name,
                        "the queue's redrive policy has no readable maxReceiveCount; poison \
                         messages are kept"
                    );
                    return None;
                }
            },
            _ => Redrive::None,
        };
        self.redrive = Some((Instant::now(), r));
        Some(r)
    }
}

/// SQS takes counts and seconds as `i32`; every value here was range-checked far below that.
fn to_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> SqsQueueConfig {
        SqsQueueConfig {
            queue_url: url.to_owned(),
            ..SqsQueueConfig::default()
        }
    }

    #[test]
    fn queue_name_comes_from_the_url() {
        let s = SqsSource::from_config(
            0,
            &cfg("https://sqs.eu-west-1.amazonaws.com/123456789012/findings"),
        )
        .unwrap();
        assert_eq!(s.queue_name, "findings");
        assert_eq!(s.intake_name(), "sqs:findings");
    }

    #[test]
    fn every_bad_setting_is_reported() {
        let bad = SqsQueueConfig {
            queue_url: "findings".to_owned(),
            parser: "nope".to_owned(),
            wait_seconds: 21,
            max_messages: 11,
            visibility_timeout_seconds: 0,
            poison_retry_seconds: 0,
            max_receives: 0,
        };
        let problems = SqsSource::from_config(2, &bad).unwrap_err();
        let keys: Vec<&str> = problems
            .iter()
            .map(|p| p.split(':').next().unwrap())
            .collect();
        assert_eq!(
            keys,
            [
                "ingest.sqs[2].queue_url",
                "ingest.sqs[2].parser",
                "ingest.sqs[2].wait_seconds",
                "ingest.sqs[2].max_messages",
                "ingest.sqs[2].visibility_timeout_seconds",
                "ingest.sqs[2].poison_retry_seconds",
                "ingest.sqs[2].max_receives",
            ]
        );
    }

    #[test]
    fn poison_retry_doubles_and_is_capped() {
        let s = SqsSource::from_config(0, &cfg("http://127.0.0.1:1/123456789012/q")).unwrap();
        assert_eq!(s.poison_retry(1), 60);
        assert_eq!(s.poison_retry(2), 120);
        assert_eq!(s.poison_retry(3), 240);
        assert_eq!(s.poison_retry(100), MAX_POISON_RETRY_SECONDS);
    }

    #[test]
    fn redrive_count_is_read_as_number_or_string() {
        assert_eq!(
            parse_redrive(r#"{"deadLetterTargetArn":"arn:x","maxReceiveCount":3}"#),
            Some(3)
        );
        assert_eq!(
            parse_redrive(r#"{"deadLetterTargetArn":"arn:x","maxReceiveCount":"7"}"#),
            Some(7)
        );
        assert_eq!(parse_redrive(r#"{"deadLetterTargetArn":"arn:x"}"#), None);
        assert_eq!(parse_redrive("not json"), None);
    }

    #[test]
    fn recorded_ids_are_bounded() {
        let mut r = Recorded::default();
        for i in 0..=RECORDED_CAPACITY {
            r.insert(format!("id-{i}"));
        }
        assert!(!r.contains("id-0"));
        assert!(r.contains("id-1"));
        assert!(r.contains(&format!("id-{RECORDED_CAPACITY}")));
        assert_eq!(r.ids.len(), RECORDED_CAPACITY);
    }
}
