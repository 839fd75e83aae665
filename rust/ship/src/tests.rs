//! The shipper against a real SQS endpoint (moto's server) and a real redis-server, including their outages.
//!
//! moto comes from `ADCLICK_TEST_MOTO_SERVER` (make test-rust points it at the virtualenv's `moto_server`), else
//! `moto_server` on PATH; redis-server as in adclick-core's tests. The SDK reads its credentials from the
//! environment, as in production: make test-rust sets dummy ones.
use std::collections::HashSet;
use std::future::Future;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use adclick_testkit::{free_port, Server as Redis};
use aws_sdk_sqs::types::QueueAttributeName;

use crate::engine::Engine;
use crate::spill::{LOCK_KEY, SPILL_KEY};
use crate::sqs::{SqsConfig, MAX_BATCH_BYTES};
use crate::{BodySource, Level, Logger, ShipConfig, ShipStats};

const WAIT: Duration = Duration::from_secs(30);

/// moto's server as a real subprocess speaking the SQS API over HTTP; killed on drop.
struct Moto {
    port: u16,
    child: Child,
}

impl Moto {
    fn start() -> Moto {
        Moto::start_on(free_port())
    }

    fn start_on(port: u16) -> Moto {
        assert!(
            std::env::var_os("AWS_ACCESS_KEY_ID").is_some(),
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (any value) for the SDK, as make test-rust does"
        );
        let bin = std::env::var_os("ADCLICK_TEST_MOTO_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("moto_server"));
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} (set ADCLICK_TEST_MOTO_SERVER): {e}", bin.display()));
        let moto = Moto { port, child };
        let deadline = Instant::now() + WAIT;
        while !moto.answers() {
            assert!(Instant::now() < deadline, "moto server on {port} did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        moto.warm_up();
        moto
    }

    /// Moto loads its SQS backend on the first SQS request, which on a busy two-core machine takes longer than the
    /// shipper's timeouts: one ListQueues here, with a generous wait, so no test's first call pays for it.
    fn warm_up(&self) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("moto answers");
        let _ = s.set_read_timeout(Some(WAIT));
        let body = "{}";
        let request = format!(
            "POST / HTTP/1.0\r\nHost: 127.0.0.1\r\nX-Amz-Target: AmazonSQS.ListQueues\r\n\
             Content-Type: application/x-amz-json-1.0\r\n\
             Authorization: AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/sqs/aws4_request, \
             SignedHeaders=host, Signature=0\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut head = [0u8; 12];
        s.write_all(request.as_bytes()).expect("write ListQueues");
        s.read_exact(&mut head).expect("moto answers ListQueues");
        assert!(head.ends_with(b"200"), "ListQueues: {}", String::from_utf8_lossy(&head));
    }

    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let request = "GET /moto-api/data.json HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
        let mut head = [0u8; 12];
        s.write_all(request.as_bytes()).is_ok() && s.read_exact(&mut head).is_ok() && head.ends_with(b"200")
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGSTOP: requests hang and time out, queues and messages survive; `signal("-CONT")` brings it back.
    fn signal(&self, sig: &str) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args([sig, &pid]).status().unwrap().success());
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shipper's input: already packed message bodies, as the core's buffer hands them over.
struct Bodies {
    capacity: usize,
    inner: Mutex<(Vec<String>, usize)>,
}

impl Bodies {
    fn new(capacity: usize) -> Arc<Bodies> {
        Arc::new(Bodies {
            capacity,
            inner: Mutex::new((Vec::new(), 0)),
        })
    }

    fn add(&self, bodies: &[String], events_each: usize) {
        let mut inner = self.inner.lock().unwrap();
        inner.0.extend_from_slice(bodies);
        inner.1 += bodies.len() * events_each;
    }
}

impl BodySource for Bodies {
    fn take_bodies(&self, _max_body_bytes: usize) -> Vec<String> {
        let mut inner = self.inner.lock().unwrap();
        inner.1 = 0;
        std::mem::take(&mut inner.0)
    }

    fn buffered(&self) -> usize {
        self.inner.lock().unwrap().1
    }

    fn capacity(&self) -> usize {
        self.capacity
    }
}

fn bodies(prefix: &str, n: usize, size: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{:x<size$}", format!("c1:{prefix}-{i:05}-")))
        .collect()
}

fn config(moto: &Moto, redis: &Redis, queue: &str) -> ShipConfig {
    ShipConfig {
        sqs: SqsConfig {
            queue_name: queue.into(),
            region: "us-east-1".into(),
            endpoint_url: Some(moto.url()),
            // Short enough for the outage tests' flush deadlines, long enough for moto on a busy CI machine.
            timeout: Duration::from_millis(1500),
            max_receives: 4,
        },
        redis_url: redis.url(),
        redis_connect_timeout: Duration::from_millis(200),
        redis_timeout: Duration::from_millis(500),
        max_body_bytes: MAX_BATCH_BYTES,
        retry_attempts: 2,
        flush_interval: Duration::from_millis(20),
        spill_high_water: 0.5,
        max_pending_bytes: 64 << 20,
        nice: 0,
        log: Logger::new("test", Level::Error),
    }
}

fn run<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

async fn engine(cfg: ShipConfig, source: Arc<Bodies>) -> (Engine, Arc<ShipStats>) {
    let stats = Arc::new(ShipStats::default());
    (Engine::new(cfg, source, Arc::clone(&stats)).await, stats)
}

/// Receives and deletes every visible message of the queue.
async fn drain(engine: &Engine, into: &mut Vec<String>) {
    let client = engine.sqs().client();
    let url = engine.sqs().queue_url().await.expect("queue");
    loop {
        let out = client
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(10)
            .visibility_timeout(60)
            .send()
            .await;
        let Ok(out) = out else { return };
        let messages = out.messages();
        if messages.is_empty() {
            return;
        }
        for m in messages {
            into.push(m.body().unwrap_or_default().to_owned());
            let handle = m.receipt_handle().unwrap_or_default();
            let _ = client
                .delete_message()
                .queue_url(&url)
                .receipt_handle(handle)
                .send()
                .await;
        }
    }
}

async fn eventually<F: FnMut() -> Fut, Fut: Future<Output = bool>>(mut check: F, what: &str) {
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Drains the queue into `got` until `done(got)`.
async fn drain_until(engine: &Engine, got: &mut Vec<String>, done: impl Fn(&[String]) -> bool, what: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        drain(engine, got).await;
        if done(got) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the engine's loops beside `test`, until `test` is done.
async fn beside<T>(engine: &Engine, test: impl Future<Output = T>) -> T {
    tokio::select! {
        () = engine.run() => unreachable!(),
        out = test => out,
    }
}

fn set(v: &[String]) -> HashSet<String> {
    v.iter().cloned().collect()
}

fn llen(redis: &Redis) -> u64 {
    redis::cmd("LLEN").arg(SPILL_KEY).query(&mut redis.conn()).unwrap()
}

fn spilled_list(redis: &Redis) -> Vec<String> {
    redis::cmd("LRANGE")
        .arg(SPILL_KEY)
        .arg(0)
        .arg(-1)
        .query(&mut redis.conn())
        .unwrap()
}

#[test]
fn ensure_queues_creates_a_dead_letter_queue_and_is_idempotent() {
    let (moto, redis) = (Moto::start(), Redis::start());
    run(async {
        let (engine, _) = engine(config(&moto, &redis, "clicks"), Bodies::new(100)).await;
        let first = engine.sqs().ensure_queues().await.unwrap();
        let second = engine.sqs().ensure_queues().await.unwrap();
        assert_eq!(first, second);
        let client = engine.sqs().client();
        let dlq = client.get_queue_url().queue_name("clicks-dlq").send().await.unwrap();
        assert!(dlq.queue_url().unwrap().ends_with("/clicks-dlq"));
        let attributes = client
            .get_queue_attributes()
            .queue_url(&first)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .unwrap();
        let attributes = attributes.attributes().unwrap();
        let redrive = &attributes[&QueueAttributeName::RedrivePolicy];
        let redrive: serde_json::Value = serde_json::from_str(redrive).unwrap();
        assert_eq!(redrive["maxReceiveCount"].to_string().trim_matches('"'), "4");
        assert!(redrive["deadLetterTargetArn"]
            .as_str()
            .unwrap()
            .ends_with(":clicks-dlq"));
        assert_eq!(attributes[&QueueAttributeName::MaximumMessageSize], "262144");
    });
}

#[test]
fn send_respects_sqs_limits() {
    let (moto, redis) = (Moto::start(), Redis::start());
    run(async {
        let (engine, _) = engine(config(&moto, &redis, "clicks"), Bodies::new(100)).await;
        let big = bodies("big", 12, 60_000);
        let outcome = engine.sqs().send(&big, MAX_BATCH_BYTES).await;
        assert_eq!(outcome.requests, 3, "4 x 60 kB fit in 256 KiB, 5 do not");
        assert_eq!(outcome.sent, 12);
        let mut got = Vec::new();
        drain(&engine, &mut got).await;
        assert_eq!(set(&got), set(&big));
    });
}

#[test]
fn bodies_arrive_in_sqs() {
    let (moto, redis) = (Moto::start(), Redis::start());
    let source = Bodies::new(10_000);
    let expected = bodies("live", 25, 64);
    let stats = run(async {
        let (engine, stats) = engine(config(&moto, &redis, "clicks"), Arc::clone(&source)).await;
        engine.sqs().ensure_queues().await.unwrap();
        let mut got = Vec::new();
        beside(&engine, async {
            source.add(&expected[..12], 1);
            drain_until(
                &engine,
                &mut got,
                |got| set(got).is_superset(&set(&expected[..12])),
                "the first bodies",
            )
            .await;
            source.add(&expected[12..], 1);
            drain_until(&engine, &mut got, |got| set(got) == set(&expected), "every body").await;
        })
        .await;
        let flushed = engine.flush(Duration::from_secs(5)).await;
        assert_eq!(flushed, Default::default());
        assert_eq!(got.len(), expected.len(), "each body once");
        stats
    });
    let s = stats.snapshot();
    assert_eq!(s.messages_sent, 25);
    assert!(s.requests >= 2, "{s:?}");
    assert_eq!(s.spilled, 0);
    assert_eq!(llen(&redis), 0);
}

#[test]
fn missing_queues_are_created_and_a_recreated_queue_is_found_again() {
    let (moto, redis) = (Moto::start(), Redis::start());
    let source = Bodies::new(10_000);
    run(async {
        let (engine, stats) = engine(config(&moto, &redis, "fresh"), Arc::clone(&source)).await;
        source.add(&bodies("fresh", 3, 64), 1);
        engine.ship_once().await;
        let mut got = Vec::new();
        drain(&engine, &mut got).await;
        assert_eq!(set(&got), set(&bodies("fresh", 3, 64)));
        let client = engine.sqs().client();
        assert!(client.get_queue_url().queue_name("fresh-dlq").send().await.is_ok());

        // The queue is deleted (or a fresh endpoint has none): the shipper resolves it again and ships there.
        let url = engine.sqs().queue_url().await.unwrap();
        client.delete_queue().queue_url(&url).send().await.unwrap();
        let again = bodies("again", 4, 64);
        source.add(&again, 1);
        engine.ship_once().await;
        assert!(stats.failures.load(Relaxed) >= 1, "the first send finds no queue");
        for _ in 0..5 {
            if engine.pending() == 0 && llen(&redis) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1100)).await;
            engine.replay_once().await.unwrap();
            engine.ship_once().await;
        }
        let mut got = Vec::new();
        drain(&engine, &mut got).await;
        assert_eq!(set(&got), set(&again));
    });
}

#[test]
fn sqs_outage_spills_to_redis_and_replays_everything() {
    let (moto, redis) = (Moto::start(), Redis::start());
    let source = Bodies::new(10_000);
    let (before, during, after) = (
        bodies("before", 15, 64),
        bodies("during", 30, 64),
        bodies("after", 7, 64),
    );
    let stats = run(async {
        let (engine, stats) = engine(config(&moto, &redis, "clicks"), Arc::clone(&source)).await;
        engine.sqs().ensure_queues().await.unwrap();
        let mut got = Vec::new();
        beside(&engine, async {
            source.add(&before, 1);
            drain_until(&engine, &mut got, |got| set(got).is_superset(&set(&before)), "before").await;
            moto.signal("-STOP");
            source.add(&during[..10], 1);
            eventually(|| async { llen(&redis) >= 1 }, "a spill to Redis").await;
            source.add(&during[10..], 1);
            eventually(
                || async { llen(&redis) >= during.len() as u64 },
                "every body of the outage spilled",
            )
            .await;
            assert!(engine.sqs_down());
            moto.signal("-CONT");
            source.add(&after, 1);
            let everything: Vec<String> = [&before[..], &during[..], &after[..]].concat();
            drain_until(&engine, &mut got, |got| set(got) == set(&everything), "every body").await;
            eventually(|| async { llen(&redis) == 0 }, "an empty spill list").await;
        })
        .await;
        engine.flush(Duration::from_secs(5)).await;
        stats
    });
    let exists: bool = redis::cmd("EXISTS").arg(LOCK_KEY).query(&mut redis.conn()).unwrap();
    assert!(!exists, "the replay lock is released");
    let s = stats.snapshot();
    assert!(s.spilled >= 30 && s.replayed >= 30 && s.failures >= 1, "{s:?}");
    assert_eq!((s.spill_backlog, s.dropped_overflow), (0, 0));
}

#[test]
fn high_water_spills_to_redis_without_trying_sqs_and_replay_moves_it() {
    let (moto, redis) = (Moto::start(), Redis::start());
    let source = Bodies::new(100);
    let surge = bodies("surge", 6, 64);
    source.add(&surge, 10); // 60 events buffered out of 100: past the 50% mark
    run(async {
        let (engine, stats) = engine(config(&moto, &redis, "clicks"), Arc::clone(&source)).await;
        engine.sqs().ensure_queues().await.unwrap();
        engine.ship_once().await;
        assert_eq!(spilled_list(&redis), surge);
        assert_eq!(stats.requests.load(Relaxed), 0);
        assert_eq!(engine.replay_once().await.unwrap(), surge.len());
        let mut got = Vec::new();
        drain(&engine, &mut got).await;
        assert_eq!(set(&got), set(&surge));
        assert_eq!(stats.spill_backlog.load(Relaxed), 0);
    });
    assert_eq!(llen(&redis), 0);

    // Below the mark the same bodies go straight to SQS.
    let calm = bodies("calm", 4, 64);
    source.add(&calm, 10); // 40 of 100
    run(async {
        let (engine, stats) = engine(config(&moto, &redis, "clicks"), Arc::clone(&source)).await;
        engine.ship_once().await;
        let mut got = Vec::new();
        drain(&engine, &mut got).await;
        assert_eq!(set(&got), set(&calm));
        assert_eq!(stats.spilled.load(Relaxed), 0);
    });
}

#[test]
fn replay_waits_for_the_lock_holder_and_drops_what_sqs_refuses() {
    let (moto, redis) = (Moto::start(), Redis::start());
    let spilled = bodies("spilled", 5, 64);
    let mut conn = redis.conn();
    let _: () = redis::cmd("RPUSH")
        .arg(SPILL_KEY)
        .arg(&spilled)
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(LOCK_KEY)
        .arg("another-process")
        .arg("PX")
        .arg(30_000)
        .query(&mut conn)
        .unwrap();
    run(async {
        let (engine, stats) = engine(config(&moto, &redis, "clicks"), Bodies::new(100)).await;
        engine.sqs().ensure_queues().await.unwrap();
        assert_eq!(engine.replay_once().await.unwrap(), 0);
        assert_eq!(spilled_list(&redis), spilled);
        let _: () = redis::cmd("DEL").arg(LOCK_KEY).query(&mut redis.conn()).unwrap();
        assert_eq!(engine.replay_once().await.unwrap(), spilled.len());
        let mut got = Vec::new();
        drain(&engine, &mut got).await;
        assert_eq!(set(&got), set(&spilled));

        // A body SQS will never take is counted, logged and taken off the list, not replayed forever.
        let oversize = format!("oversize:{}", "y".repeat(300_000));
        let good = bodies("ok", 3, 64);
        let _: () = redis::cmd("RPUSH")
            .arg(SPILL_KEY)
            .arg(&good[0])
            .arg(&oversize)
            .arg(&good[1..])
            .query(&mut redis.conn())
            .unwrap();
        engine.replay_once().await.unwrap();
        let mut got = Vec::new();
        drain(&engine, &mut got).await;
        assert_eq!(set(&got), set(&good));
        assert_eq!(stats.dropped_rejected.load(Relaxed), 1);
    });
    assert_eq!(llen(&redis), 0);
    let exists: bool = redis::cmd("EXISTS").arg(LOCK_KEY).query(&mut redis.conn()).unwrap();
    assert!(!exists);
}

#[test]
fn flush_on_shutdown_delivers_everything() {
    let (moto, redis) = (Moto::start(), Redis::start());
    let source = Bodies::new(10_000);
    let mut cfg = config(&moto, &redis, "clicks");
    cfg.flush_interval = Duration::from_secs(10); // only the flush can ship these
    run(async {
        let (engine, _) = engine(cfg, Arc::clone(&source)).await;
        engine.sqs().ensure_queues().await.unwrap();
        let expected = bodies("last", 37, 64);
        beside(&engine, async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            source.add(&expected, 1);
        })
        .await;
        let result = engine.flush(Duration::from_secs(5)).await;
        assert_eq!(
            (result.sent, result.spilled, result.rejected, result.dropped),
            (37, 0, 0, 0)
        );
        let mut got = Vec::new();
        drain(&engine, &mut got).await;
        assert_eq!(set(&got), set(&expected));
        assert_eq!(source.buffered(), 0);
    });
}

#[test]
fn flush_spills_what_a_hung_sqs_will_not_take() {
    let (moto, redis) = (Moto::start(), Redis::start());
    let source = Bodies::new(10_000);
    let expected = bodies("exit", 12, 64);
    run(async {
        let (engine, _) = engine(config(&moto, &redis, "clicks"), Arc::clone(&source)).await;
        engine.sqs().ensure_queues().await.unwrap();
        source.add(&expected, 1);
        moto.signal("-STOP");
        let result = engine.flush(Duration::from_secs(3)).await;
        moto.signal("-CONT");
        assert_eq!(result.spilled + result.sent, expected.len());
        assert_eq!(result.dropped, 0);
        let spilled = spilled_list(&redis);
        assert_eq!(spilled.len(), result.spilled);
        // After SIGCONT, moto may still process a request the shipper had given up on: at least once.
        let mut got = Vec::new();
        drain(&engine, &mut got).await;
        assert_eq!(&set(&spilled) | &set(&got), set(&expected));
    });
}

#[test]
fn oversize_body_in_the_stream_is_counted_and_not_retried() {
    let (moto, redis) = (Moto::start(), Redis::start());
    let source = Bodies::new(10_000);
    let good = bodies("fine", 9, 64);
    let oversize = format!("oversize:{}", "z".repeat(300_000));
    source.add(&[&good[..4], &[oversize][..], &good[4..]].concat(), 1);
    run(async {
        let (engine, stats) = engine(config(&moto, &redis, "clicks"), Arc::clone(&source)).await;
        engine.sqs().ensure_queues().await.unwrap();
        engine.ship_once().await;
        let requests = stats.requests.load(Relaxed);
        engine.ship_once().await; // nothing left to send: the refused body is not tried again
        assert_eq!(stats.requests.load(Relaxed), requests);
        assert_eq!(engine.pending(), 0);
        assert!(!engine.sqs_down());
        let mut got = Vec::new();
        drain(&engine, &mut got).await;
        assert_eq!(set(&got), set(&good));
        assert_eq!(stats.dropped_rejected.load(Relaxed), 1);
        assert_eq!(stats.messages_sent.load(Relaxed), good.len() as u64);
    });
    assert_eq!(llen(&redis), 0);
}

#[test]
fn sqs_and_redis_down_hold_bodies_in_memory_until_one_returns() {
    let (moto, mut redis) = (Moto::start(), Redis::start());
    let source = Bodies::new(10_000);
    let held = bodies("held", 8, 64);
    run(async {
        let (engine, _) = engine(config(&moto, &redis, "clicks"), Arc::clone(&source)).await;
        engine.sqs().ensure_queues().await.unwrap();
        moto.signal("-STOP");
        redis.kill();
        source.add(&held, 1);
        engine.ship_once().await;
        assert_eq!(engine.pending(), held.len());
        assert!(engine.sqs_down());
        moto.signal("-CONT");
        let result = engine.flush(Duration::from_secs(5)).await;
        assert_eq!(result.dropped, 0);
        let mut got = Vec::new();
        drain(&engine, &mut got).await;
        assert_eq!(set(&got), set(&held));
    });
}

#[test]
fn memory_bound_drops_oldest_and_counts_them() {
    let (moto, mut redis) = (Moto::start(), Redis::start());
    let source = Bodies::new(10_000);
    let held = bodies("bounded", 10, 1000);
    let mut cfg = config(&moto, &redis, "clicks");
    cfg.retry_attempts = 1;
    cfg.max_pending_bytes = 4000;
    run(async {
        let (engine, stats) = engine(cfg, Arc::clone(&source)).await;
        engine.sqs().ensure_queues().await.unwrap();
        moto.signal("-STOP");
        redis.kill();
        source.add(&held, 1);
        engine.ship_once().await;
        assert_eq!(engine.pending(), 4);
        assert_eq!(stats.dropped_overflow.load(Relaxed), 6);
        moto.signal("-CONT");
        redis.restart();
        engine.flush(Duration::from_secs(5)).await;
        let mut got = Vec::new();
        drain(&engine, &mut got).await;
        let arrived = &set(&got) | &set(&spilled_list(&redis));
        assert_eq!(arrived, set(&held[6..]));
    });
}
