//! What packing click events costs, per event: `cargo run --release -p adclick-core --example pack_cost [N] [ROUNDS]`.
//!
//! Packs N realistic events (random 40-character ClickIDs, the user agents and sub ids of bench/clicks.lua) ROUNDS
//! times, as the shipper does at each flush, and prints bytes, ratio and time per event. Under
//! `valgrind --tool=callgrind` it gives instruction counts, which a busy machine does not change. A benchmark: it
//! measures and prints, it does not pass or fail.
use std::collections::BTreeMap;
use std::time::Instant;

use adclick_core::event::{pack, ClickEvent, EventBuffer};

const AGENTS: [&str; 4] = [
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
];
const COUNTRIES: [&str; 8] = ["US", "CA", "DE", "FR", "BR", "IN", "JP", "GB"];
const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn event(k: usize) -> ClickEvent {
    let click_id: String = (0..40).map(|_| ALPHABET[fastrand::usize(..64)] as char).collect();
    ClickEvent {
        v: 1,
        click_id,
        ts: 1_764_284_000_123 + k as u64,
        link_id: 1001 + (k % 64) as u64,
        offer_id: Some(7),
        aff_id: Some(3),
        slug: format!("bench-{}", k % 64),
        method: "GET".into(),
        ip: Some(format!("203.0.113.{}", k % 250 + 1)),
        ua: Some(AGENTS[k % AGENTS.len()].into()),
        referer: None,
        country: Some(COUNTRIES[k % COUNTRIES.len()].into()),
        device: "smartphone".into(),
        os: "iOS".into(),
        bot: false,
        sub1: Some(format!("pub{}", k % 97)),
        sub2: Some(format!("ad {}", k % 13)),
        sub3: None,
        sub4: None,
        sub5: None,
        params: BTreeMap::from([("gclid".to_owned(), format!("g{k}"))]),
        dest: 0,
        fallback: false,
        blocked: false,
        capped: false,
    }
}

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>().expect("a number"));
    let n = args.next().unwrap_or(1500);
    let rounds = args.next().unwrap_or(200);
    let events: Vec<ClickEvent> = (0..n).map(event).collect();
    let buffer = EventBuffer::new(n);
    let mut total = std::time::Duration::ZERO;
    let mut bodies = Vec::new();
    for _ in 0..rounds {
        for e in &events {
            buffer.push(e).expect("room for every event");
        }
        let t = Instant::now();
        bodies = pack(&buffer.take(), 262_144);
        total += t.elapsed();
    }
    let raw: usize = events.iter().map(|e| serde_json::to_vec(e).unwrap().len() + 1).sum();
    let body: usize = bodies.iter().map(String::len).sum();
    let per = total.as_secs_f64() / rounds as f64;
    println!(
        "{n} events, {} B raw each, {} bodies of {body} B (raw/body {:.2}); pack {:.3} ms a flush, {:.3} us an event",
        raw / n,
        bodies.len(),
        raw as f64 / body as f64,
        per * 1e3,
        per / n as f64 * 1e6
    );
}
