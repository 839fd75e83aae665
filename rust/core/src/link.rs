//! Link configs as stored in Redis (docs/contracts.md), decoded once per cache fill into a form that
//! serves a click without parsing or allocating.
//!
//! A decoded link is small: its ids and flags, plus an `Arc` of its [`Routes`] (rules, destinations,
//! fallback, their templates pre-split). Routes are interned, so the many links of one offer (one per
//! affiliate, per campaign) share one copy of its landing-page templates however many of them are cached.
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::Mutex;
use serde::Deserialize;

use crate::error::CoreError;
use crate::template::UrlTemplate;

/// The only config version this build understands.
pub const LINK_VERSION: u64 = 1;
/// Link ids are 40 bits wide inside a ClickID.
pub const MAX_LINK_ID: u64 = (1 << 40) - 1;
/// Upper bound on rules per link and on destinations per list, to keep the per-click scan short.
pub const MAX_ENTRIES: usize = 64;

/// Device categories a rule may name (see `ua::UaInfo::device`).
const DEVICES: [&str; 8] = [
    "desktop",
    "smartphone",
    "tablet",
    "mobilephone",
    "crawler",
    "appliance",
    "misc",
    "unknown",
];

/// `[A-Za-z0-9_-]{1,64}`: the only slugs that reach Redis.
pub fn valid_slug(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A weighted rotation of destination templates.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Destinations {
    templates: Vec<UrlTemplate>,
    /// Running totals of the weights: entry i is chosen for `ends[i-1] <= r < ends[i]`.
    ends: Vec<u32>,
}

impl Destinations {
    /// Builds a rotation from `(weight, template)` pairs; at least one weight must be positive.
    pub fn new(entries: Vec<(u32, UrlTemplate)>) -> Result<Self, CoreError> {
        if entries.len() > MAX_ENTRIES {
            return Err(CoreError::InvalidLink(format!("more than {MAX_ENTRIES} destinations")));
        }
        let mut total: u32 = 0;
        let mut ends = Vec::with_capacity(entries.len());
        let mut templates = Vec::with_capacity(entries.len());
        for (weight, template) in entries {
            total = total
                .checked_add(weight)
                .ok_or_else(|| CoreError::InvalidLink("destination weights add up past 2^32".into()))?;
            ends.push(total);
            templates.push(template);
        }
        if total == 0 {
            return Err(CoreError::InvalidLink("no destination has a positive weight".into()));
        }
        Ok(Destinations { templates, ends })
    }

    /// One destination that always wins.
    pub fn single(template: UrlTemplate) -> Self {
        Destinations {
            templates: vec![template],
            ends: vec![1],
        }
    }

    /// Sum of the weights; `pick` expects `r` in `0..total()`.
    pub fn total(&self) -> u32 {
        // `new` refuses an empty or all-zero list, so the last running total exists and is positive.
        self.ends[self.ends.len() - 1]
    }

    /// The destination whose weight band holds `r`; an `r` past the total wraps around.
    pub fn pick(&self, r: u32) -> (usize, &UrlTemplate) {
        let r = r % self.total();
        let i = self.ends.partition_point(|&end| end <= r);
        (i, &self.templates[i])
    }

    pub fn len(&self) -> usize {
        self.templates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }

    /// The template at `index` as returned by `pick`.
    pub fn get(&self, index: usize) -> Option<&UrlTemplate> {
        self.templates.get(index)
    }
}

/// A targeting rule; an empty list matches anything.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    /// ISO 3166-1 alpha-2 codes, upper-case.
    pub countries: Vec<String>,
    /// Device categories, lower-case; "mobile" in a config stands for smartphone and mobilephone.
    pub devices: Vec<String>,
    /// OS families as `ua::classify` names them, compared without regard to ASCII case.
    pub os: Vec<String>,
    pub dests: Destinations,
}

impl Rule {
    /// Whether a click from `country` on `device`/`os` is for this rule.
    pub fn matches(&self, country: Option<&str>, device: &str, os: &str) -> bool {
        (self.countries.is_empty() || country.is_some_and(|c| self.countries.iter().any(|x| x.eq_ignore_ascii_case(c))))
            && (self.devices.is_empty() || self.devices.iter().any(|d| d.eq_ignore_ascii_case(device)))
            && (self.os.is_empty() || self.os.iter().any(|o| o.eq_ignore_ascii_case(os)))
    }
}

/// A full cap on the link's offer (or on its affiliate's share of it): until when, and where clicks go meanwhile.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cap {
    /// Unix seconds; from this instant the link routes as usual again (the cap's reset).
    pub until: u64,
    /// The offer's cap fallback; None: the link's own fallback, and without one the link routes as usual.
    pub url: Option<UrlTemplate>,
}

/// Where a link's clicks go: its targeting rules, default destinations and fallback, and its cap while one is full.
/// A cap lives here rather than in the link, so the links of one offer still share one copy (and the replica's
/// records stay the size they were).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Routes {
    pub default: Option<Destinations>,
    pub rules: Vec<Rule>,
    pub fallback: Option<UrlTemplate>,
    pub cap: Option<Cap>,
}

fn dests_bytes(d: &Destinations) -> usize {
    d.templates
        .iter()
        .map(|t| std::mem::size_of::<UrlTemplate>() + t.heap_bytes())
        .sum::<usize>()
        + d.ends.len() * std::mem::size_of::<u32>()
}

fn strings_bytes(v: &[String]) -> usize {
    v.iter().map(|s| std::mem::size_of::<String>() + s.len()).sum()
}

impl Routes {
    /// Bytes these routes take in memory, their `Arc` included (an estimate: allocator slack is not counted).
    pub fn bytes(&self) -> usize {
        let rules: usize = self
            .rules
            .iter()
            .map(|r| {
                std::mem::size_of::<Rule>()
                    + strings_bytes(&r.countries)
                    + strings_bytes(&r.devices)
                    + strings_bytes(&r.os)
                    + dests_bytes(&r.dests)
            })
            .sum();
        2 * std::mem::size_of::<usize>()
            + std::mem::size_of::<Self>()
            + self.default.as_ref().map_or(0, dests_bytes)
            + rules
            + self.fallback.as_ref().map_or(0, |t| t.heap_bytes())
            + self
                .cap
                .as_ref()
                .and_then(|c| c.url.as_ref())
                .map_or(0, |t| t.heap_bytes())
    }
}

/// A decoded, validated link config ready to serve clicks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledLink {
    pub id: u64,
    pub offer_id: Option<u64>,
    pub affiliate_id: Option<u64>,
    /// Unix seconds; the link stops routing at this instant.
    pub expires_at: Option<u64>,
    /// Shared with every other live link that routes the same way (see [`intern`]).
    pub routes: Arc<Routes>,
    pub active: bool,
    pub cookie: bool,
}

impl CompiledLink {
    /// Bytes this link adds to a cache that already holds its routes through other links: the link itself
    /// in its `Arc`. Its routes are weighed apart, since they are shared.
    pub const OWN_BYTES: usize = std::mem::size_of::<Self>() + 2 * std::mem::size_of::<usize>();
}

impl crate::cache::Weigh for CompiledLink {
    /// The link itself, plus its share of its routes: the whole routes when it is their only user, a
    /// fraction when other live links share them (weighed once, when the link is cached).
    fn weight(&self) -> usize {
        Self::OWN_BYTES + self.routes.bytes() / Arc::strong_count(&self.routes).max(1)
    }
}

/// Live interned routes, by content hash; a dead `Weak` is swept out as the table grows.
struct Interner {
    hasher: std::hash::RandomState,
    table: HashMap<u64, Vec<Weak<Routes>>>,
    /// Entries in `table` after the last sweep; the next sweep comes when it doubles.
    swept_at: usize,
    entries: usize,
}

fn interner() -> &'static Mutex<Interner> {
    static INTERNER: OnceLock<Mutex<Interner>> = OnceLock::new();
    INTERNER.get_or_init(|| {
        Mutex::new(Interner {
            hasher: std::hash::RandomState::new(),
            table: HashMap::new(),
            swept_at: 0,
            entries: 0,
        })
    })
}

impl Interner {
    fn sweep(&mut self) {
        self.table.retain(|_, bucket| {
            bucket.retain(|w| w.strong_count() > 0);
            !bucket.is_empty()
        });
        self.entries = self.table.values().map(Vec::len).sum();
        self.swept_at = self.entries;
    }
}

/// The shared copy of `routes`: an equal one already in use by another link, else `routes` itself, now shared.
/// Equality is checked in full, so two links whose routes merely hash alike never swap destinations.
pub fn intern(routes: Routes) -> Arc<Routes> {
    let mut guard = interner().lock();
    let h = guard.hasher.hash_one(&routes);
    if let Some(bucket) = guard.table.get(&h) {
        if let Some(found) = bucket.iter().filter_map(Weak::upgrade).find(|r| **r == routes) {
            return found;
        }
    }
    let shared = Arc::new(routes);
    guard.table.entry(h).or_default().push(Arc::downgrade(&shared));
    guard.entries += 1;
    if guard.entries > 1024 && guard.entries >= 2 * guard.swept_at {
        guard.sweep();
    }
    shared
}

/// Distinct routes alive in this process and the bytes they take (sweeps the table, so call it seldom).
pub fn interned() -> (usize, usize) {
    let mut guard = interner().lock();
    guard.sweep();
    let live = guard.table.values().flatten().filter_map(Weak::upgrade);
    live.fold((0, 0), |(n, bytes), r| (n + 1, bytes + r.bytes()))
}

#[derive(Deserialize)]
struct RawVersion {
    v: Option<u64>,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RawStatus {
    #[default]
    Active,
    Paused,
}

#[derive(Deserialize)]
struct RawLink {
    id: u64,
    slug: String,
    offer_id: Option<u64>,
    affiliate_id: Option<u64>,
    #[serde(default)]
    status: RawStatus,
    expires_at: Option<u64>,
    url: Option<String>,
    destinations: Option<Vec<RawDestination>>,
    #[serde(default)]
    rules: Vec<RawRule>,
    fallback_url: Option<String>,
    #[serde(default)]
    cookie: bool,
    capped_until: Option<u64>,
    cap_url: Option<String>,
}

#[derive(Deserialize)]
struct RawDestination {
    url: String,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
struct RawRule {
    #[serde(default)]
    countries: Vec<String>,
    #[serde(default)]
    devices: Vec<String>,
    #[serde(default)]
    os: Vec<String>,
    url: Option<String>,
    destinations: Option<Vec<RawDestination>>,
}

fn bad(msg: impl Into<String>) -> CoreError {
    CoreError::InvalidLink(msg.into())
}

fn template(url: &str, what: &str) -> Result<UrlTemplate, CoreError> {
    UrlTemplate::parse(url).map_err(|e| bad(format!("{what}: {e}")))
}

/// `destinations` replaces `url` when both are present, as the contract says.
fn destinations(
    url: Option<String>,
    list: Option<Vec<RawDestination>>,
    what: &str,
) -> Result<Option<Destinations>, CoreError> {
    match (url, list) {
        (_, Some(list)) => {
            if list.len() > MAX_ENTRIES {
                return Err(bad(format!("{what}: more than {MAX_ENTRIES} destinations")));
            }
            let entries = list
                .iter()
                .enumerate()
                .map(|(i, d)| Ok((d.weight, template(&d.url, &format!("{what} destination {i}"))?)))
                .collect::<Result<Vec<_>, CoreError>>()?;
            Destinations::new(entries).map(Some).map_err(|e| match e {
                CoreError::InvalidLink(m) => bad(format!("{what}: {m}")),
                other => other,
            })
        }
        (Some(url), None) => Ok(Some(Destinations::single(template(&url, what)?))),
        (None, None) => Ok(None),
    }
}

fn compile_rule(index: usize, raw: RawRule) -> Result<Rule, CoreError> {
    let what = format!("rule {index}");
    let mut countries = Vec::with_capacity(raw.countries.len());
    for c in raw.countries {
        if c.len() != 2 || !c.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(bad(format!("{what}: country {c:?} is not a two-letter code")));
        }
        countries.push(c.to_ascii_uppercase());
    }
    let mut devices = Vec::with_capacity(raw.devices.len());
    for d in raw.devices {
        let d = d.to_ascii_lowercase();
        if d == "mobile" {
            devices.extend(["smartphone".to_owned(), "mobilephone".to_owned()]);
        } else if DEVICES.contains(&d.as_str()) {
            devices.push(d);
        } else {
            return Err(bad(format!("{what}: unknown device {d:?}")));
        }
    }
    let dests = destinations(raw.url, raw.destinations, &what)?.ok_or_else(|| bad(format!("{what}: no url")))?;
    Ok(Rule {
        countries,
        devices,
        os: raw.os,
        dests,
    })
}

impl CompiledLink {
    /// Decodes and validates a link config; anything unsafe or unknown is refused, never half-served.
    pub fn decode(bytes: &[u8]) -> Result<CompiledLink, CoreError> {
        let version: RawVersion = serde_json::from_slice(bytes).map_err(|e| bad(format!("not a JSON object: {e}")))?;
        match version.v {
            Some(LINK_VERSION) => {}
            Some(v) => return Err(bad(format!("unsupported version {v}"))),
            None => return Err(bad("missing version \"v\"")),
        }
        let raw: RawLink = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if raw.id > MAX_LINK_ID {
            return Err(bad(format!("id {} does not fit in 40 bits", raw.id)));
        }
        if !valid_slug(&raw.slug) {
            return Err(bad(format!("bad slug {:?}", raw.slug)));
        }
        if raw.rules.len() > MAX_ENTRIES {
            return Err(bad(format!("more than {MAX_ENTRIES} rules")));
        }
        let default = destinations(raw.url, raw.destinations, "url")?;
        let rules = raw
            .rules
            .into_iter()
            .enumerate()
            .map(|(i, r)| compile_rule(i, r))
            .collect::<Result<_, _>>()?;
        let fallback = raw
            .fallback_url
            .as_deref()
            .map(|u| template(u, "fallback_url"))
            .transpose()?;
        let cap_url = raw.cap_url.as_deref().map(|u| template(u, "cap_url")).transpose()?;
        let cap = match (raw.capped_until, cap_url) {
            (Some(until), url) => Some(Cap { until, url }),
            (None, None) => None,
            (None, Some(_)) => return Err(bad("cap_url without capped_until")),
        };
        Ok(CompiledLink {
            id: raw.id,
            offer_id: raw.offer_id,
            affiliate_id: raw.affiliate_id,
            expires_at: raw.expires_at,
            routes: intern(Routes {
                default,
                rules,
                fallback,
                cap,
            }),
            active: raw.status == RawStatus::Active,
            cookie: raw.cookie,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode(v: serde_json::Value) -> Result<CompiledLink, CoreError> {
        CompiledLink::decode(v.to_string().as_bytes())
    }

    fn err(v: serde_json::Value) -> String {
        match decode(v.clone()) {
            Err(CoreError::InvalidLink(m)) => m,
            other => panic!("{v} should be refused, got {other:?}"),
        }
    }

    fn minimal() -> serde_json::Value {
        json!({"v": 1, "id": 42, "slug": "summer-sale", "url": "https://shop.example/lp?cid={click_id}"})
    }

    fn with(key: &str, value: serde_json::Value) -> serde_json::Value {
        let mut v = minimal();
        v[key] = value;
        v
    }

    fn t(url: &str) -> UrlTemplate {
        UrlTemplate::parse(url).unwrap()
    }

    #[test]
    fn decodes_the_contract_example() {
        let link = decode(json!({
            "v": 1,
            "id": 42, "slug": "summer-sale", "offer_id": 7, "affiliate_id": 3,
            "status": "active",
            "expires_at": null,
            "url": "https://shop.example/lp?cid={click_id}&s1={sub1}",
            "destinations": [
                {"url": "https://a.example/?c={click_id}", "weight": 70},
                {"url": "https://b.example/?c={click_id}", "weight": 30}
            ],
            "rules": [
                {"countries": ["us", "CA"], "devices": ["mobile"], "os": ["iOS"],
                 "url": "https://ios.example/?c={click_id}"}
            ],
            "fallback_url": "https://shop.example/",
            "cookie": false
        }))
        .unwrap();
        let default = Destinations::new(vec![
            (70, t("https://a.example/?c={click_id}")),
            (30, t("https://b.example/?c={click_id}")),
        ])
        .unwrap();
        assert_eq!(
            link,
            CompiledLink {
                id: 42,
                offer_id: Some(7),
                affiliate_id: Some(3),
                expires_at: None,
                routes: Arc::new(Routes {
                    default: Some(default),
                    rules: vec![Rule {
                        countries: vec!["US".into(), "CA".into()],
                        devices: vec!["smartphone".into(), "mobilephone".into()],
                        os: vec!["iOS".into()],
                        dests: Destinations::single(t("https://ios.example/?c={click_id}")),
                    }],
                    fallback: Some(t("https://shop.example/")),
                    cap: None,
                }),
                active: true,
                cookie: false,
            }
        );
    }

    #[test]
    fn a_cap_is_decoded_with_its_url_and_a_cap_url_alone_is_refused() {
        let mut v = minimal();
        v["capped_until"] = json!(1_764_374_400u64);
        v["cap_url"] = json!("https://other.example/c/x?s={sub1}");
        let cap = decode(v.clone()).unwrap().routes.cap.clone().unwrap();
        assert_eq!(cap.until, 1_764_374_400);
        assert_eq!(cap.url, Some(t("https://other.example/c/x?s={sub1}")));
        v["cap_url"] = json!("javascript:alert(1)");
        assert!(err(v.clone()).contains("cap_url"));
        v.as_object_mut().unwrap().remove("capped_until");
        v["cap_url"] = json!("https://other.example/");
        assert!(err(v.clone()).contains("cap_url without capped_until"));
        // A cap with no URL of its own (the link's fallback serves): decoded all the same.
        let mut plain = minimal();
        plain["capped_until"] = json!(1u64);
        assert_eq!(decode(plain).unwrap().routes.cap.as_ref().unwrap().url, None);
    }

    #[test]
    fn minimal_config_has_defaults() {
        let link = decode(minimal()).unwrap();
        assert!(link.active);
        assert!(!link.cookie);
        assert_eq!(link.expires_at, None);
        assert_eq!(link.offer_id, None);
        assert!(link.routes.rules.is_empty());
        assert_eq!(link.routes.fallback, None);
        assert_eq!(
            link.routes.default,
            Some(Destinations::single(t("https://shop.example/lp?cid={click_id}")))
        );
    }

    #[test]
    fn status_expiry_cookie_and_unknown_fields() {
        let mut v = with("status", json!("paused"));
        v["expires_at"] = json!(1_764_284_000u64);
        v["cookie"] = json!(true);
        v["name"] = json!("written by a newer manager");
        let link = decode(v).unwrap();
        assert!(!link.active);
        assert!(link.cookie);
        assert_eq!(link.expires_at, Some(1_764_284_000));
        assert!(err(with("status", json!("archived"))).contains("archived"));
    }

    #[test]
    fn link_without_default_destination_is_allowed() {
        let mut v = minimal();
        v.as_object_mut().unwrap().remove("url");
        v["fallback_url"] = json!("https://shop.example/");
        let link = decode(v).unwrap();
        assert_eq!(link.routes.default, None);
        assert!(link.routes.fallback.is_some());
    }

    #[test]
    fn version_must_be_one() {
        let mut v = minimal();
        v.as_object_mut().unwrap().remove("v");
        assert!(err(v).contains("missing version"));
        assert!(err(with("v", json!(2))).contains("unsupported version 2"));
        assert!(err(with("v", json!("1"))).contains("not a JSON object"));
        assert!(err(json!([1, 2])).contains("not a JSON object"));
        assert!(CompiledLink::decode(b"{\"v\": 1,").is_err());
    }

    #[test]
    fn refuses_bad_ids_and_slugs() {
        assert!(decode(with("id", json!(MAX_LINK_ID))).is_ok());
        assert!(err(with("id", json!(MAX_LINK_ID + 1))).contains("40 bits"));
        assert!(err(with("id", json!(-1))).contains("invalid value"));
        assert!(err(with("slug", json!("a/b"))).contains("bad slug"));
        assert!(err(with("slug", json!(""))).contains("bad slug"));
        assert!(err(with("slug", json!("a".repeat(65)))).contains("bad slug"));
    }

    #[test]
    fn valid_slug_follows_the_contract() {
        for ok in ["a", "A-z_0", &"x".repeat(64)] {
            assert!(valid_slug(ok), "{ok}");
        }
        for bad in ["", &"x".repeat(65), "a b", "a.b", "a/b", "é", "a%20", "a\n"] {
            assert!(!valid_slug(bad), "{bad:?}");
        }
    }

    #[test]
    fn refuses_bad_templates_everywhere() {
        assert!(err(with("url", json!("https://{sub1}.example/"))).contains("url: invalid url template"));
        assert!(err(with("fallback_url", json!("javascript:alert(1)"))).contains("fallback_url"));
        let dests = json!([{"url": "https://a.example/", "weight": 1}, {"url": "ftp://b.example/", "weight": 1}]);
        assert!(err(with("destinations", dests)).contains("url destination 1"));
        let rules = json!([{"url": "https://a.example/"}, {"url": "https://a.example/{nope}"}]);
        assert!(err(with("rules", rules)).contains("rule 1"));
    }

    #[test]
    fn refuses_bad_destination_lists() {
        assert!(err(with("destinations", json!([]))).contains("positive weight"));
        let zeros = json!([{"url": "https://a.example/", "weight": 0}]);
        assert!(err(with("destinations", zeros)).contains("positive weight"));
        let overflow =
            json!([{"url": "https://a.example/", "weight": u32::MAX}, {"url": "https://b.example/", "weight": 1}]);
        assert!(err(with("destinations", overflow)).contains("2^32"));
        let too_many: Vec<_> = (0..=MAX_ENTRIES)
            .map(|_| json!({"url": "https://a.example/"}))
            .collect();
        assert!(err(with("destinations", json!(too_many))).contains("more than 64"));
        let just_enough: Vec<_> = (0..MAX_ENTRIES).map(|_| json!({"url": "https://a.example/"})).collect();
        assert_eq!(
            decode(with("destinations", json!(just_enough)))
                .unwrap()
                .routes
                .default
                .clone()
                .unwrap()
                .total(),
            64
        );
    }

    #[test]
    fn refuses_bad_rules() {
        let too_many: Vec<_> = (0..=MAX_ENTRIES)
            .map(|_| json!({"url": "https://a.example/"}))
            .collect();
        assert!(err(with("rules", json!(too_many))).contains("more than 64 rules"));
        assert!(err(with("rules", json!([{"countries": ["US"]}]))).contains("rule 0: no url"));
        let usa = json!([{"countries": ["USA"], "url": "https://a.example/"}]);
        assert!(err(with("rules", usa)).contains("two-letter"));
        let phone = json!([{"devices": ["phone"], "url": "https://a.example/"}]);
        assert!(err(with("rules", phone)).contains("unknown device"));
    }

    #[test]
    fn rule_destinations_replace_rule_url() {
        let rules =
            json!([{"url": "https://a.example/", "destinations": [{"url": "https://b.example/", "weight": 3}]}]);
        let link = decode(with("rules", rules)).unwrap();
        let dests = &link.routes.rules[0].dests;
        assert_eq!((dests.len(), dests.total()), (1, 3));
        assert_eq!(dests.pick(2).1.as_str(), "https://b.example/");
    }

    #[test]
    fn pick_follows_cumulative_weights() {
        let d = Destinations::new(vec![
            (70, t("https://a.example/")),
            (0, t("https://never.example/")),
            (25, t("https://b.example/")),
            (5, t("https://c.example/")),
        ])
        .unwrap();
        assert_eq!(d.total(), 100);
        let mut counts = [0u32; 4];
        for r in 0..d.total() {
            counts[d.pick(r).0] += 1;
        }
        assert_eq!(counts, [70, 0, 25, 5]);
        assert_eq!(d.pick(69).0, 0);
        assert_eq!(d.pick(70), (2, d.get(2).unwrap()));
        assert_eq!(d.pick(99).0, 3);
        assert_eq!(d.pick(100).0, 0, "r past the total wraps around");
        assert_eq!(d.pick(u32::MAX).0, d.pick(u32::MAX % 100).0);
    }

    #[test]
    fn rule_matching_is_any_when_empty_and_ignores_case() {
        let rule = |countries: &[&str], devices: &[&str], os: &[&str]| Rule {
            countries: countries.iter().map(|s| s.to_string()).collect(),
            devices: devices.iter().map(|s| s.to_string()).collect(),
            os: os.iter().map(|s| s.to_string()).collect(),
            dests: Destinations::single(t("https://a.example/")),
        };
        assert!(rule(&[], &[], &[]).matches(None, "unknown", "unknown"));
        let r = rule(&["US", "CA"], &["smartphone"], &["iOS"]);
        assert!(r.matches(Some("CA"), "smartphone", "ios"));
        assert!(!r.matches(None, "smartphone", "iOS"));
        assert!(!r.matches(Some("DE"), "smartphone", "iOS"));
        assert!(!r.matches(Some("US"), "desktop", "iOS"));
        assert!(!r.matches(Some("US"), "smartphone", "Android"));
    }
}

#[cfg(test)]
mod intern_tests {
    use super::*;
    use serde_json::json;

    fn link(id: u64, offer: u64, url: &str) -> CompiledLink {
        let cfg = json!({"v": 1, "id": id, "slug": format!("s{id}"), "offer_id": offer, "url": url,
                         "fallback_url": "https://fallback.example/"});
        CompiledLink::decode(cfg.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn links_that_route_alike_share_one_copy_of_their_routes() {
        let a = link(1, 7, "https://intern-a.example/lp?c={click_id}");
        let b = link(2, 7, "https://intern-a.example/lp?c={click_id}");
        let c = link(3, 8, "https://intern-c.example/lp?c={click_id}");
        assert!(Arc::ptr_eq(&a.routes, &b.routes));
        assert!(!Arc::ptr_eq(&a.routes, &c.routes));
        assert_ne!(a.routes, c.routes);
        // Ids stay the link's own.
        assert_eq!((a.id, b.id, a.offer_id, c.offer_id), (1, 2, Some(7), Some(8)));
    }

    #[test]
    fn routes_no_link_uses_are_freed_and_counted_out() {
        let url = "https://intern-freed.example/only-here?c={click_id}";
        let first = link(10, 1, url);
        let weak = Arc::downgrade(&first.routes);
        drop(first);
        assert!(weak.upgrade().is_none());
        // The next decode builds it again rather than resurrecting a dead entry.
        let again = link(11, 1, url);
        assert_eq!(again.routes.default.as_ref().unwrap().get(0).unwrap().as_str(), url);
        let (count, bytes) = interned();
        assert!(count >= 1 && bytes >= again.routes.bytes());
    }

    #[test]
    fn routes_weigh_their_templates() {
        let small = link(20, 1, "https://w.example/");
        let big = link(21, 1, &format!("https://w.example/{}?c={{click_id}}", "p".repeat(2000)));
        assert!(big.routes.bytes() > small.routes.bytes() + 2000);
    }
}
