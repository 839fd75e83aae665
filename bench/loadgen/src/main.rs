//! Constant-rate load generator: C keep-alive connections driven by one thread with poll(2), on a fixed schedule.
//!
//! Request k of connection c is due at `start + (k * C + c) / rate`. Latency is measured from when a request
//! was due, not from when it was sent, so a server stall shows in the tail instead of slowing the generator
//! (the coordinated-omission correction of wrk2). Prints one JSON object on stdout.
//!
//! Usage: adclick-loadgen --port P --rate R [--seconds S] [--connections C] [--slugs N] [--host H]
//!        [--paths FILE] [--ok CLASS] [--warmup W]
//!
//! With --warmup, the schedule runs W seconds before the S measured ones on the same connections, and only
//! requests due in the measured seconds count: the server and the connections are warm when measuring starts.
//!
//! Without --paths the requests are clicks on /c/bench-0 .. /c/bench-{N-1}; with it, GETs of the paths in FILE
//! (one a line, cycled), e.g. postbacks. A response of status class CLASS (3: 3xx, the default; 2: 2xx) is a
//! success, any other an `other_status`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

struct Args {
    host: String,
    port: u16,
    rate: f64,
    seconds: f64,
    warmup: f64,
    connections: usize,
    slugs: usize,
    paths: Option<String>,
    ok: u16,
}

fn parse_args() -> Args {
    let mut a = Args {
        host: "127.0.0.1".into(),
        port: 0,
        rate: 1000.0,
        seconds: 10.0,
        warmup: 0.0,
        connections: 64,
        slugs: 64,
        paths: None,
        ok: 3,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i + 1 < argv.len() {
        let v = &argv[i + 1];
        match argv[i].as_str() {
            "--host" => a.host = v.clone(),
            "--port" => a.port = v.parse().expect("--port"),
            "--rate" => a.rate = v.parse().expect("--rate"),
            "--seconds" => a.seconds = v.parse().expect("--seconds"),
            "--warmup" => a.warmup = v.parse().expect("--warmup"),
            "--connections" => a.connections = v.parse().expect("--connections"),
            "--slugs" => a.slugs = v.parse().expect("--slugs"),
            "--paths" => a.paths = Some(v.clone()),
            "--ok" => a.ok = v.parse().expect("--ok"),
            other => panic!("unknown option {other}"),
        }
        i += 2;
    }
    assert!(
        a.port != 0 && a.rate > 0.0 && a.connections > 0 && a.slugs > 0,
        "need --port and a positive --rate"
    );
    a
}

#[repr(C)]
struct PollFd {
    fd: i32,
    events: i16,
    revents: i16,
}

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

extern "C" {
    // ppoll, not poll: poll's millisecond timeout would send requests up to 1 ms late.
    fn ppoll(fds: *mut PollFd, nfds: u64, timeout: *const Timespec, sigmask: *const u8) -> i32;
}

const POLLIN: i16 = 0x1;

/// One keep-alive connection: at most one request in flight, the next ones queue by their due time.
struct Conn {
    stream: Option<TcpStream>,
    /// Index of the next request of this connection (its due time is computed from it).
    next: usize,
    /// Due time of the request in flight.
    in_flight: Option<Instant>,
    buf: Vec<u8>,
}

struct Outcome {
    latencies_us: Vec<u32>,
    ok: u64,
    redirects: u64,
    other_status: u64,
    errors: u64,
}

/// Status and total length of a complete response at the start of `buf`, or None if more bytes are needed.
fn complete(buf: &[u8]) -> Option<(u16, usize)> {
    let header_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..header_end]).to_ascii_lowercase();
    let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    (buf.len() >= header_end + length).then_some((status, header_end + length))
}

fn connect(args: &Args) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect((args.host.as_str(), args.port))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Single thread, poll(2): request k of connection c is due at start + (k * C + c) / rate.
fn run(args: &Args) -> (Outcome, f64) {
    use std::os::fd::AsRawFd;
    let n = args.connections;
    let requests: Vec<Vec<u8>> = match &args.paths {
        Some(file) => std::fs::read_to_string(file)
            .expect("--paths: cannot read the file")
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|path| {
                format!(
                    "GET {} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: adclick-loadgen\r\n\r\n",
                    path.trim(),
                    args.host,
                    args.port
                )
                .into_bytes()
            })
            .collect(),
        None => (0..1024)
            .map(|k| {
                format!(
                    "GET /c/bench-{}?sub1=pub{}&sub2=ad%20{} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: Mozilla/5.0 \
                     (iPhone; CPU iPhone OS 17_4 like Mac OS X) Mobile/15E148\r\nCF-IPCountry: US\r\n\r\n",
                    k % args.slugs,
                    k % 97,
                    k % 13,
                    args.host,
                    args.port
                )
                .into_bytes()
            })
            .collect(),
    };
    assert!(!requests.is_empty(), "--paths: the file holds no path");
    let variants = requests.len();
    let mut out = Outcome {
        latencies_us: Vec::new(),
        ok: 0,
        redirects: 0,
        other_status: 0,
        errors: 0,
    };
    let mut conns: Vec<Conn> = (0..n)
        .map(|_| Conn {
            stream: connect(args).ok(),
            next: 0,
            in_flight: None,
            buf: Vec::with_capacity(4096),
        })
        .collect();
    let start = Instant::now() + Duration::from_millis(20);
    let measured_from = start + Duration::from_secs_f64(args.warmup);
    let end = measured_from + Duration::from_secs_f64(args.seconds);
    // Only what was due in the measured seconds counts: the warm-up's replies and failures are left out.
    let counted = |d: Instant| d >= measured_from;
    let due = |c: usize, k: usize| start + Duration::from_secs_f64((k * n + c) as f64 / args.rate);
    let mut chunk = [0u8; 16384];
    let mut fds: Vec<PollFd> = Vec::with_capacity(n);
    let mut owners: Vec<usize> = Vec::with_capacity(n);
    loop {
        let now = Instant::now();
        // Send every request that is due on an idle connection.
        let mut next_wake: Option<Instant> = None;
        let mut busy = 0;
        for (c, conn) in conns.iter_mut().enumerate() {
            if conn.in_flight.is_none() {
                let d = due(c, conn.next);
                if d >= end {
                    continue;
                }
                if d <= now {
                    if conn.stream.is_none() {
                        conn.stream = connect(args).ok();
                    }
                    let sent = conn
                        .stream
                        .as_mut()
                        .map(|s| s.write_all(&requests[(conn.next * n + c) % variants]));
                    conn.next += 1;
                    if let Some(Ok(())) = sent {
                        conn.in_flight = Some(d);
                        conn.buf.clear();
                    } else {
                        out.errors += u64::from(counted(d));
                        conn.stream = None;
                        continue;
                    }
                } else {
                    next_wake = Some(next_wake.map_or(d, |w: Instant| w.min(d)));
                    continue;
                }
            }
            busy += 1;
        }
        if busy == 0 && next_wake.is_none() {
            break;
        }
        fds.clear();
        owners.clear();
        for (c, conn) in conns.iter().enumerate() {
            if let (Some(_), Some(s)) = (conn.in_flight, conn.stream.as_ref()) {
                fds.push(PollFd {
                    fd: s.as_raw_fd(),
                    events: POLLIN,
                    revents: 0,
                });
                owners.push(c);
            }
        }
        let wait = next_wake.map_or(Duration::from_secs(1), |w| w.saturating_duration_since(Instant::now()));
        let ts = Timespec {
            tv_sec: wait.as_secs() as i64,
            tv_nsec: wait.subsec_nanos() as i64,
        };
        // SAFETY: fds is a valid, exclusively borrowed array of pollfd-compatible structs; ts outlives the call.
        let ready = unsafe { ppoll(fds.as_mut_ptr(), fds.len() as u64, &ts, std::ptr::null()) };
        if ready <= 0 {
            if Instant::now() > end + Duration::from_secs(5) {
                break; // replies that never came: give up, count them as errors
            }
            continue;
        }
        for (fd, &c) in fds.iter().zip(owners.iter()) {
            if fd.revents == 0 {
                continue;
            }
            let conn = &mut conns[c];
            let Some(s) = conn.stream.as_mut() else { continue };
            match s.read(&mut chunk) {
                Ok(0) if conn.buf.is_empty() => {
                    // The server closed an idle keep-alive connection: reconnect and resend (still timed from due).
                    let k = conn.next - 1;
                    let resent =
                        connect(args).and_then(|mut s| s.write_all(&requests[(k * n + c) % variants]).map(|_| s));
                    match resent {
                        Ok(s) => conn.stream = Some(s),
                        Err(_) => {
                            out.errors += u64::from(conn.in_flight.is_some_and(counted));
                            conn.stream = None;
                            conn.in_flight = None;
                        }
                    }
                }
                Ok(0) | Err(_) => {
                    out.errors += u64::from(conn.in_flight.is_some_and(counted));
                    conn.stream = None;
                    conn.in_flight = None;
                }
                Ok(got) => {
                    conn.buf.extend_from_slice(&chunk[..got]);
                    if let Some((status, _)) = complete(&conn.buf) {
                        let d = conn.in_flight.take().expect("in flight");
                        if !counted(d) {
                            continue;
                        }
                        out.latencies_us
                            .push(d.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        if (300..400).contains(&status) {
                            out.redirects += 1;
                        }
                        if status / 100 == args.ok {
                            out.ok += 1;
                        } else {
                            out.other_status += 1;
                        }
                    }
                }
            }
        }
    }
    out.errors += conns.iter().filter(|c| c.in_flight.is_some_and(counted)).count() as u64;
    (out, start.elapsed().as_secs_f64() - args.warmup)
}

fn main() {
    let args = parse_args();
    let (outcome, elapsed) = run(&args);
    let mut all = outcome.latencies_us;
    all.sort_unstable();
    let pct = |q: f64| -> f64 {
        if all.is_empty() {
            return f64::NAN;
        }
        let i = ((q * all.len() as f64).ceil() as usize).clamp(1, all.len()) - 1;
        all[i] as f64 / 1000.0
    };
    println!(
        "{{\"rate\": {}, \"seconds\": {:.3}, \"connections\": {}, \"responses\": {}, \"ok\": {}, \"redirects\": {}, \
         \"other_status\": {}, \"errors\": {}, \"achieved_rps\": {:.1}, \"p50_ms\": {:.3}, \"p90_ms\": {:.3}, \
         \"p95_ms\": {:.3}, \"p99_ms\": {:.3}, \"p999_ms\": {:.3}, \"max_ms\": {:.3}}}",
        args.rate,
        elapsed,
        args.connections,
        all.len(),
        outcome.ok,
        outcome.redirects,
        outcome.other_status,
        outcome.errors,
        all.len() as f64 / elapsed,
        pct(0.50),
        pct(0.90),
        pct(0.95),
        pct(0.99),
        pct(0.999),
        pct(1.0)
    );
}
