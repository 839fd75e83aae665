//! SQS through the AWS SDK for Rust: a client that fails fast, our queues, and batch sends that say what failed.
use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::stalled_stream_protection::StalledStreamProtectionConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{AppName, BehaviorVersion, Region};
use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_sdk_sqs::types::{QueueAttributeName, SendMessageBatchRequestEntry};
use aws_sdk_sqs::Client;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use futures_util::stream::{self, StreamExt};

/// SendMessageBatch takes at most ten entries.
pub const MAX_BATCH_ENTRIES: usize = 10;
/// Largest SQS message, and largest SendMessageBatch request (bytes of the bodies).
pub const MAX_BATCH_BYTES: usize = 262_144;
/// SendMessageBatch calls in flight at once.
pub const MAX_CONCURRENT_REQUESTS: usize = 8;
/// The dead-letter queue of queue `q` is `q` + this (docs/contracts.md), kept 14 days.
pub const DLQ_SUFFIX: &str = "-dlq";
const DLQ_RETENTION_SECONDS: &str = "1209600";

// Errors about the content of a request: sending the same bytes again can only fail the same way.
const CONTENT_ERRORS: [&str; 6] = [
    "InvalidParameterValue",
    "InvalidMessageContents",
    "BatchRequestTooLong",
    "AWS.SimpleQueueService.BatchRequestTooLong",
    "MessageTooLong",
    "InvalidAttributeValue",
];
const QUEUE_EXISTS_ERRORS: [&str; 3] = [
    "QueueAlreadyExists",
    "QueueNameExists",
    "AWS.SimpleQueueService.QueueNameExists",
];
const NO_QUEUE_ERRORS: [&str; 2] = ["AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"];

/// Where the click queue is and how to talk to it.
#[derive(Debug, Clone)]
pub struct SqsConfig {
    pub queue_name: String,
    pub region: String,
    /// A local SQS (moto, ElasticMQ) instead of AWS.
    pub endpoint_url: Option<String>,
    /// Connect and read timeout of one request; no SDK retries (the shipper retries).
    pub timeout: Duration,
    /// Receives before a message moves to the dead-letter queue, for queues this client creates.
    pub max_receives: u32,
}

/// What became of the bodies given to [`Sqs::send`].
#[derive(Debug, Default)]
pub struct SendOutcome {
    pub sent: usize,
    /// Not taken for a passing reason: send again later.
    pub retry: Vec<String>,
    /// (body length, reason) of bodies SQS will never take.
    pub rejected: Vec<(usize, String)>,
    pub requests: u64,
    /// Calls that failed, or that reported any entry as failed.
    pub failed_requests: u64,
    /// The last failure, for the log.
    pub error: Option<String>,
}

impl SendOutcome {
    fn merge(&mut self, other: SendOutcome) {
        self.sent += other.sent;
        self.retry.extend(other.retry);
        self.rejected.extend(other.rejected);
        self.requests += other.requests;
        self.failed_requests += other.failed_requests;
        if other.error.is_some() {
            self.error = other.error;
        }
    }
}

/// Groups bodies, in order, into SendMessageBatch calls of at most ten entries and `max_total_bytes`.
/// A body larger than `max_total_bytes` gets a batch of its own, for SQS to accept or refuse.
pub fn batch_bodies(bodies: &[String], max_total_bytes: usize) -> Vec<&[String]> {
    let mut batches = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, body) in bodies.iter().enumerate() {
        let n = i - start;
        if n > 0 && (n == MAX_BATCH_ENTRIES || bytes + body.len() > max_total_bytes) {
            batches.push(&bodies[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += body.len();
    }
    if start < bodies.len() {
        batches.push(&bodies[start..]);
    }
    batches
}

/// The SQS client of one shipper and the queue URL it resolved (resolved again when the queue goes missing).
pub struct Sqs {
    client: Client,
    cfg: SqsConfig,
    url: RefCell<Option<String>>,
    /// Set when a call found the queue missing: the next send resolves (and if need be creates) it again.
    lost_queue: Cell<bool>,
}

impl Sqs {
    /// Builds the client: credentials from the default chain (environment, web identity (IRSA), ECS and
    /// instance roles), TLS by rustls, timeouts from `cfg`, no SDK retries. Makes no network call.
    pub async fn new(cfg: SqsConfig) -> Self {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(cfg.timeout)
            .read_timeout(cfg.timeout)
            // A backstop over the whole attempt (signing, upload, answer): a half-open peer cannot hold a flush.
            .operation_attempt_timeout(cfg.timeout * 2)
            .build();
        let shared = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(cfg.region.clone()))
            .http_client(http)
            .retry_config(RetryConfig::disabled())
            .timeout_config(timeouts)
            .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
            .app_name(AppName::new("adclick").expect("a valid app name"))
            .load()
            .await;
        let mut builder = aws_sdk_sqs::config::Builder::from(&shared);
        if let Some(url) = &cfg.endpoint_url {
            builder = builder.endpoint_url(url);
        }
        Sqs {
            client: Client::from_conf(builder.build()),
            cfg,
            url: RefCell::new(None),
            lost_queue: Cell::new(false),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The queue URL, resolved once and again after the queue was found missing; creates the queue and its
    /// dead-letter queue when they do not exist (a fresh endpoint, a re-created queue).
    pub async fn queue_url(&self) -> Result<String, String> {
        if self.lost_queue.replace(false) {
            self.url.borrow_mut().take();
        }
        if let Some(url) = self.url.borrow().as_ref() {
            return Ok(url.clone());
        }
        let url = match self
            .client
            .get_queue_url()
            .queue_name(&self.cfg.queue_name)
            .send()
            .await
        {
            Ok(out) => out.queue_url().unwrap_or_default().to_owned(),
            Err(e) if is_missing_queue(e.code()) => self.ensure_queues().await?,
            Err(e) => return Err(describe(&e)),
        };
        if url.is_empty() {
            return Err("GetQueueUrl answered without a URL".into());
        }
        *self.url.borrow_mut() = Some(url.clone());
        Ok(url)
    }

    /// Creates the queue with a dead-letter queue (redrive after `max_receives`); safe to repeat.
    pub async fn ensure_queues(&self) -> Result<String, String> {
        let dlq_name = format!("{}{DLQ_SUFFIX}", self.cfg.queue_name);
        let dlq_url = self
            .create_queue(
                &dlq_name,
                &[(QueueAttributeName::MessageRetentionPeriod, DLQ_RETENTION_SECONDS.into())],
            )
            .await?;
        let arn = self
            .client
            .get_queue_attributes()
            .queue_url(&dlq_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| describe(&e))?
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
            .ok_or("the dead-letter queue has no ARN")?;
        let redrive = serde_json::json!({
            "deadLetterTargetArn": arn,
            "maxReceiveCount": self.cfg.max_receives.to_string(),
        });
        let attributes = [
            (QueueAttributeName::RedrivePolicy, redrive.to_string()),
            (QueueAttributeName::MaximumMessageSize, MAX_BATCH_BYTES.to_string()),
        ];
        self.create_queue(&self.cfg.queue_name, &attributes).await
    }

    async fn create_queue(&self, name: &str, attributes: &[(QueueAttributeName, String)]) -> Result<String, String> {
        let mut create = self.client.create_queue().queue_name(name);
        for (k, v) in attributes {
            create = create.attributes(k.clone(), v);
        }
        match create.send().await {
            Ok(out) => return Ok(out.queue_url().unwrap_or_default().to_owned()),
            Err(e) if e.code().is_some_and(|c| QUEUE_EXISTS_ERRORS.contains(&c)) => {}
            Err(e) => return Err(describe(&e)),
        }
        // It exists with other attributes: bring them in line instead of failing.
        let url = self
            .client
            .get_queue_url()
            .queue_name(name)
            .send()
            .await
            .map_err(|e| describe(&e))?
            .queue_url()
            .unwrap_or_default()
            .to_owned();
        let mut set = self.client.set_queue_attributes().queue_url(&url);
        for (k, v) in attributes {
            set = set.attributes(k.clone(), v);
        }
        set.send().await.map_err(|e| describe(&e))?;
        Ok(url)
    }

    /// Sends bodies in batches, a few requests at a time. Once one request fails for a passing reason, the
    /// batches not yet started are not attempted (they go to `retry`), so an outage costs one timeout.
    pub async fn send(&self, bodies: &[String], max_total_bytes: usize) -> SendOutcome {
        let mut total = SendOutcome::default();
        if bodies.is_empty() {
            return total;
        }
        let url = match self.queue_url().await {
            Ok(url) => url,
            Err(error) => {
                return SendOutcome {
                    retry: bodies.to_vec(),
                    failed_requests: 1,
                    error: Some(error),
                    ..Default::default()
                }
            }
        };
        let broken = Cell::new(false);
        let url = url.as_str();
        let outcomes: Vec<SendOutcome> = stream::iter(batch_bodies(bodies, max_total_bytes))
            .map(|batch| {
                let broken = &broken;
                async move {
                    if broken.get() {
                        return SendOutcome {
                            retry: batch.to_vec(),
                            ..Default::default()
                        };
                    }
                    let outcome = self.send_batch(url, batch).await;
                    if !outcome.retry.is_empty() && outcome.sent == 0 {
                        broken.set(true);
                    }
                    outcome
                }
            })
            .buffered(MAX_CONCURRENT_REQUESTS)
            .collect()
            .await;
        for outcome in outcomes {
            total.merge(outcome);
        }
        total
    }

    async fn send_batch(&self, url: &str, batch: &[String]) -> SendOutcome {
        let mut outcome = SendOutcome {
            requests: 1,
            ..Default::default()
        };
        let entries: Vec<SendMessageBatchRequestEntry> = batch
            .iter()
            .enumerate()
            .map(|(i, body)| {
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(body)
                    .build()
                    .expect("id and body are set")
            })
            .collect();
        let response = match self
            .client
            .send_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            Ok(response) => response,
            Err(e) => {
                outcome.failed_requests = 1;
                outcome.error = Some(describe(&e));
                let code = e.code();
                if is_missing_queue(code) {
                    self.lost_queue.set(true);
                }
                if !code.is_some_and(|c| CONTENT_ERRORS.contains(&c)) {
                    outcome.retry = batch.to_vec();
                    return outcome;
                }
                if batch.len() == 1 {
                    outcome
                        .rejected
                        .push((batch[0].len(), outcome.error.clone().unwrap_or_default()));
                    return outcome;
                }
                // One bad body fails the whole call: send them one by one so only the bad ones are refused.
                for one in batch.chunks(1) {
                    outcome.merge(Box::pin(self.send_batch(url, one)).await);
                }
                return outcome;
            }
        };
        let succeeded: HashSet<&str> = response.successful().iter().map(|e| e.id()).collect();
        let failed = response.failed();
        if !failed.is_empty() {
            outcome.failed_requests = 1;
        }
        for (i, body) in batch.iter().enumerate() {
            let id = i.to_string();
            if succeeded.contains(id.as_str()) {
                outcome.sent += 1;
            } else if let Some(f) = failed.iter().find(|f| f.id() == id).filter(|f| f.sender_fault()) {
                outcome
                    .rejected
                    .push((body.len(), format!("{}: {}", f.code(), f.message().unwrap_or(""))));
            } else {
                outcome.retry.push(body.clone());
            }
        }
        outcome
    }
}

fn is_missing_queue(code: Option<&str>) -> bool {
    code.is_some_and(|c| NO_QUEUE_ERRORS.contains(&c))
}

/// One line for a failed call: the service's code and message, or the transport's error chain.
fn describe<E>(e: &aws_sdk_sqs::error::SdkError<E>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    if let Some(code) = e.code() {
        return format!("{code}: {}", e.message().unwrap_or(""));
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bodies(sizes: &[usize]) -> Vec<String> {
        sizes.iter().map(|n| "x".repeat(*n)).collect()
    }

    #[test]
    fn batches_hold_at_most_ten_entries_in_order() {
        let given: Vec<String> = (0..25).map(|i| format!("c1:b-{i:05}")).collect();
        let batches = batch_bodies(&given, MAX_BATCH_BYTES);
        assert_eq!(batches.iter().map(|b| b.len()).collect::<Vec<_>>(), [10, 10, 5]);
        assert_eq!(batches.concat(), given);
    }

    #[test]
    fn batches_stay_under_the_total_size_and_a_big_body_goes_alone() {
        let big = bodies(&[100_000; 5]);
        assert_eq!(
            batch_bodies(&big, MAX_BATCH_BYTES)
                .iter()
                .map(|b| b.len())
                .collect::<Vec<_>>(),
            [2, 2, 1]
        );
        let mixed = bodies(&[1, 300, 1]);
        assert_eq!(
            batch_bodies(&mixed, 100).iter().map(|b| b.len()).collect::<Vec<_>>(),
            [1, 1, 1]
        );
        // Sizes are UTF-8 bytes, as SQS counts them.
        let wide = vec!["é".repeat(30), "é".repeat(30)];
        assert_eq!(batch_bodies(&wide, 100).len(), 2);
    }

    #[test]
    fn batching_keeps_every_body_within_limits() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..500 {
            let sizes: Vec<usize> = (0..rng.usize(0..60)).map(|_| rng.usize(0..3000)).collect();
            let limit = rng.usize(1..5000);
            let given = bodies(&sizes);
            let batches = batch_bodies(&given, limit);
            assert_eq!(batches.concat(), given);
            for b in batches {
                assert!((1..=MAX_BATCH_ENTRIES).contains(&b.len()));
                assert!(b.len() == 1 || b.iter().map(String::len).sum::<usize>() <= limit);
            }
        }
    }

    #[test]
    fn error_codes_are_classified_in_both_spellings() {
        assert!(is_missing_queue(Some("QueueDoesNotExist")));
        assert!(is_missing_queue(Some("AWS.SimpleQueueService.NonExistentQueue")));
        assert!(!is_missing_queue(Some("InvalidParameterValue")));
        assert!(!is_missing_queue(None));
    }
}
