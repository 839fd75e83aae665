//! Where a click goes: link state, targeting rules, weighted rotation; plus the request facts they need.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::link::{CompiledLink, Destinations};
use crate::template::UrlTemplate;

/// The routing decision for one click.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice<'a> {
    /// A destination: `rule` is the index of the matching rule (None: the link's default list) and
    /// `index` the destination's position within that list.
    Dest {
        rule: Option<u32>,
        index: u32,
        template: &'a UrlTemplate,
    },
    /// The link is paused, expired or no route matched, and it has a fallback URL.
    Fallback(&'a UrlTemplate),
    /// A cap of the link's offer is full: its cap URL, else the link's fallback URL.
    Capped(&'a UrlTemplate),
    /// Same, without a fallback URL.
    NoRoute,
}

/// Routes a click: paused or expired links go to the fallback, otherwise the first matching rule, else the
/// default destinations, else the fallback. `rand` is any uniformly random u32.
pub fn choose<'a>(
    link: &'a CompiledLink,
    now_s: u64,
    country: Option<&str>,
    device: &str,
    os: &str,
    rand: u32,
) -> Choice<'a> {
    let live = link.active && link.expires_at.is_none_or(|at| now_s < at);
    if live {
        if let Some(cap) = link.routes.cap.as_ref().filter(|c| now_s < c.until) {
            // Capped without anywhere else to go: the offer, as before caps were enforced at the click.
            if let Some(t) = cap.url.as_ref().or(link.routes.fallback.as_ref()) {
                return Choice::Capped(t);
            }
        }
        let matched = link
            .routes
            .rules
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches(country, device, os));
        let route = match matched {
            Some((i, rule)) => Some((Some(i as u32), &rule.dests)),
            None => link.routes.default.as_ref().map(|d| (None, d)),
        };
        if let Some((rule, dests)) = route {
            let (index, template) = dests.pick(scale(rand, dests));
            return Choice::Dest {
                rule,
                index: index as u32,
                template,
            };
        }
    }
    match &link.routes.fallback {
        Some(t) => Choice::Fallback(t),
        None => Choice::NoRoute,
    }
}

/// Maps a uniform u32 onto `0..total` by multiply-shift: no division, and bias as small as a modulo's.
fn scale(rand: u32, dests: &Destinations) -> u32 {
    ((u64::from(rand) * u64::from(dests.total())) >> 32) as u32
}

/// A country code from a CDN header (e.g. CloudFront-Viewer-Country): two ASCII letters, upper-cased.
pub fn country_from(header: Option<&str>) -> Option<String> {
    let h = header?.trim();
    (h.len() == 2 && h.bytes().all(|b| b.is_ascii_alphabetic())).then(|| h.to_ascii_uppercase())
}

/// The client's address: the `trusted_proxies`-th X-Forwarded-For entry from the right (what the outermost
/// trusted proxy saw), or the peer address when there are no trusted proxies or that entry is unusable.
pub fn client_ip(
    forwarded_for: Option<&str>,
    peer: Option<&str>,
    trusted_proxies: usize,
    anonymize: bool,
) -> Option<String> {
    client_addr(forwarded_for, peer, trusted_proxies).map(|ip| ip_text(ip, anonymize))
}

/// The client's address as [`client_ip`] finds it, unformatted and never anonymised (what the IP blocklist checks).
pub fn client_addr(forwarded_for: Option<&str>, peer: Option<&str>, trusted_proxies: usize) -> Option<IpAddr> {
    let from_header = match (trusted_proxies, forwarded_for) {
        (0, _) | (_, None) => None,
        (n, Some(xff)) => xff.rsplit(',').nth(n - 1).and_then(parse_ip),
    };
    from_header.or_else(|| peer.and_then(parse_ip))
}

/// An address as a click event records it, anonymised if asked.
pub fn ip_text(ip: IpAddr, anonymize: bool) -> String {
    if anonymize { anonymized(ip) } else { ip }.to_string()
}

/// Accepts a bare address or one with a port ("203.0.113.9:5123", "[2001:db8::1]:443"), as some proxies send.
fn parse_ip(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    let ip = s
        .parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))?;
    // An IPv4 client behind a dual-stack socket shows up as ::ffff:a.b.c.d; report it as IPv4.
    Some(ip.to_canonical())
}

/// Zeroes the last octet of IPv4 and keeps the first 48 bits of IPv6.
fn anonymized(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::V4(Ipv4Addr::new(a, b, c, 0))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::{Routes, Rule};
    use std::sync::Arc;

    fn t(url: &str) -> UrlTemplate {
        UrlTemplate::parse(url).unwrap()
    }

    fn rule(countries: &[&str], devices: &[&str], os: &[&str], url: &str) -> Rule {
        Rule {
            countries: countries.iter().map(|s| s.to_string()).collect(),
            devices: devices.iter().map(|s| s.to_string()).collect(),
            os: os.iter().map(|s| s.to_string()).collect(),
            dests: Destinations::single(t(url)),
        }
    }

    fn link() -> CompiledLink {
        CompiledLink {
            id: 42,
            offer_id: None,
            affiliate_id: None,
            expires_at: Some(1000),
            routes: Arc::new(Routes {
                default: Some(
                    Destinations::new(vec![(3, t("https://a.example/")), (1, t("https://b.example/"))]).unwrap(),
                ),
                rules: vec![
                    rule(&["US"], &["smartphone"], &["iOS"], "https://us-ios.example/"),
                    rule(&["US", "CA"], &[], &[], "https://north-america.example/"),
                    rule(&[], &["tablet"], &[], "https://tablet.example/"),
                ],
                fallback: Some(t("https://fallback.example/")),
                cap: None,
            }),
            active: true,
            cookie: false,
        }
    }

    fn capped(link: &CompiledLink, until: u64, url: Option<&str>) -> CompiledLink {
        let mut routes = (*link.routes).clone();
        routes.cap = Some(crate::link::Cap { until, url: url.map(t) });
        CompiledLink {
            routes: Arc::new(routes),
            ..link.clone()
        }
    }

    #[test]
    fn a_capped_link_goes_to_its_cap_url_until_the_reset_then_routes_as_before() {
        let link = capped(&link(), 500, Some("https://cap.example/"));
        let us = |now| choose(&link, now, Some("US"), "smartphone", "iOS", 0);
        assert_eq!(us(499), Choice::Capped(&t("https://cap.example/")));
        assert!(matches!(us(500), Choice::Dest { rule: Some(0), .. }));
        // Without a cap URL the link's fallback serves; without either, the offer, as if uncapped.
        let fallback_only = capped(&self::link(), 500, None);
        assert_eq!(
            choose(&fallback_only, 1, None, "desktop", "Windows", 0),
            Choice::Capped(&t("https://fallback.example/"))
        );
        let mut neither = capped(&self::link(), 500, None);
        Arc::make_mut(&mut neither.routes).fallback = None;
        assert!(matches!(
            choose(&neither, 1, None, "desktop", "Windows", 0),
            Choice::Dest { .. }
        ));
        // A paused link answers as paused, capped or not.
        let paused = CompiledLink {
            active: false,
            ..capped(&self::link(), 500, Some("https://cap.example/"))
        };
        assert_eq!(
            choose(&paused, 1, None, "desktop", "Windows", 0),
            Choice::Fallback(&t("https://fallback.example/"))
        );
    }

    fn url<'a>(c: &Choice<'a>) -> &'a str {
        match c {
            Choice::Dest { template, .. } => template.as_str(),
            Choice::Fallback(t) | Choice::Capped(t) => t.as_str(),
            Choice::NoRoute => "no route",
        }
    }

    #[test]
    fn first_matching_rule_wins() {
        let l = link();
        let c = choose(&l, 0, Some("US"), "smartphone", "iOS", 0);
        assert_eq!(
            c,
            Choice::Dest {
                rule: Some(0),
                index: 0,
                template: l.routes.rules[0].dests.get(0).unwrap()
            }
        );
        let c = choose(&l, 0, Some("US"), "smartphone", "Android", 0);
        assert_eq!(
            c,
            Choice::Dest {
                rule: Some(1),
                index: 0,
                template: l.routes.rules[1].dests.get(0).unwrap()
            }
        );
        let na = "https://north-america.example/";
        assert_eq!(url(&choose(&l, 0, Some("CA"), "tablet", "iOS", 0)), na);
        let tablet = "https://tablet.example/";
        assert_eq!(url(&choose(&l, 0, Some("DE"), "tablet", "iOS", 0)), tablet);
        assert_eq!(url(&choose(&l, 0, None, "tablet", "iOS", 0)), "https://tablet.example/");
    }

    #[test]
    fn unmatched_clicks_rotate_over_the_default_destinations() {
        let l = link();
        let c = choose(&l, 0, Some("DE"), "desktop", "Windows", 0);
        assert_eq!(
            c,
            Choice::Dest {
                rule: None,
                index: 0,
                template: l.routes.default.as_ref().unwrap().get(0).unwrap()
            }
        );
        let c = choose(&l, 0, Some("DE"), "desktop", "Windows", u32::MAX);
        assert_eq!(
            c,
            Choice::Dest {
                rule: None,
                index: 1,
                template: l.routes.default.as_ref().unwrap().get(1).unwrap()
            }
        );
    }

    #[test]
    fn rotation_follows_the_weights() {
        let l = link();
        let mut counts = [0u32; 2];
        // 4096 evenly spaced draws over the u32 range: weights 3:1 must split them exactly 3072:1024.
        for k in 0..4096u32 {
            match choose(&l, 0, None, "desktop", "Linux", k << 20) {
                Choice::Dest { rule: None, index, .. } => counts[index as usize] += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(counts, [3072, 1024]);
    }

    #[test]
    fn paused_or_expired_links_go_to_the_fallback() {
        let mut l = link();
        assert_eq!(
            url(&choose(&l, 999, Some("US"), "smartphone", "iOS", 0)),
            "https://us-ios.example/"
        );
        assert_eq!(
            url(&choose(&l, 1000, Some("US"), "smartphone", "iOS", 0)),
            "https://fallback.example/"
        );
        assert_eq!(
            url(&choose(&l, 5000, None, "desktop", "Linux", 0)),
            "https://fallback.example/"
        );
        l.expires_at = None;
        assert_eq!(
            url(&choose(&l, u64::MAX, None, "desktop", "Linux", 0)),
            "https://a.example/"
        );
        l.active = false;
        assert!(matches!(
            choose(&l, 0, Some("US"), "smartphone", "iOS", 0),
            Choice::Fallback(_)
        ));
        Arc::make_mut(&mut l.routes).fallback = None;
        assert_eq!(choose(&l, 0, Some("US"), "smartphone", "iOS", 0), Choice::NoRoute);
    }

    #[test]
    fn unmatched_without_default_goes_to_fallback_or_nowhere() {
        let mut l = link();
        Arc::make_mut(&mut l.routes).default = None;
        assert_eq!(
            url(&choose(&l, 0, Some("DE"), "desktop", "Linux", 0)),
            "https://fallback.example/"
        );
        assert_eq!(
            url(&choose(&l, 0, Some("US"), "desktop", "Linux", 0)),
            "https://north-america.example/"
        );
        Arc::make_mut(&mut l.routes).fallback = None;
        assert_eq!(choose(&l, 0, Some("DE"), "desktop", "Linux", 0), Choice::NoRoute);
    }

    #[test]
    fn country_header_must_be_two_letters() {
        assert_eq!(country_from(Some("us")), Some("US".into()));
        assert_eq!(country_from(Some(" De ")), Some("DE".into()));
        for bad in [
            None,
            Some(""),
            Some("U"),
            Some("USA"),
            Some("T1"),
            Some("--"),
            Some("é"),
            Some("ÉS"),
        ] {
            assert_eq!(country_from(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn without_trusted_proxies_the_peer_is_the_client() {
        assert_eq!(
            client_ip(Some("1.1.1.1"), Some("203.0.113.9"), 0, false),
            Some("203.0.113.9".into())
        );
        assert_eq!(
            client_ip(None, Some("203.0.113.9"), 0, false),
            Some("203.0.113.9".into())
        );
        assert_eq!(
            client_ip(None, Some("203.0.113.9:5123"), 0, false),
            Some("203.0.113.9".into())
        );
        assert_eq!(client_ip(None, Some("not an ip"), 0, false), None);
        assert_eq!(client_ip(Some("1.1.1.1"), None, 0, false), None);
    }

    #[test]
    fn trusted_proxies_count_from_the_right() {
        let xff = "6.6.6.6, 198.51.100.7 ,10.0.0.2";
        assert_eq!(
            client_ip(Some(xff), Some("10.0.0.1"), 1, false),
            Some("10.0.0.2".into())
        );
        assert_eq!(
            client_ip(Some(xff), Some("10.0.0.1"), 2, false),
            Some("198.51.100.7".into())
        );
        assert_eq!(client_ip(Some(xff), Some("10.0.0.1"), 3, false), Some("6.6.6.6".into()));
        // Fewer entries than trusted proxies: the header cannot be trusted, use the peer.
        assert_eq!(
            client_ip(Some(xff), Some("10.0.0.1"), 4, false),
            Some("10.0.0.1".into())
        );
        assert_eq!(client_ip(None, Some("10.0.0.1"), 1, false), Some("10.0.0.1".into()));
        assert_eq!(
            client_ip(Some("unknown, 10.0.0.2"), Some("10.0.0.1"), 2, false),
            Some("10.0.0.1".into())
        );
        assert_eq!(
            client_ip(Some("1.2.3.4,"), Some("10.0.0.1"), 1, false),
            Some("10.0.0.1".into())
        );
        assert_eq!(client_ip(Some("junk"), None, 1, false), None);
        assert_eq!(
            client_ip(Some("[2001:db8::1]:443"), None, 1, false),
            Some("2001:db8::1".into())
        );
        assert_eq!(
            client_ip(Some("::ffff:203.0.113.9"), None, 1, false),
            Some("203.0.113.9".into())
        );
    }

    #[test]
    fn anonymize_truncates_addresses() {
        assert_eq!(
            client_ip(None, Some("203.0.113.9"), 0, true),
            Some("203.0.113.0".into())
        );
        assert_eq!(
            client_ip(Some("2001:db8:abcd:1234:5678::1"), None, 1, true),
            Some("2001:db8:abcd::".into())
        );
        assert_eq!(client_ip(None, Some("garbage"), 0, true), None);
    }
}
