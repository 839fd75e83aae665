//! The Redis spill list: click messages SQS did not take, replayed by whichever process holds the lock.
use std::cell::RefCell;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisResult, Script};

/// List of message bodies waiting for SQS (docs/contracts.md).
pub const SPILL_KEY: &str = "adclick:spill:clicks";
/// `SET NX PX` by the one process that replays at a time.
pub const LOCK_KEY: &str = "adclick:spill:lock";
pub const LOCK_TTL_MS: u64 = 30_000;
/// Bodies per RPUSH, to bound one command's size.
pub const SPILL_CHUNK: usize = 100;

// Trim what was replayed and put back what SQS did not take, only if we still hold the lock: a holder whose
// lock expired must not trim entries another replayer may have already taken and trimmed.
const TRIM_LUA: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('LTRIM', KEYS[1], tonumber(ARGV[2]), -1)
if #ARGV > 3 then redis.call('RPUSH', KEYS[1], unpack(ARGV, 4)) end
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[3]))
return 1
";
const RELEASE_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// One Redis connection for spilling and replaying, opened on first use and again after an error.
pub struct Spill {
    client: Client,
    config: AsyncConnectionConfig,
    conn: RefCell<Option<MultiplexedConnection>>,
    trim: Script,
    release: Script,
}

impl Spill {
    pub fn new(url: &str, connect_timeout: Duration, timeout: Duration) -> RedisResult<Self> {
        Ok(Spill {
            client: Client::open(url)?,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(connect_timeout))
                .set_response_timeout(Some(timeout)),
            conn: RefCell::new(None),
            trim: Script::new(TRIM_LUA),
            release: Script::new(RELEASE_LUA),
        })
    }

    async fn conn(&self) -> RedisResult<MultiplexedConnection> {
        if let Some(c) = self.conn.borrow().as_ref() {
            return Ok(c.clone());
        }
        let c = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        *self.conn.borrow_mut() = Some(c.clone());
        Ok(c)
    }

    /// Runs one call; a failed call drops the connection so the next one reconnects (Redis restarted).
    async fn call<T, F, Fut>(&self, f: F) -> RedisResult<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = RedisResult<T>>,
    {
        let result = f(self.conn().await?).await;
        if result.is_err() {
            self.conn.borrow_mut().take();
        }
        result
    }

    /// RPUSH bodies (at most `SPILL_CHUNK` of them); returns the list's new length.
    pub async fn push(&self, bodies: &[String]) -> RedisResult<u64> {
        self.call(|mut c| async move { redis::cmd("RPUSH").arg(SPILL_KEY).arg(bodies).query_async(&mut c).await })
            .await
    }

    pub async fn backlog(&self) -> RedisResult<u64> {
        self.call(|mut c| async move { redis::cmd("LLEN").arg(SPILL_KEY).query_async(&mut c).await })
            .await
    }

    /// Takes the replay lock for `token` unless another process holds it.
    pub async fn lock(&self, token: &str) -> RedisResult<bool> {
        self.call(|mut c| async move {
            let set: Option<String> = redis::cmd("SET")
                .arg(LOCK_KEY)
                .arg(token)
                .arg("NX")
                .arg("PX")
                .arg(LOCK_TTL_MS)
                .query_async(&mut c)
                .await?;
            Ok(set.is_some())
        })
        .await
    }

    /// The oldest `n` spilled bodies.
    pub async fn head(&self, n: usize) -> RedisResult<Vec<String>> {
        self.call(|mut c| async move {
            redis::cmd("LRANGE")
                .arg(SPILL_KEY)
                .arg(0)
                .arg(n as i64 - 1)
                .query_async(&mut c)
                .await
        })
        .await
    }

    /// Drops the first `n` bodies and appends `back`, if `token` still holds the lock; says whether it did.
    pub async fn trim(&self, token: &str, n: usize, back: &[String]) -> RedisResult<bool> {
        self.call(|mut c| async move {
            let mut call = self.trim.prepare_invoke();
            call.key(SPILL_KEY).key(LOCK_KEY).arg(token).arg(n).arg(LOCK_TTL_MS);
            for body in back {
                call.arg(body);
            }
            let ok: i64 = call.invoke_async(&mut c).await?;
            Ok(ok == 1)
        })
        .await
    }

    pub async fn release(&self, token: &str) -> RedisResult<()> {
        self.call(|mut c| async move {
            let _: i64 = self.release.key(LOCK_KEY).arg(token).invoke_async(&mut c).await?;
            Ok(())
        })
        .await
    }
}
