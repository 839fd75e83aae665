//! Click events: buffered as JSON lines on the hot path, packed into compressed SQS message bodies.
//!
//! A body is `c1:` followed by standard base64 of the zlib-compressed, `\n`-separated JSON events
//! (see docs/contracts.md).
use std::collections::BTreeMap;
use std::io::{Read, Write};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
use flate2::Compression;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::error::CoreError;

/// Prefix of every message body in the current packing format.
pub const BODY_PREFIX: &str = "c1:";
/// Most bytes `unpack` inflates from one body; a real body of 256 KiB never comes near it.
pub const MAX_UNPACKED_BYTES: u64 = 64 * 1024 * 1024;

// First guess of raw bytes per body byte: zlib shrinks click JSON at least 4:1 and base64 adds a third
// back. `pack` then learns the real ratio from each chunk it encodes.
const RAW_CHUNK_FACTOR: usize = 3;

/// One click, as the worker receives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClickEvent {
    pub v: u8,
    pub click_id: String,
    pub ts: u64,
    pub link_id: u64,
    pub offer_id: Option<u64>,
    pub aff_id: Option<u64>,
    pub slug: String,
    pub method: String,
    pub ip: Option<String>,
    pub ua: Option<String>,
    pub referer: Option<String>,
    pub country: Option<String>,
    pub device: String,
    pub os: String,
    pub bot: bool,
    pub sub1: Option<String>,
    pub sub2: Option<String>,
    pub sub3: Option<String>,
    pub sub4: Option<String>,
    pub sub5: Option<String>,
    pub params: BTreeMap<String, String>,
    pub dest: u32,
    pub fallback: bool,
    /// The client address is on the IP blocklist. Written only when true, so the events of unblocked clicks
    /// are byte for byte what they were before the blocklist; absent reads as false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub blocked: bool,
    /// A full cap of the link's offer sent it to the cap fallback. Written only when true; absent reads as false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub capped: bool,
}

/// Why `EventBuffer::push` did not take an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The buffer holds `max_events` events already.
    Full,
    /// The buffer was closed for shutdown.
    Closed,
}

/// JSON lines end to end in one allocation, each followed by `\n`, and where each ends.
///
/// A click appends its line with one copy, and a flush packs runs of lines straight from `data`: nothing is
/// allocated or freed per event on either side, and a chunk of lines is already the compressor's input.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Lines {
    data: Vec<u8>,
    ends: Vec<usize>,
}

impl Lines {
    pub fn with_capacity(bytes: usize, lines: usize) -> Self {
        Lines {
            data: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(lines),
        }
    }

    /// Appends one line; it must not hold a `\n` (compact JSON never does).
    pub fn push(&mut self, line: &[u8]) {
        self.data.extend_from_slice(line);
        self.data.push(b'\n');
        self.ends.push(self.data.len());
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Bytes held, separators included.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    fn start(&self, i: usize) -> usize {
        if i == 0 {
            0
        } else {
            self.ends[i - 1]
        }
    }

    /// Line `i`, without its `\n`.
    pub fn get(&self, i: usize) -> &[u8] {
        &self.data[self.start(i)..self.ends[i] - 1]
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// Lines `start..end` joined by `\n` (no trailing one), and their raw size with separators.
    fn span(&self, start: usize, end: usize) -> &[u8] {
        &self.data[self.start(start)..self.ends[end - 1] - 1]
    }

    fn raw_len(&self, start: usize, end: usize) -> usize {
        self.ends[end - 1] - self.start(start)
    }
}

impl<T: AsRef<[u8]>> FromIterator<T> for Lines {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut lines = Lines::default();
        for line in iter {
            lines.push(line.as_ref());
        }
        lines
    }
}

#[derive(Debug, Default)]
struct Inner {
    lines: Lines,
    closed: bool,
}

thread_local! {
    // Each click thread serialises into its own reused buffer, so an event costs no allocation.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(1024));
}

/// A bounded, thread-safe queue of serialised click events waiting to be shipped.
#[derive(Debug)]
pub struct EventBuffer {
    inner: Mutex<Inner>,
    max_events: usize,
    /// Bytes (high bits) and lines (low 24 bits) of the last take: the size of the next buffer.
    last_take: std::sync::atomic::AtomicUsize,
}

impl EventBuffer {
    pub fn new(max_events: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            max_events,
            last_take: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Queues one event as a JSON line; the serialising happens before the lock is taken.
    pub fn push(&self, ev: &ClickEvent) -> Result<(), PushError> {
        SCRATCH.with_borrow_mut(|line| {
            line.clear();
            serde_json::to_writer(&mut *line, ev).expect("a ClickEvent always serialises: every map key is a string");
            let mut inner = self.inner.lock();
            if inner.closed {
                return Err(PushError::Closed);
            }
            if inner.lines.len() >= self.max_events {
                return Err(PushError::Full);
            }
            inner.lines.push(line);
            Ok(())
        })
    }

    pub fn len(&self) -> usize {
        self.inner.lock().lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.lock().lines.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.max_events
    }

    /// Refuses further pushes; what was already accepted can still be taken, so a shutdown ships it all.
    pub fn close(&self) {
        self.inner.lock().closed = true;
    }

    pub fn is_closed(&self) -> bool {
        self.inner.lock().closed
    }

    /// Removes and returns every buffered line, oldest first.
    ///
    /// The buffer that replaces them is sized like the last one taken and allocated before the lock, so the
    /// clicks that follow neither wait for an allocation nor grow it again a doubling at a time.
    pub fn take(&self) -> Lines {
        if self.is_empty() {
            // An idle flush allocates nothing; the buffer in place keeps its room.
            return Lines::default();
        }
        let hint = self.last_take.load(std::sync::atomic::Ordering::Relaxed);
        let (bytes, lines) = (hint >> 24, hint & 0xff_ffff);
        let fresh = Lines::with_capacity(bytes + bytes / 4, lines + lines / 4);
        let taken = std::mem::replace(&mut self.inner.lock().lines, fresh);
        if !taken.is_empty() {
            let hint = (taken.bytes().min(1 << 39) << 24) | taken.len().min(0xff_ffff);
            self.last_take.store(hint, std::sync::atomic::Ordering::Relaxed);
        }
        taken
    }
}

fn encode_body(raw: &[u8]) -> String {
    // One contiguous input and one call: fed a line at a time, the compressor pays its per-call work (window
    // refill, checksum, state checks) twice an event.
    let mut z = ZlibEncoder::new(Vec::with_capacity(raw.len() / 4 + 64), Compression::fast());
    z.write_all(raw).expect("writing to a Vec cannot fail");
    let compressed = z.finish().expect("writing to a Vec cannot fail");
    let mut body = String::with_capacity(BODY_PREFIX.len() + compressed.len().div_ceil(3) * 4);
    body.push_str(BODY_PREFIX);
    STANDARD.encode_string(&compressed, &mut body);
    body
}

// Lines from `start` whose raw size stays within `raw_limit`, never fewer than one.
fn chunk_end(lines: &Lines, start: usize, raw_limit: usize) -> usize {
    let base = lines.start(start);
    // The first line past the limit, by its end offset; the chunk always takes line `start`.
    let past = lines.ends[start..].partition_point(|&end| end - base <= raw_limit);
    start + past.max(1)
}

fn pack_chunk(lines: &Lines, start: usize, end: usize, max_body_bytes: usize, body: String, out: &mut Vec<String>) {
    if body.len() <= max_body_bytes || end - start == 1 {
        out.push(body);
        return;
    }
    let mid = start + (end - start) / 2;
    pack_chunk(
        lines,
        start,
        mid,
        max_body_bytes,
        encode_body(lines.span(start, mid)),
        out,
    );
    pack_chunk(lines, mid, end, max_body_bytes, encode_body(lines.span(mid, end)), out);
}

/// Packs JSON lines, in order, into few message bodies of at most `max_body_bytes` characters each.
///
/// Lines are grouped greedily by raw size, starting from chunks of 3 × `max_body_bytes`; each encoded
/// chunk teaches the compression ratio, so a chunk that came out well under the limit is grown and
/// retried, and later chunks aim at 90% of the limit. A chunk whose body is still too big is halved
/// until it fits. A single line whose body alone exceeds the limit cannot be made smaller, so it is
/// emitted as a body of its own, over the limit: callers bound by a hard limit (SQS) must check each
/// body's length and divert such a body.
pub fn pack(lines: &Lines, max_body_bytes: usize) -> Vec<String> {
    const GROW_TRIES: u32 = 3;
    let target = max_body_bytes as f64 * 0.9;
    let mut raw_limit = max_body_bytes.saturating_mul(RAW_CHUNK_FACTOR);
    let mut out = Vec::new();
    let mut start = 0;
    while start < lines.len() {
        let mut tries = 0;
        let mut fitted: Option<(usize, String)> = None;
        let (end, body) = loop {
            let end = chunk_end(lines, start, raw_limit);
            let body = encode_body(lines.span(start, end));
            let raw = lines.raw_len(start, end);
            raw_limit = ((raw as f64 * target / body.len() as f64) as usize).max(1);
            if body.len() > max_body_bytes {
                // Grown too far: the last chunk that fitted beats two half-empty halves.
                break fitted.unwrap_or((end, body));
            }
            let room_left = body.len() < max_body_bytes / 4 * 3 && end < lines.len();
            if !room_left || tries == GROW_TRIES {
                break (end, body);
            }
            fitted = Some((end, body));
            tries += 1;
        };
        pack_chunk(lines, start, end, max_body_bytes, body, &mut out);
        start = end;
    }
    out
}

fn bad(reason: impl std::fmt::Display) -> CoreError {
    CoreError::InvalidMessage(reason.to_string())
}

/// Unpacks a message body made by [`pack`] back into its events, in order.
pub fn unpack(body: &str) -> Result<Vec<ClickEvent>, CoreError> {
    let encoded = body
        .strip_prefix(BODY_PREFIX)
        .ok_or_else(|| bad("unknown format prefix"))?;
    let compressed = STANDARD.decode(encoded).map_err(|e| bad(format!("base64: {e}")))?;
    if compressed.is_empty() {
        return Err(bad("empty body"));
    }
    let mut raw = Vec::new();
    ZlibDecoder::new(compressed.as_slice())
        .take(MAX_UNPACKED_BYTES + 1)
        .read_to_end(&mut raw)
        .map_err(|e| bad(format!("zlib: {e}")))?;
    if raw.len() as u64 > MAX_UNPACKED_BYTES {
        return Err(bad(format!("inflates to more than {MAX_UNPACKED_BYTES} bytes")));
    }
    if raw.is_empty() {
        return Ok(Vec::new());
    }
    raw.split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, line)| serde_json::from_slice(line).map_err(|e| bad(format!("event {i}: {e}"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;
    use std::sync::Arc;

    fn event(n: u64) -> ClickEvent {
        ClickEvent {
            v: 1,
            click_id: format!("{n:040}"),
            ts: 1_764_284_000_123 + n,
            link_id: 42,
            offer_id: Some(7),
            aff_id: None,
            slug: "summer-sale".into(),
            method: "GET".into(),
            ip: Some("203.0.113.9".into()),
            ua: Some("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)".into()),
            referer: None,
            country: Some("US".into()),
            device: "smartphone".into(),
            os: "iOS".into(),
            bot: false,
            sub1: Some(format!("s{n}")),
            sub2: None,
            sub3: None,
            sub4: None,
            sub5: None,
            params: BTreeMap::from([("gclid".to_owned(), format!("g{n}"))]),
            dest: (n % 3) as u32,
            fallback: n.is_multiple_of(5),
            blocked: n % 7 == 3,
            capped: false,
        }
    }

    fn lines(events: &[ClickEvent]) -> Lines {
        let buf = EventBuffer::new(events.len());
        for ev in events {
            buf.push(ev).unwrap();
        }
        buf.take()
    }

    fn unpack_all(bodies: &[String]) -> Vec<ClickEvent> {
        bodies.iter().flat_map(|b| unpack(b).unwrap()).collect()
    }

    fn zbody(raw: &[u8]) -> String {
        let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
        z.write_all(raw).unwrap();
        format!("c1:{}", STANDARD.encode(z.finish().unwrap()))
    }

    #[test]
    fn json_has_the_contract_fields_in_order() {
        let json = String::from_utf8(serde_json::to_vec(&event(0)).unwrap()).unwrap();
        let keys = [
            "v", "click_id", "ts", "link_id", "offer_id", "aff_id", "slug", "method", "ip", "ua", "referer", "country",
            "device", "os", "bot", "sub1", "sub2", "sub3", "sub4", "sub5", "params", "dest", "fallback",
        ];
        let mut at = 0;
        for key in keys {
            let pos = json[at..]
                .find(&format!("\"{key}\":"))
                .unwrap_or_else(|| panic!("{key} missing in {json}"));
            at += pos + 1;
        }
        assert!(
            json.contains("\"aff_id\":null"),
            "absent values are explicit nulls: {json}"
        );
        assert!(!json.contains("blocked"), "only a blocked click says so: {json}");
        let blocked = String::from_utf8(serde_json::to_vec(&event(3)).unwrap()).unwrap();
        assert!(blocked.ends_with(",\"fallback\":false,\"blocked\":true}"), "{blocked}");
    }

    #[test]
    fn blocked_reads_as_false_when_absent() {
        let mut ev = event(1);
        ev.blocked = false;
        let json = serde_json::to_string(&ev).unwrap();
        let back: ClickEvent = serde_json::from_str(&json).unwrap();
        assert!(!back.blocked);
        let flagged = json.replace("\"fallback\":false}", "\"fallback\":false,\"blocked\":true}");
        assert!(serde_json::from_str::<ClickEvent>(&flagged).unwrap().blocked);
    }

    #[test]
    fn pack_unpack_round_trip_keeps_order_and_count() {
        let events: Vec<_> = (0..5000).map(event).collect();
        let bodies = pack(&lines(&events), 16 * 1024);
        assert!(bodies.len() > 1, "5000 events should not fit in 16 KiB");
        for b in &bodies {
            assert!(b.starts_with("c1:") && b.len() <= 16 * 1024, "{}", b.len());
        }
        assert_eq!(unpack_all(&bodies), events);
    }

    #[test]
    fn compressible_events_share_bodies() {
        let events: Vec<_> = (0..2000).map(event).collect();
        let bodies = pack(&lines(&events), 262_144);
        assert_eq!(bodies.len(), 1, "2000 similar clicks fit one 256 KiB body");
        assert_eq!(unpack_all(&bodies), events);
    }

    #[test]
    fn bodies_are_well_filled() {
        let events: Vec<_> = (0..20_000).map(event).collect();
        let ls = lines(&events);
        let max = 64 * 1024;
        let bodies = pack(&ls, max);
        let ideal = encode_body(ls.span(0, ls.len())).len().div_ceil(max);
        assert!(
            bodies.len() <= ideal + ideal / 2 + 1,
            "{} bodies where {ideal} could do",
            bodies.len()
        );
        assert!(bodies.iter().all(|b| b.len() <= max));
        assert_eq!(unpack_all(&bodies), events);
    }

    #[test]
    fn lines_keep_each_line_and_chunks_stop_at_the_raw_limit() {
        let input: Vec<Vec<u8>> = (0..50).map(|i| vec![b'a' + (i % 26) as u8; 1 + i * 7 % 40]).collect();
        let lines: Lines = input.iter().collect();
        assert_eq!(lines.len(), 50);
        assert_eq!(lines.iter().map(<[u8]>::to_vec).collect::<Vec<_>>(), input);
        assert_eq!(lines.bytes(), input.iter().map(|l| l.len() + 1).sum::<usize>());
        for start in [0, 1, 17, 49] {
            for limit in [0, 1, 8, 60, 300, 10_000] {
                // The lines from `start` whose sizes, each with its separator, add up to at most the limit.
                let mut raw = 0;
                let mut naive = input.len();
                for (i, line) in input.iter().enumerate().skip(start) {
                    raw += line.len() + 1;
                    if i > start && raw > limit {
                        naive = i;
                        break;
                    }
                }
                assert_eq!(chunk_end(&lines, start, limit), naive, "start {start} limit {limit}");
            }
        }
        assert_eq!(lines.span(1, 3), [&input[1][..], b"\n", &input[2][..]].concat());
    }

    #[test]
    fn a_take_leaves_a_buffer_sized_like_the_last_one() {
        let buf = EventBuffer::new(100);
        for i in 0..40 {
            buf.push(&event(i)).unwrap();
        }
        let first = buf.take();
        assert_eq!(first.len(), 40);
        // The buffer in place now was made before any take; the one the next take leaves is sized by `first`.
        buf.push(&event(40)).unwrap();
        assert_eq!(buf.take().len(), 1);
        let next = std::mem::take(&mut buf.inner.lock().lines);
        assert!(next.is_empty());
        assert!(next.data.capacity() >= first.bytes() && next.ends.capacity() >= 40);
        assert_eq!(
            unpack_all(&pack(&first, 262_144)),
            (0..40).map(event).collect::<Vec<_>>()
        );
    }

    #[test]
    fn nothing_packs_to_nothing() {
        assert!(pack(&Lines::default(), 1024).is_empty());
        assert_eq!(unpack(&zbody(b"")).unwrap(), vec![]);
    }

    #[test]
    fn an_oversized_line_is_emitted_alone() {
        let mut big = event(1);
        // Random-looking text that zlib cannot shrink below the limit.
        big.ua = Some((0..4000).map(|_| fastrand::alphanumeric()).collect());
        let events = vec![event(0), big, event(2)];
        let bodies = pack(&lines(&events), 1024);
        let counts: Vec<_> = bodies
            .iter()
            .map(|b| (unpack(b).unwrap().len(), b.len() <= 1024))
            .collect();
        assert_eq!(counts, vec![(1, true), (1, false), (1, true)]);
        assert_eq!(unpack_all(&bodies), events);
    }

    #[test]
    fn unicode_crlf_and_control_characters_survive() {
        let mut ev = event(3);
        ev.ua = Some("Mozilla\r\nX-Injected: 1\n\u{0}\t\"quoted\" \\ back".into());
        ev.referer = Some("https://例え.jp/パス?q=ü&e=😀".into());
        ev.sub2 = Some("line1\nline2\u{2028}\u{2029}".into());
        ev.params.insert("ключ\n".into(), "значение\r\n🎯".into());
        let events = vec![ev, event(4)];
        let ls = lines(&events);
        assert!(
            ls.iter().all(|l| !l.contains(&b'\n')),
            "a JSON line never holds a raw newline"
        );
        assert_eq!(unpack_all(&pack(&ls, 262_144)), events);
    }

    #[test]
    fn unpack_rejects_malformed_bodies() {
        let good = pack(&lines(&[event(0)]), 262_144).remove(0);
        let reject = |body: &str| assert!(matches!(unpack(body), Err(CoreError::InvalidMessage(_))), "{body:.60}");
        reject(&good.replacen("c1:", "c2:", 1));
        reject(&good[3..]);
        reject("c1:");
        reject("c1:not base64!");
        reject(&format!("c1:{}", STANDARD.encode(b"not zlib at all")));
        reject(&zbody(b"{\"v\":1}"));
        reject(&zbody(b"not json"));
        let line = serde_json::to_string(&event(0)).unwrap();
        reject(&zbody(format!("{line}\n").as_bytes()));
        // Truncated zlib stream.
        let compressed = STANDARD.decode(&good[3..]).unwrap();
        reject(&format!("c1:{}", STANDARD.encode(&compressed[..compressed.len() - 6])));
    }

    #[test]
    fn unpack_refuses_zlib_bombs() {
        // 80 MiB of zeros compresses to about 80 KiB.
        let mut z = ZlibEncoder::new(Vec::new(), Compression::best());
        let zeros = vec![0u8; 1024 * 1024];
        for _ in 0..80 {
            z.write_all(&zeros).unwrap();
        }
        let body = format!("c1:{}", STANDARD.encode(z.finish().unwrap()));
        match unpack(&body) {
            Err(CoreError::InvalidMessage(reason)) => assert!(reason.contains("more than"), "{reason}"),
            other => panic!("expected a refusal, got {:?}", other.map(|v| v.len())),
        }
    }

    #[test]
    fn full_at_capacity() {
        let buf = EventBuffer::new(3);
        for n in 0..3 {
            buf.push(&event(n)).unwrap();
        }
        assert_eq!(buf.push(&event(3)), Err(PushError::Full));
        assert_eq!(buf.len(), 3);
        assert_eq!(buf.take().len(), 3);
        assert_eq!(buf.push(&event(4)), Ok(()), "taking frees room");
    }

    #[test]
    fn closed_refuses_pushes_but_drains() {
        let buf = EventBuffer::new(10);
        buf.push(&event(0)).unwrap();
        buf.push(&event(1)).unwrap();
        assert!(!buf.is_closed());
        buf.close();
        assert!(buf.is_closed());
        assert_eq!(buf.push(&event(2)), Err(PushError::Closed));
        assert_eq!(unpack_all(&pack(&buf.take(), 262_144)), vec![event(0), event(1)]);
        assert!(buf.is_empty());
        assert_eq!(
            buf.push(&event(3)),
            Err(PushError::Closed),
            "still closed after draining"
        );
    }

    #[test]
    fn take_empties_the_buffer() {
        let buf = EventBuffer::new(10);
        assert!(buf.is_empty());
        buf.push(&event(0)).unwrap();
        assert!(!buf.is_empty());
        assert_eq!(buf.take().len(), 1);
        assert!(buf.is_empty());
        assert_eq!(buf.len(), 0);
        assert!(buf.take().is_empty());
    }

    #[test]
    fn concurrent_pushes_arrive_exactly_once() {
        const THREADS: u64 = 8;
        const PER_THREAD: u64 = 2000;
        let buf = Arc::new(EventBuffer::new(usize::MAX));
        let pushers: Vec<_> = (0..THREADS)
            .map(|t| {
                let buf = Arc::clone(&buf);
                std::thread::spawn(move || {
                    for i in 0..PER_THREAD {
                        buf.push(&event(t * PER_THREAD + i)).unwrap();
                    }
                })
            })
            .collect();
        // Drain while the pushers run, as the shipper does.
        let mut got = Lines::default();
        while !pushers.iter().all(|h| h.is_finished()) {
            buf.take().iter().for_each(|line| got.push(line));
        }
        for h in pushers {
            h.join().unwrap();
        }
        buf.take().iter().for_each(|line| got.push(line));
        let events = unpack_all(&pack(&got, 262_144));
        assert_eq!(events.len() as u64, THREADS * PER_THREAD);
        let ids: HashSet<_> = events.iter().map(|e| e.ts).collect();
        assert_eq!(ids.len() as u64, THREADS * PER_THREAD);
        // Each thread's own events stay in the order it pushed them.
        for t in 0..THREADS {
            let mine: Vec<_> = events
                .iter()
                .map(|e| e.ts)
                .filter(|ts| (ts - event(0).ts) / PER_THREAD == t)
                .collect();
            assert!(mine.windows(2).all(|w| w[0] < w[1]));
        }
    }

    #[test]
    fn buffer_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<EventBuffer>();
    }

    fn arb_event() -> impl Strategy<Value = ClickEvent> {
        (
            any::<u64>(),
            ".{0,120}",
            proptest::option::of("[a-zA-Z0-9]{0,300}"),
            any::<bool>(),
        )
            .prop_map(|(n, ua, sub1, bot)| {
                let mut ev = event(n % 1_000_000);
                ev.ua = Some(ua);
                ev.sub1 = sub1;
                ev.bot = bot;
                ev
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn bodies_respect_the_limit(events in proptest::collection::vec(arb_event(), 0..300), max in 2048usize..40_000) {
            let bodies = pack(&lines(&events), max);
            for b in &bodies {
                prop_assert!(b.len() <= max, "body of {} > {}", b.len(), max);
            }
            prop_assert_eq!(unpack_all(&bodies), events);
        }

        #[test]
        fn unpack_never_panics_on_garbage(s in ".{0,200}") {
            let _ = unpack(&s);
            let _ = unpack(&format!("c1:{s}"));
        }

        #[test]
        fn unpack_never_panics_on_garbage_zlib(raw in proptest::collection::vec(any::<u8>(), 0..400)) {
            // Random bytes are neither a zlib stream nor JSON click events.
            let body = format!("c1:{}", STANDARD.encode(&raw));
            prop_assert!(unpack(&body).is_err());
            prop_assert!(unpack(&zbody(&raw)).is_err() || raw.is_empty());
        }
    }
}
