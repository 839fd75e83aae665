//! The properties each fuzz target checks, as plain functions of the input bytes, so that the libFuzzer
//! binaries (`fuzz_targets/`) and anything replaying a corpus run exactly the same code.
//!
//! Each function panics on a property violation; returning normally means the input was handled correctly.
use std::collections::BTreeMap;

use adclick_core::clickid::{ClickIdCodec, CLICK_ID_LEN, MAX_LINK_ID, MAX_TS_MS};
use adclick_core::link::{valid_slug, CompiledLink, Destinations};
use adclick_core::template::{MacroValues, UrlTemplate};
use arbitrary::{Arbitrary, Unstructured};
use url::Url;

const KEY_A: &[u8] = b"fuzz-key-a-0123456789-0123456789-a";
const KEY_B: &[u8] = b"fuzz-key-b-0123456789-0123456789-b";
const KEY_C: &[u8] = b"fuzz-key-c-0123456789-0123456789-c";
// Never used to issue: libFuzzer lifts byte strings out of memcmp calls into its dictionary, so ids this target
// generates (and compares) turn up in later inputs; only a key nothing issues with can show a real forgery.
const KEY_UNUSED: &[u8] = b"fuzz-key-never-issues-0123456789-0123";
const ALPHABET: &[u8] = b"-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz";

/// Values a hostile click could put in a URL: every macro at once, each trying to escape its place.
const HOSTILE: [&str; 8] = [
    "//evil.example/",
    "@evil.example:1/",
    "x?y=1&z=2#frag",
    "\r\nSet-Cookie: a=b",
    "%2F%2Fevil.example%00",
    "..\\..\\evil",
    "\u{202e}ünï©ødé\u{0}",
    "{click_id}",
];

/// ClickID verification: arbitrary text never verifies, never panics; issued ids round-trip (their flags too), sort
/// by time, fail on any one-character change, and survive exactly one key rotation.
pub fn clickid(data: &[u8]) {
    let verifier = ClickIdCodec::new(1, KEY_UNUSED, Some((2, KEY_UNUSED))).expect("codec");
    let text = String::from_utf8_lossy(data);
    if let Ok(info) = verifier.verify(&text) {
        panic!("forged ClickID {text:?} verified as {info:?}");
    }

    let a = ClickIdCodec::new(1, KEY_A, None).expect("codec");
    let mut u = Unstructured::new(data);
    let (Ok(link_a), Ok(ts_a), Ok(link_b), Ok(ts_b), Ok(pos), Ok(sym)) = (
        u.int_in_range(0..=MAX_LINK_ID),
        u.int_in_range(0..=MAX_TS_MS),
        u.int_in_range(0..=MAX_LINK_ID),
        u.int_in_range(0..=MAX_TS_MS),
        u.int_in_range(0..=CLICK_ID_LEN - 1),
        u.int_in_range(1..=ALPHABET.len() - 1),
    ) else {
        return;
    };
    let id = a.generate(link_a, ts_a).expect("generate in range");
    assert_eq!(id.len(), CLICK_ID_LEN);
    assert!(id.bytes().all(|b| ALPHABET.contains(&b)), "{id}");
    let info = a.verify(&id).expect("own ClickID verifies");
    assert_eq!(
        (info.version, info.key_id, info.link_id, info.ts_ms),
        (1, 1, link_a, ts_a)
    );

    let other = a.generate(link_b, ts_b).expect("generate in range");
    if ts_a < ts_b {
        assert!(id < other, "{id} (ts {ts_a}) sorts after {other} (ts {ts_b})");
    }

    // Any single-character change is a different 30-byte value, so the 80-bit tag must reject it.
    let mut changed = id.clone().into_bytes();
    let at = ALPHABET.iter().position(|&c| c == changed[pos]).expect("alphabet");
    changed[pos] = ALPHABET[(at + sym) % ALPHABET.len()];
    let changed = String::from_utf8(changed).expect("ascii");
    assert!(a.verify(&changed).is_err(), "{changed} verified after changing {id}");

    // Rotation: B current with A previous still accepts A's ids; C current with B previous drops them.
    let b = ClickIdCodec::new(2, KEY_B, Some((1, KEY_A))).expect("codec");
    assert_eq!(b.verify(&id).expect("previous key verifies").link_id, link_a);
    let c = ClickIdCodec::new(3, KEY_C, Some((2, KEY_B))).expect("codec");
    assert!(c.verify(&id).is_err(), "a key two rotations old still verifies");
    // Same key id, different secret: a server that reuses a key id with a new secret rejects old ids.
    let reused = ClickIdCodec::new(1, KEY_B, None).expect("codec");
    assert!(reused.verify(&id).is_err());

    // Flags: sealed in version 2, read back exactly; none at all is version 1. A flagged id sorts by time among
    // unflagged ones, and changing one character of it (its flags or version among them) breaks its 72-bit tag.
    let Ok(flags) = u.arbitrary::<u8>() else {
        return;
    };
    let flagged = a.generate_flagged(link_a, ts_a, flags).expect("generate in range");
    let info = a.verify(&flagged).expect("own flagged ClickID verifies");
    let version = if flags == 0 { 1 } else { 2 };
    assert_eq!(
        (info.version, info.flags, info.link_id, info.ts_ms),
        (version, flags, link_a, ts_a)
    );
    if ts_a < ts_b {
        assert!(flagged < other, "{flagged} (ts {ts_a}) sorts after {other} (ts {ts_b})");
    }
    let mut changed = flagged.clone().into_bytes();
    let at = ALPHABET.iter().position(|&c| c == changed[pos]).expect("alphabet");
    changed[pos] = ALPHABET[(at + sym) % ALPHABET.len()];
    let changed = String::from_utf8(changed).expect("ascii");
    assert!(a.verify(&changed).is_err(), "{changed} verified after changing {flagged}");
}

/// Link config decoding: never panics; what it accepts is in range and every URL it can redirect to keeps
/// its scheme, host and port whatever the click puts in the macros.
pub fn link_config(data: &[u8]) {
    let Ok(link) = CompiledLink::decode(data) else {
        return;
    };
    assert!(link.id <= MAX_LINK_ID, "link id {} past 40 bits", link.id);
    // A decoded link keeps no slug (the cache key is the slug): read back the one it accepted, skipping the
    // other fields as decode does.
    #[derive(serde::Deserialize)]
    struct Slug {
        slug: String,
    }
    let Slug { slug } = serde_json::from_slice(data).expect("decode accepted it, so it has a string slug");
    assert!(valid_slug(&slug), "accepted slug {slug:?}");
    let routes = &*link.routes;
    let mut templates: Vec<&UrlTemplate> = Vec::new();
    let mut lists: Vec<&Destinations> = routes.rules.iter().map(|r| &r.dests).collect();
    lists.extend(routes.default.as_ref());
    for list in lists {
        assert!(!list.is_empty() && list.total() > 0);
        for r in [0, 1, list.total() - 1, list.total(), u32::MAX] {
            let (i, t) = list.pick(r);
            assert!(i < list.len());
            assert_eq!(list.get(i), Some(t));
        }
        templates.extend((0..list.len()).filter_map(|i| list.get(i)));
    }
    templates.extend(routes.fallback.as_ref());
    templates.extend(routes.cap.as_ref().and_then(|c| c.url.as_ref()));
    for (n, template) in templates.into_iter().enumerate() {
        let hostile = HOSTILE[n % HOSTILE.len()];
        check_render(
            template,
            &values(hostile, [Some(hostile); 5], Some(hostile), hostile, hostile),
        );
    }
}

#[derive(Arbitrary, Debug)]
struct TemplateInput<'a> {
    template: &'a str,
    prefixed: bool,
    click_id: &'a str,
    subs: [Option<&'a str>; 5],
    country: Option<&'a str>,
    device: &'a str,
    os: &'a str,
    params: Vec<(&'a str, &'a str)>,
}

/// URL templates: parsing never panics, and a template it accepts renders, for any macro values, to an ASCII
/// URL with no control characters and the scheme, host and port the template was written with.
pub fn template(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(input) = TemplateInput::arbitrary(&mut u) else {
        return;
    };
    // Most random strings are not URLs; a fixed origin in front lets the fuzzer spend its time after it.
    let source = if input.prefixed {
        format!("https://shop.example:8443/{}", input.template)
    } else {
        input.template.to_owned()
    };
    let Ok(template) = UrlTemplate::parse(&source) else {
        return;
    };
    assert_eq!(template.as_str(), source);
    // The click's parameters: as the fuzzer made them, then every `{p:NAME}` the template names set to a hostile value.
    let given: BTreeMap<String, String> =
        input.params.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    let hostile: BTreeMap<String, String> = template
        .param_names()
        .enumerate()
        .map(|(n, name)| (name.to_owned(), HOSTILE[n % HOSTILE.len()].to_owned()))
        .collect();
    let mut v = values(input.click_id, input.subs, input.country, input.device, input.os);
    v.params = Some(&given);
    check_render(&template, &v);
    let mut v = values(HOSTILE[1], [Some(HOSTILE[0]); 5], Some(HOSTILE[3]), "", "");
    v.params = Some(&hostile);
    check_render(&template, &v);
}

fn values<'a>(
    click_id: &'a str,
    subs: [Option<&'a str>; 5],
    country: Option<&'a str>,
    device: &'a str,
    os: &'a str,
) -> MacroValues<'a> {
    MacroValues {
        click_id,
        link_id: MAX_LINK_ID,
        offer_id: Some(u64::MAX),
        aff_id: None,
        subs,
        country,
        device,
        os,
        ts_ms: MAX_TS_MS,
        params: None,
    }
}

fn check_render(template: &UrlTemplate, v: &MacroValues) {
    let empty = template.render_to_string(&MacroValues::default());
    let rendered = template.render_to_string(v);
    for url in [&empty, &rendered] {
        assert!(
            url.bytes().all(|b| b.is_ascii_graphic()),
            "{:?} rendered a byte that is not printable ASCII: {url:?}",
            template.as_str()
        );
    }
    let base = Url::parse(&empty).unwrap_or_else(|e| panic!("{:?} rendered {empty:?}: {e}", template.as_str()));
    let full = Url::parse(&rendered).unwrap_or_else(|e| panic!("{:?} rendered {rendered:?}: {e}", template.as_str()));
    assert!(matches!(base.scheme(), "http" | "https"), "{empty}");
    assert!(base.host_str().is_some_and(|h| !h.is_empty()), "{empty}");
    assert_eq!(
        (full.scheme(), full.host(), full.port_or_known_default()),
        (base.scheme(), base.host(), base.port_or_known_default()),
        "macro values moved {:?} from {empty} to {rendered}",
        template.as_str()
    );
    // The rendered URL starts with the template's own scheme and authority, byte for byte.
    let source = template.as_str();
    let after_scheme = source.find("://").expect("parse checked the scheme") + 3;
    let origin = after_scheme
        + source[after_scheme..]
            .find(['/', '?', '#'])
            .unwrap_or(source.len() - after_scheme);
    assert!(
        rendered.starts_with(&source[..origin]),
        "{rendered} does not start with {}",
        &source[..origin]
    );
}
