//! Destination URL templates: validated once when a link config is decoded, rendered per click.
//!
//! Macros may appear only after the authority and every value is percent-encoded down to RFC 3986
//! unreserved characters, so no click parameter can change the scheme, host or port of a redirect.
//!
//! Besides the named macros, `{p:NAME}` forwards the click's own query parameter NAME (a traffic source's click
//! id: `{p:gclid}`, `{p:clickid}`), decoded and then encoded like every other value; NAME is 1 to 64 of
//! `A-Z a-z 0-9 _ . -`.
use std::collections::BTreeMap;
use std::fmt::Write as _;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use url::Url;

use crate::error::CoreError;

/// Longest template accepted, in bytes; browsers and proxies start failing past a few KiB.
pub const MAX_TEMPLATE_LEN: usize = 4096;

/// Everything except RFC 3986 unreserved characters (A-Z a-z 0-9 - . _ ~) gets percent-encoded.
const VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Non-ASCII literal bytes are encoded at parse time so a rendered URL is always ASCII (Location header).
const NON_ASCII: &AsciiSet = percent_encoding::CONTROLS;

/// Longest name a `{p:NAME}` macro may give.
pub const MAX_PARAM_NAME_LEN: usize = 64;
/// Most distinct `{p:NAME}` names in one template.
pub const MAX_PARAM_MACROS: usize = 16;

/// The values a template can refer to, borrowed from the click being served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MacroValues<'a> {
    pub click_id: &'a str,
    pub link_id: u64,
    pub offer_id: Option<u64>,
    pub aff_id: Option<u64>,
    pub subs: [Option<&'a str>; 5],
    pub country: Option<&'a str>,
    pub device: &'a str,
    pub os: &'a str,
    pub ts_ms: u64,
    /// The click's other query parameters, decoded (what `{p:NAME}` forwards).
    pub params: Option<&'a BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Macro {
    ClickId,
    LinkId,
    OfferId,
    AffId,
    Sub(u8),
    Country,
    Device,
    Os,
    Ts,
    /// `{p:NAME}`: the index of NAME in the template's `params`.
    Param(u8),
}

impl Macro {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "click_id" => Self::ClickId,
            "link_id" => Self::LinkId,
            "offer_id" => Self::OfferId,
            "aff_id" => Self::AffId,
            "sub1" => Self::Sub(0),
            "sub2" => Self::Sub(1),
            "sub3" => Self::Sub(2),
            "sub4" => Self::Sub(3),
            "sub5" => Self::Sub(4),
            "country" => Self::Country,
            "device" => Self::Device,
            "os" => Self::Os,
            "ts" => Self::Ts,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Segment {
    Literal(Box<str>),
    Macro(Macro),
}

/// A compiled destination URL template such as `https://shop.example/lp?cid={click_id}&s1={sub1}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UrlTemplate {
    source: Box<str>,
    segments: Box<[Segment]>,
    literal_len: usize,
    /// The names of its `{p:NAME}` macros.
    params: Box<[Box<str>]>,
}

fn param_name(name: &str) -> bool {
    (1..=MAX_PARAM_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn invalid(msg: impl Into<String>) -> CoreError {
    CoreError::InvalidTemplate(msg.into())
}

impl UrlTemplate {
    /// Validates and compiles a template; see the module docs for what is refused.
    pub fn parse(template: &str) -> Result<Self, CoreError> {
        if template.is_empty() {
            return Err(invalid("empty"));
        }
        if template.len() > MAX_TEMPLATE_LEN {
            return Err(invalid(format!("longer than {MAX_TEMPLATE_LEN} bytes")));
        }
        // Backslashes are path separators to browsers (WHATWG URL), so they are refused with the rest.
        if let Some(c) = template
            .chars()
            .find(|c| c.is_ascii_control() || *c == ' ' || *c == '\\')
        {
            return Err(invalid(format!("forbidden character {c:?}")));
        }
        let after_scheme = strip_prefix_ignore_case(template, "https://")
            .or_else(|| strip_prefix_ignore_case(template, "http://"))
            .ok_or_else(|| invalid("must start with http:// or https://"))?;
        let scheme_len = template.len() - after_scheme.len();
        let authority_len = after_scheme.find(['/', '?', '#']).unwrap_or(after_scheme.len());
        let authority = &after_scheme[..authority_len];
        if authority.is_empty() {
            return Err(invalid("missing host"));
        }
        if authority.contains(['{', '}']) {
            return Err(invalid("macros are not allowed in the scheme, host or port"));
        }
        if !authority.is_ascii() {
            return Err(invalid("non-ASCII host; write it in punycode"));
        }

        let mut segments = Vec::new();
        let mut params: Vec<Box<str>> = Vec::new();
        let mut literal = String::with_capacity(template.len());
        literal.push_str(&template[..scheme_len + authority_len]);
        let mut rest = &after_scheme[authority_len..];
        while !rest.is_empty() {
            let next = rest.find(['{', '}']).unwrap_or(rest.len());
            literal.extend(utf8_percent_encode(&rest[..next], NON_ASCII));
            rest = &rest[next..];
            if rest.is_empty() {
                break;
            }
            if rest.starts_with('}') {
                return Err(invalid("'}' without a matching '{'"));
            }
            let close = rest.find('}').ok_or_else(|| invalid("'{' without a matching '}'"))?;
            let name = &rest[1..close];
            let m = match name.strip_prefix("p:") {
                Some(param) if param_name(param) => {
                    let index = match params.iter().position(|p| &**p == param) {
                        Some(i) => i,
                        None if params.len() < MAX_PARAM_MACROS => {
                            params.push(param.into());
                            params.len() - 1
                        }
                        None => {
                            return Err(invalid(format!("more than {MAX_PARAM_MACROS} {{p:NAME}} names")));
                        }
                    };
                    Macro::Param(index as u8)
                }
                Some(_) => {
                    return Err(invalid(format!(
                        "{{{name}}}: a click parameter's name is 1-{MAX_PARAM_NAME_LEN} of A-Z a-z 0-9 _ . -"
                    )));
                }
                None => Macro::from_name(name).ok_or_else(|| invalid(format!("unknown macro {{{name}}}")))?,
            };
            if !literal.is_empty() {
                segments.push(Segment::Literal(std::mem::take(&mut literal).into_boxed_str()));
            }
            segments.push(Segment::Macro(m));
            rest = &rest[close + 1..];
        }
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal.into_boxed_str()));
        }

        let compiled = UrlTemplate {
            source: template.into(),
            literal_len: segments
                .iter()
                .map(|s| match s {
                    Segment::Literal(l) => l.len(),
                    Segment::Macro(_) => 0,
                })
                .sum(),
            segments: segments.into_boxed_slice(),
            params: params.into_boxed_slice(),
        };
        compiled.check_with_url_crate(&template[..scheme_len + authority_len])?;
        Ok(compiled)
    }

    /// Cross-checks with a real URL parser that the origin is well formed and fixed by the literal prefix.
    fn check_with_url_crate(&self, origin: &str) -> Result<(), CoreError> {
        let base = Url::parse(origin).map_err(|e| invalid(format!("not a valid URL: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(invalid("scheme must be http or https"));
        }
        if base.host_str().is_none_or(str::is_empty) {
            return Err(invalid("missing host"));
        }
        let mut sample = String::with_capacity(self.literal_len + 16);
        self.render_with(&mut sample, |_, out| out.push('x'));
        let full = Url::parse(&sample).map_err(|e| invalid(format!("not a valid URL: {e}")))?;
        if full.scheme() != base.scheme() || full.host() != base.host() || full.port() != base.port() {
            return Err(invalid("the path or query changes the host"));
        }
        Ok(())
    }

    /// Heap bytes this template holds (its source, segments and literals), for the cache's weigher.
    pub fn heap_bytes(&self) -> usize {
        let literals: usize = self
            .segments
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => l.len(),
                Segment::Macro(_) => 0,
            })
            .sum();
        let params: usize = self.params.iter().map(|p| p.len()).sum();
        self.source.len()
            + std::mem::size_of_val(&*self.segments)
            + literals
            + std::mem::size_of_val(&*self.params)
            + params
    }

    /// The names its `{p:NAME}` macros forward, in order of first use.
    pub fn param_names(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|p| &**p)
    }

    /// The template as written in the link config.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Appends the URL for one click to `out`; absent values render as empty strings.
    pub fn render(&self, v: &MacroValues, out: &mut String) {
        out.reserve(self.literal_len + 64);
        self.render_with(out, |m, out| match m {
            Macro::ClickId => encode(v.click_id, out),
            Macro::LinkId => number(v.link_id, out),
            Macro::OfferId => v.offer_id.into_iter().for_each(|n| number(n, out)),
            Macro::AffId => v.aff_id.into_iter().for_each(|n| number(n, out)),
            Macro::Sub(i) => v.subs[usize::from(i)].into_iter().for_each(|s| encode(s, out)),
            Macro::Country => v.country.into_iter().for_each(|s| encode(s, out)),
            Macro::Device => encode(v.device, out),
            Macro::Os => encode(v.os, out),
            Macro::Ts => number(v.ts_ms, out),
            Macro::Param(i) => {
                let name = &*self.params[usize::from(i)];
                if let Some(value) = v.params.and_then(|p| p.get(name)) {
                    encode(value, out);
                }
            }
        });
    }

    /// Convenience for callers that want a fresh string.
    pub fn render_to_string(&self, v: &MacroValues) -> String {
        let mut out = String::new();
        self.render(v, &mut out);
        out
    }

    fn render_with(&self, out: &mut String, mut value: impl FnMut(Macro, &mut String)) {
        for segment in self.segments.iter() {
            match segment {
                Segment::Literal(l) => out.push_str(l),
                Segment::Macro(m) => value(*m, out),
            }
        }
    }
}

fn encode(value: &str, out: &mut String) {
    out.extend(utf8_percent_encode(value, VALUE));
}

fn number(n: u64, out: &mut String) {
    // Writing to a String cannot fail.
    let _ = write!(out, "{n}");
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn values() -> MacroValues<'static> {
        MacroValues {
            click_id: "AbC-_09",
            link_id: 42,
            offer_id: Some(7),
            aff_id: None,
            subs: [Some("a b"), None, Some("x&y=z"), None, Some("é")],
            country: Some("US"),
            device: "smartphone",
            os: "iOS",
            ts_ms: 1_764_284_000_123,
            params: None,
        }
    }

    fn err(t: &str) -> String {
        match UrlTemplate::parse(t) {
            Err(CoreError::InvalidTemplate(m)) => m,
            other => panic!("{t:?} should be refused, got {other:?}"),
        }
    }

    #[test]
    fn renders_every_macro_exactly() {
        let t = UrlTemplate::parse(
            "https://shop.example/lp?c={click_id}&l={link_id}&o={offer_id}&a={aff_id}&s1={sub1}&s2={sub2}\
             &s3={sub3}&s4={sub4}&s5={sub5}&cc={country}&d={device}&os={os}&t={ts}#f{sub1}",
        )
        .unwrap();
        assert_eq!(
            t.render_to_string(&values()),
            "https://shop.example/lp?c=AbC-_09&l=42&o=7&a=&s1=a%20b&s2=&s3=x%26y%3Dz&s4=&s5=%C3%A9&cc=US\
             &d=smartphone&os=iOS&t=1764284000123#fa%20b"
        );
    }

    #[test]
    fn encodes_everything_but_unreserved() {
        let t = UrlTemplate::parse("http://a.example/{sub1}").unwrap();
        let v = MacroValues {
            subs: [
                Some("AZaz09-._~ !\"#$%&'()*+,/:;<=>?@[\\]^`{|}\r\n"),
                None,
                None,
                None,
                None,
            ],
            ..values()
        };
        assert_eq!(
            t.render_to_string(&v),
            "http://a.example/AZaz09-._~%20%21%22%23%24%25%26%27%28%29%2A%2B%2C%2F%3A%3B%3C%3D%3E%3F%40%5B%5C%5D%5E%60\
             %7B%7C%7D%0D%0A"
        );
    }

    #[test]
    fn literal_only_template_renders_itself() {
        let t = UrlTemplate::parse("https://shop.example/").unwrap();
        assert_eq!(t.render_to_string(&values()), "https://shop.example/");
        assert_eq!(t.as_str(), "https://shop.example/");
    }

    #[test]
    fn render_appends() {
        let t = UrlTemplate::parse("https://a.example/?c={click_id}").unwrap();
        let mut out = String::from("Location: ");
        t.render(&values(), &mut out);
        assert_eq!(out, "Location: https://a.example/?c=AbC-_09");
    }

    #[test]
    fn keeps_port_userinfo_and_uppercase_scheme() {
        let t = UrlTemplate::parse("HTTPS://u@a.example:8443?x={os}").unwrap();
        assert_eq!(t.render_to_string(&values()), "HTTPS://u@a.example:8443?x=iOS");
    }

    #[test]
    fn encodes_non_ascii_literals() {
        let t = UrlTemplate::parse("https://a.example/café?q={sub2}").unwrap();
        assert_eq!(t.render_to_string(&values()), "https://a.example/caf%C3%A9?q=");
    }

    #[test]
    fn refuses_unsafe_or_malformed_templates() {
        assert!(err("").contains("empty"));
        assert!(err("ftp://a.example/").contains("http"));
        assert!(err("javascript:alert(1)").contains("http"));
        assert!(err("https:a.example/{sub1}").contains("http"));
        assert!(err("//a.example/").contains("http"));
        assert!(err("https:///{sub1}").contains("host"));
        assert!(err("https://{sub1}.example/").contains("host"));
        assert!(err("https://a.example{sub1}").contains("host"));
        assert!(err("https://a.example:{sub1}/").contains("host"));
        assert!(err("https://{sub1}@a.example/").contains("host"));
        assert!(err("https://a.example/ x").contains("forbidden"));
        assert!(err("https://a.example/\r\nSet-Cookie:x").contains("forbidden"));
        assert!(err("https://a.example/\t").contains("forbidden"));
        assert!(err("https://a.example/\x7f").contains("forbidden"));
        assert!(err("https://a.example\\@evil.example/").contains("forbidden"));
        assert!(err("https://a.example/{nope}").contains("unknown macro"));
        assert!(err("https://a.example/{sub6}").contains("unknown macro"));
        assert!(err("https://a.example/{}").contains("unknown macro"));
        assert!(err("https://a.example/{click_id").contains("'{'"));
        assert!(err("https://a.example/click_id}").contains("'}'"));
        assert!(err("https://a.example/{{click_id}}").contains("unknown macro"));
        assert!(err("https://bücher.example/").contains("punycode"));
        assert!(err("https://a.example:99999/").contains("valid URL"));
        assert!(err("https://[::1/").contains("valid URL"));
        assert!(err(&format!("https://a.example/{}", "a".repeat(MAX_TEMPLATE_LEN))).contains("longer"));
        assert!(UrlTemplate::parse(&format!("https://a.example/{}", "a".repeat(MAX_TEMPLATE_LEN - 20))).is_ok());
    }

    #[test]
    fn forwards_the_clicks_own_parameters() {
        let t =
            UrlTemplate::parse("https://a.example/{p:clickid}?g={p:gclid}&x={p:a.b-c_D}&again={p:clickid}").unwrap();
        assert_eq!(t.param_names().collect::<Vec<_>>(), ["clickid", "gclid", "a.b-c_D"]);
        let params: BTreeMap<String, String> = [("clickid", "abc"), ("a.b-c_D", "x y&z=1\r\n"), ("other", "o")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let v = MacroValues {
            params: Some(&params),
            ..values()
        };
        assert_eq!(
            t.render_to_string(&v),
            "https://a.example/abc?g=&x=x%20y%26z%3D1%0D%0A&again=abc"
        );
        // Without the click's parameters every one is empty.
        assert_eq!(t.render_to_string(&values()), "https://a.example/?g=&x=&again=");
        assert!(t.heap_bytes() > t.as_str().len());
    }

    #[test]
    fn refuses_bad_parameter_macros() {
        assert!(err("https://a.example/{p:}").contains("click parameter"));
        assert!(err("https://a.example/{p:a/b}").contains("click parameter"));
        assert!(err("https://a.example/{p:a:b}").contains("click parameter"));
        assert!(err(&format!(
            "https://a.example/{{p:{}}}",
            "a".repeat(MAX_PARAM_NAME_LEN + 1)
        ))
        .contains("click parameter"));
        assert!(UrlTemplate::parse(&format!("https://a.example/{{p:{}}}", "a".repeat(MAX_PARAM_NAME_LEN))).is_ok());
        assert!(err("https://{p:host}.example/").contains("host"));
        assert!(err("https://a.example:{p:port}/").contains("host"));
        let many: String = (0..=MAX_PARAM_MACROS).map(|n| format!("{{p:n{n}}}")).collect();
        assert!(err(&format!("https://a.example/{many}")).contains("more than"));
        let repeated: String = (0..40).map(|_| "{p:same}").collect();
        assert!(UrlTemplate::parse(&format!("https://a.example/{repeated}")).is_ok());
    }

    const TEMPLATES: [&str; 5] = [
        "https://e.example/{p:clickid}?g={p:gclid}&s={sub1}#{p:a.b}",
        "https://shop.example/lp?cid={click_id}&s1={sub1}&s2={sub2}",
        "http://a.example:8080/{sub1}/{sub2}?{sub3}#{sub4}",
        "https://user:pw@b.example/{sub1}{sub2}{country}",
        "https://c.example?{sub1}={sub2}&d={device}&o={os}#{sub5}",
    ];

    proptest! {
        #[test]
        fn values_never_change_the_origin(
            which in 0..TEMPLATES.len(),
            subs in proptest::array::uniform5(proptest::option::of(prop_oneof![
                Just("\r\n".to_string()),
                Just("//evil.com".to_string()),
                Just("@evil.com".to_string()),
                Just("%".to_string()),
                Just("%2e%2e/../".to_string()),
                Just(":443@evil.com:80/".to_string()),
                any::<String>(),
                "[ -~]{0,20}",
            ])),
            click_id in any::<String>(),
            country in proptest::option::of(any::<String>()),
            device in any::<String>(),
            os in any::<String>(),
        ) {
            let t = UrlTemplate::parse(TEMPLATES[which]).unwrap();
            let base = Url::parse(TEMPLATES[which]).unwrap();
            let params: BTreeMap<String, String> = [("clickid", &subs[0]), ("gclid", &subs[1]), ("a.b", &subs[2])]
                .into_iter()
                .filter_map(|(k, v)| v.clone().map(|v| (k.to_owned(), v)))
                .collect();
            let v = MacroValues {
                click_id: &click_id,
                link_id: 1,
                offer_id: None,
                aff_id: Some(9),
                subs: subs.each_ref().map(|s| s.as_deref()),
                country: country.as_deref(),
                device: &device,
                os: &os,
                ts_ms: 5,
                params: Some(&params),
            };
            let rendered = t.render_to_string(&v);
            prop_assert!(rendered.bytes().all(|b| b.is_ascii_graphic()), "{}", rendered);
            let url = Url::parse(&rendered).unwrap();
            prop_assert_eq!(url.scheme(), base.scheme());
            prop_assert_eq!(url.host_str(), base.host_str());
            prop_assert_eq!(url.port(), base.port());
            prop_assert_eq!(url.username(), base.username());
            prop_assert_eq!(url.password(), base.password());
        }

        #[test]
        fn values_round_trip_through_query_and_path(a in any::<String>(), b in "[ -~]{0,30}") {
            let t = UrlTemplate::parse("https://d.example/{sub3}?a={sub1}&b={sub2}").unwrap();
            let v = MacroValues { subs: [Some(&a), Some(&b), Some(&a), None, None], ..values() };
            let url = Url::parse(&t.render_to_string(&v)).unwrap();
            let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
            prop_assert_eq!(pairs, vec![("a".to_string(), a.clone()), ("b".to_string(), b)]);
            // "." and ".." are dot segments to every URL parser; they stay in the path's own segment.
            prop_assume!(a != "." && a != "..");
            let segment = url.path().trim_start_matches('/');
            prop_assert_eq!(percent_encoding::percent_decode_str(segment).decode_utf8().unwrap(), a.as_str());
        }

        #[test]
        fn parse_never_panics_and_accepted_templates_keep_their_origin(s in "(https?://)?[ -~]{0,40}") {
            if let Ok(t) = UrlTemplate::parse(&s) {
                let rendered = t.render_to_string(&values());
                let url = Url::parse(&rendered).unwrap();
                prop_assert!(matches!(url.scheme(), "http" | "https"));
                prop_assert!(url.host_str().is_some_and(|h| !h.is_empty()));
            }
        }
    }
}
