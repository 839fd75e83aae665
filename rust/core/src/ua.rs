//! User-Agent classification per click: device category and OS family for targeting, plus a bot flag.
use std::sync::LazyLock;

use isbot::Bots;
use woothee::parser::Parser;

/// Only the head of a User-Agent is parsed: real ones fit, and a huge header must not cost more per click.
pub const MAX_UA_LEN: usize = 512;

/// Link-preview fetchers, headless browsers and HTTP libraries that follow links without a person behind
/// them. Most are in isbot's list too; listing them here keeps them flagged whatever isbot's list becomes.
/// Each entry is a lower-case regex fragment matched anywhere in the User-Agent.
const EXTRA_BOTS: &[&str] = &[
    "slackbot",
    "slack-imgproxy",
    "facebookexternalhit",
    "facebot",
    "facebookcatalog",
    "twitterbot",
    "linkedinbot",
    "whatsapp",
    "telegrambot",
    "discordbot",
    "skypeuripreview",
    "applebot",
    "redditbot",
    "embedly",
    "pinterestbot",
    "pinterest/0\\.",
    "googlebot",
    "google-inspectiontool",
    "adsbot-google",
    "mediapartners-google",
    "bingbot",
    "bingpreview",
    "microsoftpreview",
    "yandexbot",
    "duckduckbot",
    "baiduspider",
    "iframely",
    "vkshare",
    "mastodon/",
    "headlesschrome",
    "phantomjs",
    "puppeteer",
    "playwright",
    "selenium",
    "python-requests",
    "python-urllib",
    "aiohttp",
    "httpx",
    "curl",
    "wget",
    "go-http-client",
    "okhttp",
    "java/",
    "apache-httpclient",
    "node-fetch",
    "axios/",
    "libwww-perl",
];

static BOTS: LazyLock<Bots> = LazyLock::new(|| {
    let mut bots = Bots::default();
    bots.append(EXTRA_BOTS);
    bots
});

/// What a click's User-Agent says about the device behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UaInfo {
    /// "desktop", "smartphone", "tablet", "mobilephone", "crawler", "appliance", "misc" or "unknown".
    pub device: &'static str,
    /// OS family: "iOS", "Android", "Windows", "macOS", "Linux", "ChromeOS", another name woothee knows, or
    /// "unknown".
    pub os: String,
    pub bot: bool,
}

/// Compiles the bot matcher and woothee's patterns now, so the first click does not pay for it.
pub fn warm_up() {
    LazyLock::force(&BOTS);
    classify(Some(
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36",
    ));
}

/// Classifies a User-Agent; a missing or blank one is treated as a bot on an unknown device.
pub fn classify(ua: Option<&str>) -> UaInfo {
    let ua = truncate(ua.unwrap_or("").trim(), MAX_UA_LEN);
    if ua.is_empty() {
        return UaInfo {
            device: "unknown",
            os: "unknown".to_owned(),
            bot: true,
        };
    }
    let (category, os) = match Parser::new().parse(ua) {
        Some(r) => (r.category, r.os),
        None => ("", ""),
    };
    let device = match category {
        "pc" => "desktop",
        "smartphone" if is_tablet(os, ua) => "tablet",
        "smartphone" => "smartphone",
        "mobilephone" => "mobilephone",
        "crawler" => "crawler",
        "appliance" => "appliance",
        "misc" => "misc",
        _ => "unknown",
    };
    let bot = device == "crawler" || BOTS.is_bot(ua);
    UaInfo {
        device,
        os: os_family(os).to_owned(),
        bot,
    }
}

/// Woothee files tablets under "smartphone": iPads by OS, Android tablets by the missing "Mobile" token.
fn is_tablet(os: &str, ua: &str) -> bool {
    os == "iPad" || (os == "Android" && !ua.contains("Mobile"))
}

fn os_family(os: &str) -> &str {
    match os {
        "iPhone" | "iPad" | "iPod" | "iOS" => "iOS",
        "Mac OSX" => "macOS",
        "BlackBerry 10" => "BlackBerry",
        "" | woothee::woothee::VALUE_UNKNOWN => "unknown",
        os if os.starts_with("Windows Phone") => "Windows Phone",
        os if os.starts_with("Windows") => "Windows",
        os => os,
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    const IPHONE_SAFARI: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 \
                                 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1";
    const ANDROID_CHROME: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) \
                                  Chrome/120.0.6099.144 Mobile Safari/537.36";
    const ANDROID_TABLET: &str = "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) \
                                  Chrome/120.0.0.0 Safari/537.36";
    const IPAD: &str = "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) \
                        Version/16.6 Mobile/15E148 Safari/604.1";
    const WINDOWS_CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) \
                                  Chrome/120.0.0.0 Safari/537.36";
    const MACOS_SAFARI: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 \
                                (KHTML, like Gecko) Version/17.1 Safari/605.1.15";
    const LINUX_FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0";
    const FACEBOOK_IN_APP: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 \
                                   (KHTML, like Gecko) Mobile/15E148 [FBAN/FBIOS;FBAV/442.0.0.38.110;FBBV/540101325]";
    const TWITTER_IN_APP: &str = "Mozilla/5.0 (Linux; Android 13; SM-S911B) AppleWebKit/537.36 (KHTML, like Gecko) \
                                  Chrome/119.0.0.0 Mobile Safari/537.36 TwitterAndroid";

    fn info(device: &'static str, os: &str, bot: bool) -> UaInfo {
        UaInfo {
            device,
            os: os.to_owned(),
            bot,
        }
    }

    #[test]
    fn people_on_common_browsers() {
        assert_eq!(classify(Some(IPHONE_SAFARI)), info("smartphone", "iOS", false));
        assert_eq!(classify(Some(ANDROID_CHROME)), info("smartphone", "Android", false));
        assert_eq!(classify(Some(ANDROID_TABLET)), info("tablet", "Android", false));
        assert_eq!(classify(Some(IPAD)), info("tablet", "iOS", false));
        assert_eq!(classify(Some(WINDOWS_CHROME)), info("desktop", "Windows", false));
        assert_eq!(classify(Some(MACOS_SAFARI)), info("desktop", "macOS", false));
        assert_eq!(classify(Some(LINUX_FIREFOX)), info("desktop", "Linux", false));
    }

    #[test]
    fn in_app_browsers_are_people() {
        assert!(!classify(Some(FACEBOOK_IN_APP)).bot);
        assert!(!classify(Some(TWITTER_IN_APP)).bot);
        assert_eq!(classify(Some(TWITTER_IN_APP)).device, "smartphone");
    }

    #[test]
    fn missing_or_blank_user_agent_is_a_bot() {
        for ua in [None, Some(""), Some("   ")] {
            assert_eq!(classify(ua), info("unknown", "unknown", true), "{ua:?}");
        }
    }

    #[test]
    fn googlebot_is_a_crawler() {
        let ua = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
        assert_eq!(classify(Some(ua)), info("crawler", "unknown", true));
        let smartphone = "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 \
                          (KHTML, like Gecko) Chrome/120.0.6099.71 Mobile Safari/537.36 \
                          (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
        assert!(classify(Some(smartphone)).bot);
    }

    #[test]
    fn link_previews_headless_browsers_and_http_libraries_are_bots() {
        let bots = [
            "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
            "Slackbot 1.0 (+https://api.slack.com/robots)",
            "Slack-ImgProxy (+https://api.slack.com/robots)",
            "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
            "Facebot",
            "Twitterbot/1.0",
            "LinkedInBot/1.0 (compatible; Mozilla/5.0; Apache-HttpClient +http://www.linkedin.com)",
            "WhatsApp/2.23.20.0 A",
            "WhatsApp/2.2343.4 i",
            "TelegramBot (like TwitterBot)",
            "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)",
            "Mozilla/5.0 (Windows NT 6.1; WOW64) SkypeUriPreview Preview/0.5 skype-url-preview@microsoft.com",
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_5) AppleWebKit/605.1.15 (KHTML, like Gecko) \
             Version/13.1.1 Safari/605.1.15 (Applebot/0.1; +http://www.apple.com/go/applebot)",
            "Mozilla/5.0 (compatible; redditbot/1.0; +http://www.reddit.com/feedback)",
            "Mozilla/5.0 (compatible; Embedly/0.2; +http://support.embed.ly/)",
            "Pinterest/0.2 (+https://www.pinterest.com/bot.html)",
            "Mozilla/5.0 (compatible; Pinterestbot/1.0; +http://www.pinterest.com/bot.html)",
            "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 \
             Safari/537.36",
            "Mozilla/5.0 (Unknown; Linux x86_64) AppleWebKit/538.1 (KHTML, like Gecko) PhantomJS/2.1.1 Safari/538.1",
            "python-requests/2.31.0",
            "curl/8.4.0",
            "Wget/1.21.4",
            "Go-http-client/2.0",
        ];
        for ua in bots {
            assert!(classify(Some(ua)).bot, "{ua}");
        }
    }

    #[test]
    fn extra_bot_patterns_match_on_their_own() {
        let only_ours = Bots::new(&EXTRA_BOTS.join("\n"));
        for ua in [
            "Slackbot 1.0",
            "TelegramBot (like TwitterBot)",
            "Facebot",
            "WhatsApp/2.23.20.0 A",
            "curl/8.4.0",
        ] {
            assert!(only_ours.is_bot(ua), "{ua}");
        }
        for ua in [
            IPHONE_SAFARI,
            ANDROID_CHROME,
            IPAD,
            WINDOWS_CHROME,
            MACOS_SAFARI,
            FACEBOOK_IN_APP,
        ] {
            assert!(!only_ours.is_bot(ua), "{ua}");
        }
    }

    #[test]
    fn only_the_head_of_a_huge_user_agent_is_read() {
        let huge = format!("{IPHONE_SAFARI}{}Googlebot", " x".repeat(1000));
        assert_eq!(classify(Some(&huge)), info("smartphone", "iOS", false));
        let multibyte = "é".repeat(600);
        assert_eq!(truncate(&multibyte, MAX_UA_LEN).len(), MAX_UA_LEN);
        assert_eq!(truncate(&format!("a{multibyte}"), MAX_UA_LEN).len(), MAX_UA_LEN - 1);
    }

    #[test]
    fn unrecognised_user_agent_is_unknown_but_not_necessarily_a_bot() {
        assert_eq!(classify(Some("SomethingNew/1.0")), info("unknown", "unknown", false));
    }
}
