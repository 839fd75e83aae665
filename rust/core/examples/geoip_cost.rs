//! What a country lookup costs: `cargo run --release -p adclick-core --example geoip_cost -- FILE [N] [ROUNDS]`.
//!
//! Looks up N random public IPv4 addresses (and N random IPv6 ones in 2000::/3) ROUNDS times through
//! `GeoIp::country`, as the click path does, then one address N times, and prints the time per lookup and the share
//! that found a country. Random addresses miss the CPU's caches on most steps down the file's search tree.
//! With addresses after FILE instead of numbers, prints each one's country. A benchmark: it measures and prints,
//! it does not pass or fail.
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use adclick_core::geoip::{GeoIp, GeoIpConfig};

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .expect("usage: geoip_cost FILE [N] [ROUNDS] | FILE ADDRESS...");
    let rest: Vec<String> = args.collect();
    let started = Instant::now();
    let geo = GeoIp::open(GeoIpConfig {
        path: path.into(),
        reload: Duration::from_secs(3600),
        nice: 0,
    })
    .expect("the database");
    println!("opened in {:.1} ms", started.elapsed().as_secs_f64() * 1e3);
    if rest.first().is_some_and(|a| a.parse::<IpAddr>().is_ok()) {
        for a in &rest {
            let ip: IpAddr = a.parse().expect("an address");
            println!("{a}\t{}", geo.country(ip).as_deref().unwrap_or("-"));
        }
        return;
    }
    let n: usize = rest.first().map_or(100_000, |s| s.parse().expect("N"));
    let rounds: usize = rest.get(1).map_or(10, |s| s.parse().expect("ROUNDS"));
    let mut rng = fastrand::Rng::with_seed(17);
    let v4: Vec<IpAddr> = (0..n)
        .map(|_| loop {
            let a = Ipv4Addr::from(rng.u32(..));
            if !(a.is_private() || a.is_loopback() || a.is_link_local() || a.octets()[0] >= 224 || a.octets()[0] == 0) {
                break IpAddr::V4(a);
            }
        })
        .collect();
    let v6: Vec<IpAddr> = (0..n)
        .map(|_| IpAddr::V6(Ipv6Addr::from((rng.u128(..) >> 3) | (1u128 << 125))))
        .collect();
    // One address again and again: its path through the tree stays in the CPU's caches.
    let repeated = vec![IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8)); n];
    for (name, ips) in [("ipv4", &v4), ("ipv6", &v6), ("8.8.8.8 repeated", &repeated)] {
        let mut found = 0usize;
        let mut best = f64::MAX;
        for _ in 0..rounds {
            let t = Instant::now();
            found = 0;
            for &ip in ips {
                found += usize::from(black_box(geo.country(black_box(ip))).is_some());
            }
            best = best.min(t.elapsed().as_secs_f64() / ips.len() as f64);
        }
        println!(
            "{name}: {:.0} ns a lookup (best of {rounds} rounds of {n}), {:.1}% found a country",
            best * 1e9,
            100.0 * found as f64 / ips.len() as f64
        );
    }
}
