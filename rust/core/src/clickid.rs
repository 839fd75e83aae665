//! ClickIDs: 40 URL-safe characters that sort by time and prove, without a database, that we issued them.
//!
//! Layout (30 bytes, see docs/contracts.md): u48 ms timestamp BE | version nibble, key id nibble |
//! u40 link id BE | then by version:
//! - 1: 8 random bytes | HMAC-SHA256(key, bytes 0..20) truncated to 10 bytes;
//! - 2: flags byte | 8 random bytes | HMAC-SHA256(key, bytes 0..21) truncated to 9 bytes.
//!
//! Version 2, issued only for flagged clicks (a bot, a blocked address), adds a flags byte and keeps all 64 random
//! bits, paying with one byte of the tag (72 bits); the HMAC covers the flags, so a flag can be neither added nor
//! removed by anyone without the key. Unflagged clicks keep version 1 byte for byte, so verifiers of either version
//! read every click without flags. The version nibble, itself signed, picks the layout a verifier checks.
use base64::alphabet::Alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::CoreError;

type HmacSha256 = Hmac<Sha256>;

/// Characters of a ClickID.
pub const CLICK_ID_LEN: usize = 40;
/// Format version of a ClickID without flags (bytes 12..20 random, an 80-bit tag).
pub const CLICK_ID_VERSION: u8 = 1;
/// Format version of a ClickID with flags (byte 12 the flags, bytes 13..21 random, a 72-bit tag).
pub const CLICK_ID_VERSION_FLAGGED: u8 = 2;
/// Flag: the User-Agent is a bot's.
pub const FLAG_BOT: u8 = 1;
/// Flag: the client address is on the IP blocklist.
pub const FLAG_BLOCKED: u8 = 2;
/// Largest link id a ClickID can carry (40 bits).
pub const MAX_LINK_ID: u64 = (1 << 40) - 1;
/// Largest timestamp a ClickID can carry (48 bits of milliseconds, about the year 10889).
pub const MAX_TS_MS: u64 = (1 << 48) - 1;

const RAW_LEN: usize = 30;
/// Bytes the HMAC covers in version 1: everything before the tag, which takes the remaining 10.
const SIGNED_LEN_V1: usize = 20;
/// Bytes the HMAC covers in version 2 (the flags byte shifts the random bytes up one), leaving 9 for the tag.
const SIGNED_LEN_V2: usize = 21;

/// Where the tag starts in a ClickID of `version`, or None for a version this build does not know.
const fn signed_len(version: u8) -> Option<usize> {
    match version {
        CLICK_ID_VERSION => Some(SIGNED_LEN_V1),
        CLICK_ID_VERSION_FLAGGED => Some(SIGNED_LEN_V2),
        _ => None,
    }
}

// Ordered like ASCII so that comparing two ClickIDs as text compares their timestamps.
const ORDERED: Alphabet = match Alphabet::new("-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz") {
    Ok(alphabet) => alphabet,
    Err(_) => panic!("the ordered alphabet is 64 distinct printable ASCII characters"),
};

// 30 bytes are exactly 40 characters, so there is neither padding nor trailing bits to tolerate.
const ENGINE: GeneralPurpose = GeneralPurpose::new(
    &ORDERED,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone),
);

/// What a verified ClickID says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClickIdInfo {
    pub version: u8,
    pub key_id: u8,
    pub ts_ms: u64,
    pub link_id: u64,
    /// [`FLAG_BOT`], [`FLAG_BLOCKED`]: 0 for version 1.
    pub flags: u8,
}

/// Signs new ClickIDs with the current key and verifies them with the current or the previous key.
///
/// The HMAC states are keyed once here and cloned per call, which skips re-hashing the key on every click.
#[derive(Clone)]
pub struct ClickIdCodec {
    current: (u8, HmacSha256),
    previous: Option<(u8, HmacSha256)>,
}

impl std::fmt::Debug for ClickIdCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key ids only: the secrets must never reach a log.
        f.debug_struct("ClickIdCodec")
            .field("key_id", &self.current.0)
            .field("previous_key_id", &self.previous.as_ref().map(|(id, _)| *id))
            .finish_non_exhaustive()
    }
}

fn keyed(key_id: u8, secret: &[u8]) -> Result<(u8, HmacSha256), CoreError> {
    if key_id > 15 {
        return Err(CoreError::Config(format!("click id key id {key_id} is not in 0..=15")));
    }
    if secret.is_empty() {
        return Err(CoreError::Config(format!(
            "click id secret for key id {key_id} is empty"
        )));
    }
    let mac = HmacSha256::new_from_slice(secret).map_err(|e| CoreError::Config(e.to_string()))?;
    Ok((key_id, mac))
}

impl ClickIdCodec {
    /// Builds a codec from the current key and, during a rotation, the previous one.
    pub fn new(key_id: u8, secret: &[u8], previous: Option<(u8, &[u8])>) -> Result<Self, CoreError> {
        let current = keyed(key_id, secret)?;
        let previous = match previous {
            Some((prev_id, _)) if prev_id == key_id => {
                return Err(CoreError::Config(format!(
                    "current and previous click id keys share key id {key_id}"
                )))
            }
            Some((prev_id, prev_secret)) => Some(keyed(prev_id, prev_secret)?),
            None => None,
        };
        Ok(Self { current, previous })
    }

    /// Issues a ClickID for a click on `link_id` at `ts_ms` (milliseconds since the Unix epoch).
    pub fn generate(&self, link_id: u64, ts_ms: u64) -> Result<String, CoreError> {
        self.generate_flagged(link_id, ts_ms, 0)
    }

    /// Issues a ClickID carrying `flags`: version 1 exactly as [`ClickIdCodec::generate`] when there are none,
    /// else version 2 with the flags sealed in byte 12 and 64 random bits after them.
    pub fn generate_flagged(&self, link_id: u64, ts_ms: u64, flags: u8) -> Result<String, CoreError> {
        if link_id > MAX_LINK_ID {
            return Err(CoreError::InvalidClickId("link id does not fit in 40 bits"));
        }
        if ts_ms > MAX_TS_MS {
            return Err(CoreError::InvalidClickId("timestamp does not fit in 48 bits"));
        }
        let mut raw = [0u8; RAW_LEN];
        raw[0..6].copy_from_slice(&ts_ms.to_be_bytes()[2..8]);
        raw[7..12].copy_from_slice(&link_id.to_be_bytes()[3..8]);
        let signed = if flags == 0 {
            raw[6] = (CLICK_ID_VERSION << 4) | self.current.0;
            random_bytes(&mut raw[12..SIGNED_LEN_V1])?;
            SIGNED_LEN_V1
        } else {
            raw[6] = (CLICK_ID_VERSION_FLAGGED << 4) | self.current.0;
            raw[12] = flags;
            random_bytes(&mut raw[13..SIGNED_LEN_V2])?;
            SIGNED_LEN_V2
        };
        let mut mac = self.current.1.clone();
        mac.update(&raw[..signed]);
        raw[signed..].copy_from_slice(&mac.finalize().into_bytes()[..RAW_LEN - signed]);

        let mut text = [0u8; CLICK_ID_LEN];
        let written = ENGINE
            .encode_slice(raw, &mut text)
            .expect("30 bytes encode to exactly 40 characters");
        debug_assert_eq!(written, CLICK_ID_LEN);
        // The alphabet is ASCII, so the bytes are valid UTF-8.
        Ok(std::str::from_utf8(&text).expect("alphabet is ASCII").to_owned())
    }

    /// Checks a ClickID's shape and signature and returns what it encodes.
    pub fn verify(&self, text: &str) -> Result<ClickIdInfo, CoreError> {
        if text.len() != CLICK_ID_LEN {
            return Err(CoreError::InvalidClickId("wrong length"));
        }
        let mut raw = [0u8; RAW_LEN];
        match ENGINE.decode_slice(text.as_bytes(), &mut raw) {
            Ok(RAW_LEN) => {}
            _ => return Err(CoreError::InvalidClickId("bad character")),
        }
        let version = raw[6] >> 4;
        let Some(signed) = signed_len(version) else {
            return Err(CoreError::InvalidClickId("unknown version"));
        };
        let key_id = raw[6] & 0x0f;
        let key = if key_id == self.current.0 {
            &self.current.1
        } else {
            match &self.previous {
                Some((id, key)) if *id == key_id => key,
                _ => return Err(CoreError::InvalidClickId("unknown key id")),
            }
        };
        // The version nibble is signed in both layouts, so reading an id under the other version's layout changes
        // the signed bytes and fails the tag. The tag's length is public (it follows from the version); its
        // bytes are compared in constant time.
        let mut mac = key.clone();
        mac.update(&raw[..signed]);
        mac.verify_truncated_left(&raw[signed..])
            .map_err(|_| CoreError::InvalidClickId("bad signature"))?;

        let mut ts = [0u8; 8];
        ts[2..].copy_from_slice(&raw[0..6]);
        let mut link = [0u8; 8];
        link[3..].copy_from_slice(&raw[7..12]);
        Ok(ClickIdInfo {
            version,
            key_id,
            ts_ms: u64::from_be_bytes(ts),
            link_id: u64::from_be_bytes(link),
            // Signed like the rest, so whatever bits a version 2 id carries are ours; a bit this build does not
            // know (from a newer tracker) is passed on rather than failing the click.
            flags: if version == CLICK_ID_VERSION_FLAGGED {
                raw[12]
            } else {
                0
            },
        })
    }
}

/// Random bits for ClickIDs from a per-thread ChaCha12 stream seeded by the OS.
///
/// A getrandom(2) call per click costs more than the rest of the ClickID; a CSPRNG per thread, reseeded
/// from the OS every 64 KiB of output and after a fork (so a parent and its forked child never share a
/// stream and issue the same ids), keeps the bits unpredictable at a fraction of the cost.
fn random_bytes(out: &mut [u8]) -> Result<(), CoreError> {
    use rand_chacha::ChaCha12Rng;
    use rand_core::{RngCore, SeedableRng};
    use std::cell::RefCell;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Once;

    const RESEED_AFTER: usize = 64 * 1024;
    static FORKS: AtomicU64 = AtomicU64::new(0);
    static REGISTER: Once = Once::new();
    extern "C" fn after_fork_in_child() {
        FORKS.fetch_add(1, Ordering::SeqCst);
    }
    REGISTER.call_once(|| {
        // SAFETY: registers a handler that only touches an atomic, which is async-signal-safe.
        unsafe {
            libc::pthread_atfork(None, None, Some(after_fork_in_child));
        }
    });

    struct State {
        rng: ChaCha12Rng,
        generation: u64,
        used: usize,
    }
    thread_local! {
        static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
    }
    STATE.with(|cell| {
        let mut slot = cell.borrow_mut();
        let generation = FORKS.load(Ordering::SeqCst);
        let stale = match &*slot {
            Some(s) => s.generation != generation || s.used >= RESEED_AFTER,
            None => true,
        };
        if stale {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| CoreError::Entropy(e.to_string()))?;
            *slot = Some(State {
                rng: ChaCha12Rng::from_seed(seed),
                generation,
                used: 0,
            });
        }
        let state = slot.as_mut().expect("seeded above");
        state.rng.fill_bytes(out);
        state.used += out.len();
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALPHABET: &str = "-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz";
    const TS: u64 = 1_764_284_000_123;

    fn codec() -> ClickIdCodec {
        ClickIdCodec::new(3, b"current secret", None).unwrap()
    }

    fn reencode(raw: &[u8; RAW_LEN]) -> String {
        ENGINE.encode(raw)
    }

    fn decode(text: &str) -> [u8; RAW_LEN] {
        let mut raw = [0u8; RAW_LEN];
        assert_eq!(ENGINE.decode_slice(text, &mut raw).unwrap(), RAW_LEN);
        raw
    }

    /// Signs `raw` with `secret` in the layout its version nibble names, as only the holder of the key can.
    fn seal(secret: &[u8], raw: &mut [u8; RAW_LEN]) {
        let signed = match raw[6] >> 4 {
            1 => 20,
            2 => 21,
            v => panic!("no layout for version {v}"),
        };
        let mut mac = HmacSha256::new_from_slice(secret).unwrap();
        mac.update(&raw[..signed]);
        raw[signed..].copy_from_slice(&mac.finalize().into_bytes()[..RAW_LEN - signed]);
    }

    #[test]
    fn round_trip_returns_what_was_encoded() {
        let c = codec();
        let id = c.generate(42, TS).unwrap();
        assert_eq!(
            c.verify(&id).unwrap(),
            ClickIdInfo {
                version: 1,
                key_id: 3,
                ts_ms: TS,
                link_id: 42,
                flags: 0,
            }
        );
    }

    #[test]
    fn flagged_ids_are_version_2_and_round_trip_their_flags() {
        let c = codec();
        for flags in [FLAG_BOT, FLAG_BLOCKED, FLAG_BOT | FLAG_BLOCKED] {
            let id = c.generate_flagged(42, TS, flags).unwrap();
            assert_eq!(
                c.verify(&id).unwrap(),
                ClickIdInfo {
                    version: 2,
                    key_id: 3,
                    ts_ms: TS,
                    link_id: 42,
                    flags,
                }
            );
            let raw = decode(&id);
            assert_eq!((raw[6], raw[12]), (0x23, flags), "version 2, key 3, flags in byte 12");
        }
        // No flag: version 1, exactly as before flags existed.
        let plain = c.generate_flagged(42, TS, 0).unwrap();
        assert_eq!(decode(&plain)[6], 0x13);
        assert_eq!(c.verify(&plain).unwrap().flags, 0);
    }

    #[test]
    fn flagged_ids_stay_unique() {
        let c = codec();
        let mut seen = std::collections::HashSet::new();
        let mut values = vec![std::collections::HashSet::new(); RAW_LEN];
        for _ in 0..1000 {
            let id = c.generate_flagged(7, TS, FLAG_BOT).unwrap();
            for (pos, byte) in decode(&id).into_iter().enumerate() {
                values[pos].insert(byte);
            }
            assert!(seen.insert(id), "same link, ms and flags must still give distinct ids");
        }
        // Same link, ms and flags: bytes 0..13 never change, and each of the 8 random bytes 13..21 does (64 bits,
        // as many as version 1 has; the tag after them with it); a random byte stuck at one value in 1000 ids
        // would be a lost byte.
        for (pos, seen) in values.iter().enumerate() {
            assert_eq!(seen.len() > 1, pos >= 13, "byte {pos} took {} values", seen.len());
        }
    }

    #[test]
    fn a_flag_can_be_neither_removed_nor_added() {
        let c = codec();
        // Only the holder of the key could make these pass: re-sealing is what a forger cannot do.
        let reseal = |raw: &mut [u8; RAW_LEN]| seal(b"current secret", raw);
        let blocked = decode(&c.generate_flagged(42, TS, FLAG_BLOCKED).unwrap());
        // Clearing the flag, dropping to version 1, or both, without the key.
        let mut cleared = blocked;
        cleared[12] = 0;
        let mut downgraded = blocked;
        downgraded[6] = 0x13;
        let mut both = downgraded;
        both[12] = 0;
        for forged in [cleared, downgraded, both] {
            assert_eq!(
                c.verify(&reencode(&forged)),
                Err(CoreError::InvalidClickId("bad signature"))
            );
        }
        // And the other way: a clean id does not turn flagged, whether its version 1 tag is kept or a flags byte
        // is set in front of its random bytes.
        let clean = decode(&c.generate(42, TS).unwrap());
        let mut raised = clean;
        raised[6] = 0x23;
        let mut shifted = raised;
        shifted[12] = FLAG_BLOCKED;
        shifted[13..21].copy_from_slice(&clean[12..20]);
        for forged in [raised, shifted] {
            assert_eq!(
                c.verify(&reencode(&forged)),
                Err(CoreError::InvalidClickId("bad signature"))
            );
        }
        // With the key, the same bytes do verify: the signature, nothing else, is what refused them.
        let mut resealed = cleared;
        reseal(&mut resealed);
        assert_eq!(c.verify(&reencode(&resealed)).unwrap().flags, 0);
        let mut resealed = downgraded;
        reseal(&mut resealed);
        assert_eq!(c.verify(&reencode(&resealed)).unwrap().version, 1);
    }

    fn assert_every_bit_flip_fails(c: &ClickIdCodec, raw: &[u8; RAW_LEN]) {
        for pos in 0..RAW_LEN {
            for bit in 0..8 {
                let mut forged = *raw;
                forged[pos] ^= 1 << bit;
                assert!(
                    c.verify(&reencode(&forged)).is_err(),
                    "accepted flip of bit {bit} of byte {pos}"
                );
            }
        }
    }

    #[test]
    fn every_single_byte_tamper_of_a_flagged_id_fails() {
        let c = codec();
        let raw = decode(&c.generate_flagged(42, TS, FLAG_BOT | FLAG_BLOCKED).unwrap());
        assert_every_bit_flip_fails(&c, &raw);
    }

    #[test]
    fn version_1_known_answer() {
        // Computed outside this crate (Python's hmac and base64) from ts TS, key id 3, link 42 and random bytes
        // 5a c3 91 07 ee 42 18 b6; 4487c3c, before version 2's layout changed, verified it too: version 1 is unchanged.
        let info = codec().verify("-Of6WLSv3k-----eLgDG0yt15AOaYtnF8DltXEIS").unwrap();
        assert_eq!(
            info,
            ClickIdInfo {
                version: 1,
                key_id: 3,
                ts_ms: TS,
                link_id: 42,
                flags: 0
            }
        );
    }

    #[test]
    fn version_2_known_answer() {
        // Computed outside this crate (Python's hmac and base64) from ts TS, key id 3, link 42, flags 3 and random
        // bytes 5a c3 91 07 ee 42 18 b6: the flags byte, 64 random bits, a 72-bit tag over bytes 0..21.
        let info = codec().verify("-Of6WLSv7k-----e-pf2ZFUiFWXqDC8ubmX6vpYk").unwrap();
        let flags = FLAG_BOT | FLAG_BLOCKED;
        assert_eq!(
            info,
            ClickIdInfo {
                version: 2,
                key_id: 3,
                ts_ms: TS,
                link_id: 42,
                flags
            }
        );
        // The same click in eb8f216's version 2 layout (56 random bits, an 80-bit tag over bytes 0..20) is no
        // longer ours: the version nibble picks the current layout, whose tag it does not carry.
        assert_eq!(
            codec().verify("-Of6WLSv7k-----e-pf2ZFUiFWXUehcwXx9XYXy-"),
            Err(CoreError::InvalidClickId("bad signature"))
        );
    }

    #[test]
    fn layout_matches_the_contract() {
        let id = codec().generate(0x01_0203_0405, 0x0a0b_0c0d_0e0f).unwrap();
        let raw = decode(&id);
        assert_eq!(&raw[0..6], &[0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f]);
        assert_eq!(raw[6], 0x13);
        assert_eq!(&raw[7..12], &[1, 2, 3, 4, 5]);
        let mut mac = HmacSha256::new_from_slice(b"current secret").unwrap();
        mac.update(&raw[..20]);
        assert_eq!(&raw[20..], &mac.finalize().into_bytes()[..10]);
    }

    #[test]
    fn flagged_layout_matches_the_contract() {
        let id = codec()
            .generate_flagged(0x01_0203_0405, 0x0a0b_0c0d_0e0f, FLAG_BLOCKED)
            .unwrap();
        let raw = decode(&id);
        assert_eq!(&raw[0..6], &[0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f]);
        assert_eq!(raw[6], 0x23);
        assert_eq!(&raw[7..12], &[1, 2, 3, 4, 5]);
        assert_eq!(raw[12], FLAG_BLOCKED);
        // Bytes 13..21 random, then the tag: HMAC over bytes 0..21 (the last random byte included), 9 bytes.
        let mut mac = HmacSha256::new_from_slice(b"current secret").unwrap();
        mac.update(&raw[..21]);
        assert_eq!(&raw[21..], &mac.finalize().into_bytes()[..9]);
    }

    #[test]
    fn ids_are_url_safe_40_chars_and_unique() {
        let c = codec();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let id = c.generate(7, TS).unwrap();
            assert_eq!(id.len(), 40);
            assert!(
                id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{id}"
            );
            assert!(seen.insert(id), "same link and ms must still give distinct ids");
        }
    }

    #[test]
    fn every_single_character_tamper_fails() {
        let c = codec();
        for flags in [0, FLAG_BOT] {
            let id = c.generate_flagged(42, TS, flags).unwrap();
            for pos in 0..CLICK_ID_LEN {
                for ch in ALPHABET.chars() {
                    if id.as_bytes()[pos] == ch as u8 {
                        continue;
                    }
                    let mut forged = id.clone().into_bytes();
                    forged[pos] = ch as u8;
                    let forged = String::from_utf8(forged).unwrap();
                    assert!(c.verify(&forged).is_err(), "accepted {forged} tampered at {pos}");
                }
            }
        }
    }

    #[test]
    fn every_single_byte_tamper_fails() {
        let c = ClickIdCodec::new(3, b"current secret", Some((4, b"old secret"))).unwrap();
        let raw = decode(&c.generate(42, TS).unwrap());
        assert_every_bit_flip_fails(&c, &raw);
    }

    #[test]
    fn reasons_name_what_is_wrong() {
        let c = codec();
        let id = c.generate(42, TS).unwrap();
        let err = |s: &str| match c.verify(s) {
            Err(CoreError::InvalidClickId(reason)) => reason,
            other => panic!("expected InvalidClickId, got {other:?}"),
        };
        assert_eq!(err(&id[..39]), "wrong length");
        assert_eq!(err(&format!("{id}A")), "wrong length");
        assert_eq!(err(&format!("{}+", &id[..39])), "bad character");
        assert_eq!(err(&format!("{}=", &id[..39])), "bad character");
        // Same byte length as a ClickID, but not ASCII.
        assert_eq!(err(&format!("é{}", &id[..38])), "bad character");

        let mut raw = decode(&id);
        raw[6] = 0x33;
        assert_eq!(err(&reencode(&raw)), "unknown version");
        raw[6] = 0x03;
        assert_eq!(err(&reencode(&raw)), "unknown version");
        raw[6] = 0x15;
        assert_eq!(err(&reencode(&raw)), "unknown key id");
        raw[6] = 0x13;
        raw[25] ^= 1;
        assert_eq!(err(&reencode(&raw)), "bad signature");

        let mut flagged = decode(&c.generate_flagged(42, TS, FLAG_BOT).unwrap());
        flagged[6] = 0x25;
        assert_eq!(err(&reencode(&flagged)), "unknown key id");
        flagged[6] = 0x23;
        flagged[20] ^= 1; // the last random byte, signed in version 2
        assert_eq!(err(&reencode(&flagged)), "bad signature");
    }

    #[test]
    fn wrong_key_fails() {
        let id = codec().generate(42, TS).unwrap();
        let other = ClickIdCodec::new(3, b"another secret", None).unwrap();
        assert_eq!(other.verify(&id), Err(CoreError::InvalidClickId("bad signature")));
    }

    #[test]
    fn rotation_keeps_previous_ids_valid_and_drops_older_ones() {
        let v1 = ClickIdCodec::new(1, b"secret one", None).unwrap();
        let v2 = ClickIdCodec::new(2, b"secret two", Some((1, b"secret one"))).unwrap();
        let v3 = ClickIdCodec::new(3, b"secret three", Some((2, b"secret two"))).unwrap();

        let old = v1.generate(9, TS).unwrap();
        let info = v2.verify(&old).unwrap();
        assert_eq!((info.key_id, info.link_id, info.ts_ms), (1, 9, TS));

        let new = v2.generate(9, TS + 1).unwrap();
        assert_eq!(v2.verify(&new).unwrap().key_id, 2);
        assert_eq!(v3.verify(&new).unwrap().key_id, 2);
        assert_eq!(v3.verify(&old), Err(CoreError::InvalidClickId("unknown key id")));

        let old_flagged = v1.generate_flagged(9, TS, FLAG_BOT).unwrap();
        let info = v2.verify(&old_flagged).unwrap();
        assert_eq!((info.version, info.key_id, info.flags), (2, 1, FLAG_BOT));
        assert_eq!(
            v3.verify(&old_flagged),
            Err(CoreError::InvalidClickId("unknown key id"))
        );
    }

    #[test]
    fn previous_key_id_with_the_current_secret_is_rejected() {
        // An id claiming the previous key id but signed with the current key must not pass.
        let c = ClickIdCodec::new(2, b"secret two", Some((1, b"secret one"))).unwrap();
        for flags in [0, FLAG_BLOCKED] {
            let mut raw = decode(&c.generate_flagged(9, TS, flags).unwrap());
            raw[6] = (raw[6] & 0xf0) | 1;
            seal(b"secret two", &mut raw);
            assert_eq!(
                c.verify(&reencode(&raw)),
                Err(CoreError::InvalidClickId("bad signature"))
            );
            // The seal itself is right: signed with the previous secret, the same bytes verify.
            seal(b"secret one", &mut raw);
            assert_eq!(c.verify(&reencode(&raw)).unwrap().flags, flags);
        }
    }

    #[test]
    fn new_rejects_bad_keys() {
        assert!(ClickIdCodec::new(16, b"s", None).is_err());
        assert!(ClickIdCodec::new(0, b"", None).is_err());
        assert!(ClickIdCodec::new(0, b"s", Some((0, b"t"))).is_err());
        assert!(ClickIdCodec::new(0, b"s", Some((16, b"t"))).is_err());
        assert!(ClickIdCodec::new(0, b"s", Some((1, b""))).is_err());
        assert!(ClickIdCodec::new(15, b"s", Some((0, b"t"))).is_ok());
    }

    #[test]
    fn generate_rejects_values_that_do_not_fit() {
        let c = codec();
        assert!(c.generate(MAX_LINK_ID + 1, TS).is_err());
        assert!(c.generate(42, MAX_TS_MS + 1).is_err());
        let id = c.generate(MAX_LINK_ID, MAX_TS_MS).unwrap();
        let info = c.verify(&id).unwrap();
        assert_eq!((info.link_id, info.ts_ms), (MAX_LINK_ID, MAX_TS_MS));
    }

    #[test]
    fn debug_does_not_leak_secrets() {
        let c = ClickIdCodec::new(3, b"hunter2-secret", Some((4, b"older-secret"))).unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("older"), "{shown}");
        assert!(shown.contains("key_id: 3"), "{shown}");
    }

    proptest! {
        #[test]
        fn round_trip_any_link_and_ts(link_id in 0..=MAX_LINK_ID, ts in 0..=MAX_TS_MS) {
            let c = codec();
            let info = c.verify(&c.generate(link_id, ts).unwrap()).unwrap();
            prop_assert_eq!(info, ClickIdInfo { version: 1, key_id: 3, ts_ms: ts, link_id, flags: 0 });
        }

        #[test]
        fn round_trip_any_flags(link_id in 0..=MAX_LINK_ID, ts in 0..=MAX_TS_MS, flags in any::<u8>()) {
            let c = codec();
            let info = c.verify(&c.generate_flagged(link_id, ts, flags).unwrap()).unwrap();
            let version = if flags == 0 { 1 } else { 2 };
            prop_assert_eq!(info, ClickIdInfo { version, key_id: 3, ts_ms: ts, link_id, flags });
        }

        #[test]
        fn flagged_text_order_is_time_order(a in 0..=MAX_TS_MS, b in 0..=MAX_TS_MS, fa in any::<u8>(), fb in any::<u8>()) {
            let c = codec();
            let (ia, ib) = (c.generate_flagged(1, a, fa).unwrap(), c.generate_flagged(2, b, fb).unwrap());
            if a != b {
                prop_assert_eq!(ia.cmp(&ib), a.cmp(&b));
            }
        }

        #[test]
        fn text_order_is_time_order(a in 0..=MAX_TS_MS, b in 0..=MAX_TS_MS, la in 0..=MAX_LINK_ID, lb in 0..=MAX_LINK_ID) {
            let c = codec();
            let (ia, ib) = (c.generate(la, a).unwrap(), c.generate(lb, b).unwrap());
            if a != b {
                prop_assert_eq!(ia.cmp(&ib), a.cmp(&b));
            }
        }

        #[test]
        fn garbage_is_rejected_without_panicking(s in ".{0,80}") {
            prop_assert!(codec().verify(&s).is_err());
        }

        #[test]
        fn alphabet_garbage_of_the_right_length_is_rejected(s in "[-0-9A-Z_a-z]{40}") {
            prop_assert!(codec().verify(&s).is_err());
        }
    }
}
