//! Bus messages sealed with an AEAD (ChaCha20-Poly1305, from `ring`) under the bus keys
//! (`--bus-key-file`, one per line, the first seals, every one opens): NATS stores only
//! ciphertext, and whoever can reach NATS without the key can neither read a tap's records nor
//! put one in. The subject (the tap), the message's id and its encoding are bound as associated
//! data, so a message moved to another tap's subject, or given another id, does not open.
//!
//! A sealed message carries the header `Logsocket-Seal: v1 KEYID` (KEYID: 8 hex digits naming
//! the key, so an old key still opens what it sealed) and `Nats-Msg-Id` (random). Its payload
//! is a 12-byte random nonce and the sealed body: the sealing time (milliseconds since the
//! epoch, 8 bytes) and the message. A captured message published again is refused: within
//! JetStream's duplicate window (2 minutes) JetStream drops it by its id; after, the sealing
//! time is too far from when JetStream stored it ([`REPLAY_WINDOW`]); in between, followers
//! remember the ids they opened lately ([`Recent`]).

use crate::key_file::KeyFile;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use std::path::Path;

/// The header naming the seal's version and key.
pub const SEAL: &str = "Logsocket-Seal";
/// JetStream's de-duplication header, the message's id here.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// How far the sealing time may be from the time JetStream stored the message: JetStream's
/// duplicate window (2 minutes) plus 30 s for the clocks of relays and NATS.
pub const REPLAY_WINDOW_MS: i64 = 150_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One bus key: its id and the AEAD key derived from its line.
pub struct BusKey {
    id: String,
    key: LessSafeKey,
}

fn derive(line: &str) -> BusKey {
    // Domain-separated from every other use of the line (a key file is never shared with
    // ingest, but a copy-paste must not turn one key into the other).
    let material = ring::digest::digest(
        &ring::digest::SHA256,
        format!("log-socket bus seal v1\0{line}").as_bytes(),
    );
    let id = ring::digest::digest(&ring::digest::SHA256, material.as_ref());
    BusKey {
        id: id.as_ref()[..4].iter().map(|b| format!("{b:02x}")).collect(),
        key: LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, material.as_ref()).expect("a 32-byte key")),
    }
}

/// The bus keys.
pub struct BusKeys(KeyFile<BusKey>);

impl std::fmt::Debug for BusKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BusKeys({:?})", self.0)
    }
}

/// Why a message does not open.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unsealed {
    #[error("the message is not sealed")]
    NotSealed,
    #[error("the message is sealed with a key this relay does not have ({0})")]
    UnknownKey(String),
    #[error("the message does not open: forged, damaged, or moved from another tap")]
    Forged,
    #[error("the message was sealed long before NATS stored it: published again (replayed), or the clocks of relays and NATS are more than 30 s apart")]
    Replayed,
}

/// A sealed message: its headers' values and its payload.
pub struct Sealed {
    pub seal: String,
    pub id: String,
    pub payload: Vec<u8>,
}

fn aad(subject: &str, id: &str, encoding: &str) -> Vec<u8> {
    format!("logsocket-bus-v1\0{subject}\0{id}\0{encoding}").into_bytes()
}

impl BusKeys {
    pub fn load(path: &Path) -> Result<BusKeys, String> {
        KeyFile::load("bus", path, derive).map(BusKeys)
    }

    /// Fixed keys (tests, benches).
    pub fn from_keys(keys: &[&str]) -> Result<BusKeys, String> {
        KeyFile::from_keys("bus", keys, derive).map(BusKeys)
    }

    /// Seal `body` for `subject` with the first key; `encoding` is the body's encoding header.
    pub fn seal(&self, subject: &str, encoding: &str, body: &[u8]) -> Sealed {
        let random = SystemRandom::new();
        let mut nonce = [0u8; NONCE_LEN];
        let mut id = [0u8; 16];
        random.fill(&mut nonce).expect("the system's random source");
        random.fill(&mut id).expect("the system's random source");
        let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
        self.0.with(|keys| {
            let key = &keys[0];
            // One buffer, one copy of the body: nonce, then sealing time and body sealed in
            // place, then the tag.
            let tag_len = CHACHA20_POLY1305.tag_len();
            let mut payload = Vec::with_capacity(NONCE_LEN + 8 + body.len() + tag_len);
            payload.extend_from_slice(&nonce);
            payload.extend_from_slice(&now_ms().to_be_bytes());
            payload.extend_from_slice(body);
            let tag = key
                .key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(aad(subject, &id, encoding)),
                    &mut payload[NONCE_LEN..],
                )
                .expect("sealing a message in memory");
            payload.extend_from_slice(tag.as_ref());
            Sealed {
                seal: format!("v1 {}", key.id),
                id,
                payload,
            }
        })
    }

    /// Open a message of `subject` with the headers `seal`, `id` and `encoding`, stored by
    /// JetStream at `stored_ms` (milliseconds since the epoch) when known.
    pub fn open(
        &self,
        subject: &str,
        seal: Option<&str>,
        id: Option<&str>,
        encoding: &str,
        payload: &[u8],
        stored_ms: Option<i64>,
    ) -> Result<Vec<u8>, Unsealed> {
        let (Some(seal), Some(id)) = (seal, id) else {
            return Err(Unsealed::NotSealed);
        };
        let Some(key_id) = seal.strip_prefix("v1 ") else {
            return Err(Unsealed::NotSealed);
        };
        if payload.len() < NONCE_LEN {
            return Err(Unsealed::Forged);
        }
        let (nonce, sealed) = payload.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().expect("NONCE_LEN bytes");
        self.0.with(|keys| {
            let key = keys
                .iter()
                .find(|k| k.id == key_id)
                .ok_or_else(|| Unsealed::UnknownKey(key_id.chars().take(16).collect()))?;
            let mut opened = sealed.to_vec();
            let n = key
                .key
                .open_in_place(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(aad(subject, id, encoding)),
                    &mut opened,
                )
                .map_err(|_| Unsealed::Forged)?
                .len();
            opened.truncate(n);
            if opened.len() < 8 {
                return Err(Unsealed::Forged);
            }
            let sealed_ms = i64::from_be_bytes(opened[..8].try_into().expect("8 bytes"));
            if stored_ms.is_some_and(|stored| (stored - sealed_ms).abs() > REPLAY_WINDOW_MS) {
                return Err(Unsealed::Replayed);
            }
            opened.drain(..8);
            Ok(opened)
        })
    }
}

/// The ids of the messages a follower opened lately, to refuse one replayed into the stream.
pub struct Recent {
    order: std::collections::VecDeque<u128>,
    seen: std::collections::HashSet<u128>,
}

impl Recent {
    /// How many ids are remembered (per tap a relay follows): the messages of the 30 s between
    /// JetStream's duplicate window and [`REPLAY_WINDOW_MS`], at a high rate.
    pub const KEEP: usize = 4_096;

    pub fn new() -> Recent {
        Recent {
            order: Default::default(),
            seen: Default::default(),
        }
    }

    /// Remember `id`; `false` if it was seen already.
    pub fn first_time(&mut self, id: &str) -> bool {
        // Ids are 32 hex digits; anything else (it opened, so a relay wrote it) by its hash.
        let id = u128::from_str_radix(id, 16).unwrap_or_else(|_| {
            let d = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
            u128::from_be_bytes(d.as_ref()[..16].try_into().expect("16 bytes"))
        });
        if self.seen.contains(&id) {
            return false;
        }
        if self.order.len() >= Self::KEEP {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.order.push_back(id);
        self.seen.insert(id);
        true
    }
}

impl Default for Recent {
    fn default() -> Self {
        Recent::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdef0123456789abcdef-bus-a";
    const B: &str = "fedcba9876543210fedcba9876543210-bus-b";

    #[test]
    fn a_sealed_message_opens_for_its_tap_and_for_nobody_else() {
        let keys = BusKeys::from_keys(&[A]).unwrap();
        let m = keys.seal("logsocket.flow.shop.web", "lz4", b"[1,2,3]");
        assert!(!m.payload.windows(7).any(|w| w == b"[1,2,3]"), "stored as ciphertext");
        let open = |subject: &str, id: &str, encoding: &str, payload: &[u8]| {
            keys.open(subject, Some(&m.seal), Some(id), encoding, payload, None)
        };
        assert_eq!(
            open("logsocket.flow.shop.web", &m.id, "lz4", &m.payload).unwrap(),
            b"[1,2,3]"
        );
        assert_eq!(
            open("logsocket.flow.bank.web", &m.id, "lz4", &m.payload),
            Err(Unsealed::Forged),
            "moved to another tap"
        );
        assert_eq!(
            open("logsocket.flow.shop.web", "other", "lz4", &m.payload),
            Err(Unsealed::Forged),
            "another id"
        );
        assert_eq!(
            open("logsocket.flow.shop.web", &m.id, "none", &m.payload),
            Err(Unsealed::Forged),
            "another encoding"
        );
        let mut flipped = m.payload.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(
            open("logsocket.flow.shop.web", &m.id, "lz4", &flipped),
            Err(Unsealed::Forged)
        );
        assert_eq!(
            keys.open("logsocket.flow.shop.web", None, None, "lz4", b"[1]", None),
            Err(Unsealed::NotSealed)
        );
    }

    #[test]
    fn a_rotated_key_still_opens_what_the_old_one_sealed_and_a_stranger_opens_nothing() {
        let old = BusKeys::from_keys(&[A]).unwrap();
        let rotated = BusKeys::from_keys(&[B, A]).unwrap();
        let stranger = BusKeys::from_keys(&[B]).unwrap();
        let m = old.seal("s", "lz4", b"x");
        assert_eq!(
            rotated
                .open("s", Some(&m.seal), Some(&m.id), "lz4", &m.payload, None)
                .unwrap(),
            b"x"
        );
        assert!(matches!(
            stranger.open("s", Some(&m.seal), Some(&m.id), "lz4", &m.payload, None),
            Err(Unsealed::UnknownKey(_))
        ));
        assert!(rotated.seal("s", "lz4", b"x").seal != m.seal, "the first key seals");
    }

    #[test]
    fn a_message_stored_long_after_it_was_sealed_is_a_replay() {
        let keys = BusKeys::from_keys(&[A]).unwrap();
        let m = keys.seal("s", "lz4", b"x");
        let open = |stored: i64| keys.open("s", Some(&m.seal), Some(&m.id), "lz4", &m.payload, Some(stored));
        assert_eq!(open(now_ms()).unwrap(), b"x");
        assert_eq!(
            open(now_ms() + 10 * 60 * 1000),
            Err(Unsealed::Replayed),
            "published again ten minutes later"
        );
    }

    #[test]
    fn a_message_id_is_taken_once() {
        let mut recent = Recent::new();
        assert!(recent.first_time("a"));
        assert!(!recent.first_time("a"));
        for i in 0..Recent::KEEP {
            recent.first_time(&i.to_string());
        }
        assert!(recent.first_time("a"), "forgotten after KEEP others");
    }
}
