//! A bus message, for both ends of the wire: a batch of records as JSON arrays that fit the
//! server's `max_payload` ([`split`]), LZ4-compressed and sealed (see seal.rs) by the relay that
//! stores it; opened, bounded and parsed ([`open_batch`]) by every relay that follows it.

use super::nats::{err, BusError, BATCH_BITS};
use super::seal::{BusKeys, MSG_ID, SEAL};
use crate::relay::record::{self, Record};

/// The header naming a message's compression, and its one value.
pub(super) const ENCODING: &str = "Logsocket-Encoding";
pub(super) const LZ4: &str = "lz4";

/// The records as JSON arrays of at most `limit` bytes each (and fewer than 2^20 records).
pub(super) fn split(records: &[Record], limit: usize) -> Result<Vec<Vec<u8>>, BusError> {
    let mut out = vec![];
    let mut body: Vec<u8> = Vec::new();
    let mut count = 0usize;
    for r in records {
        let raw = r.raw.as_bytes();
        if raw.len() + 2 > limit {
            return Err(BusError(format!(
                "a record of {} bytes is larger than the NATS server's max_payload ({limit} bytes); raise max_payload",
                raw.len()
            )));
        }
        if !body.is_empty() && (body.len() + raw.len() + 2 > limit || count + 1 >= 1 << BATCH_BITS) {
            body.push(b']');
            out.push(std::mem::take(&mut body));
            count = 0;
        }
        body.push(if body.is_empty() { b'[' } else { b',' });
        body.extend_from_slice(raw);
        count += 1;
    }
    if !body.is_empty() {
        body.push(b']');
        out.push(body);
    }
    Ok(out)
}

/// How many messages were skipped when `seq` arrives while `next` was expected (0: from the
/// oldest, nothing expected yet).
pub(super) fn discarded(next: u64, seq: u64) -> Option<u64> {
    (next != 0 && seq > next).then(|| seq - next)
}

/// The records of a bus message of `subject`: opened with the bus keys (it must be sealed),
/// refused if replayed (`recent`), decompressed into at most `max_body_bytes`, at most
/// `max_records`. CPU-bound on a large message: run it off the async workers.
pub(super) fn open_batch(
    keys: &BusKeys,
    subject: &str,
    headers: Option<&async_nats::HeaderMap>,
    payload: &[u8],
    stored_ms: Option<i64>,
    max_body_bytes: usize,
    max_records: usize,
) -> Result<(String, Vec<record::Record>), BusError> {
    let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str().to_owned());
    let encoding = header(ENCODING).unwrap_or_default();
    let id = header(MSG_ID);
    let body = keys
        .open(
            subject,
            header(SEAL).as_deref(),
            id.as_deref(),
            &encoding,
            payload,
            stored_ms,
        )
        .map_err(err)?;
    let body = match encoding.as_str() {
        LZ4 => decompress(&body, max_body_bytes)?,
        other => return Err(BusError(format!("unknown {ENCODING} {other:?}"))),
    };
    let records = record::parse_batch_limited(&body, max_records).map_err(err)?;
    Ok((id.unwrap_or_default(), records))
}

fn decompress(payload: &[u8], max: usize) -> Result<bytes::Bytes, BusError> {
    let (size, block) = lz4_flex::block::uncompressed_size(payload).map_err(err)?;
    if size > max {
        return Err(BusError(format!(
            "a message claims {size} bytes uncompressed, more than --max-body-bytes ({max})"
        )));
    }
    let mut out = vec![0; size];
    let n = lz4_flex::block::decompress_into(block, &mut out).map_err(err)?;
    if n != size {
        return Err(BusError("a message is shorter than it claims".into()));
    }
    Ok(out.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(n: usize, size: usize) -> Vec<Record> {
        let body = bytes::Bytes::from(format!(
            "[{}]",
            (0..n)
                .map(|i| format!("{{\"message\":\"{i:0size$}\"}}"))
                .collect::<Vec<_>>()
                .join(",")
        ));
        record::parse_batch(&body).unwrap()
    }

    #[test]
    fn a_batch_larger_than_max_payload_is_split_into_arrays_that_each_fit_in_order() {
        let batch = records(100, 90);
        let parts = split(&batch, 1000).unwrap();
        assert!(parts.len() > 1);
        let mut again = vec![];
        for p in &parts {
            assert!(p.len() <= 1000, "{}", p.len());
            again.extend(record::parse_batch(&bytes::Bytes::from(p.clone())).unwrap());
        }
        let raws = |r: &[Record]| r.iter().map(|r| r.raw.to_string()).collect::<Vec<_>>();
        assert_eq!(raws(&again), raws(&batch));
        assert!(split(&records(1, 2000), 1000).unwrap_err().0.contains("max_payload"));
    }

    #[test]
    fn a_jump_in_stream_sequence_is_a_discarded_gap_and_the_first_message_is_not() {
        assert_eq!(
            discarded(0, 57),
            None,
            "following from the oldest: nothing expected yet"
        );
        assert_eq!(discarded(5, 5), None);
        assert_eq!(discarded(5, 9), Some(4));
    }

    #[test]
    fn a_compressed_message_decodes_to_its_array_and_a_hostile_one_is_refused_without_allocating_its_claim() {
        let body = b"[{\"message\":\"hello\"},{\"message\":\"hello\"}]".to_vec();
        let compressed = lz4_flex::block::compress_prepend_size(&body);
        let max = 1 << 20;
        assert_eq!(&decompress(&compressed, max).unwrap()[..], &body[..]);
        // A size prefix of 4 GiB with no data behind it, and one just over the limit.
        let hostile = [0xff, 0xff, 0xff, 0xff, 0x00];
        assert!(decompress(&hostile, max).unwrap_err().0.contains("claims"));
        assert!(decompress(&compressed, body.len() - 1)
            .unwrap_err()
            .0
            .contains("--max-body-bytes"));
        // A prefix that claims more than the block holds.
        let mut short = compressed.clone();
        short[0] += 10;
        assert!(decompress(&short, max).is_err());
        assert!(decompress(&compressed[..compressed.len() - 3], max).is_err());
    }

    #[test]
    fn only_a_sealed_message_of_its_tap_and_within_the_limits_gives_records() {
        let keys = BusKeys::from_keys(&["0123456789abcdef0123456789abcdef-bus"]).unwrap();
        let subject = "logsocket.flow.shop.web";
        let body = b"[{\"message\":\"a\"},{\"message\":\"b\"}]";
        let sealed = keys.seal(subject, LZ4, &lz4_flex::block::compress_prepend_size(body));
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(ENCODING, LZ4);
        headers.insert(SEAL, sealed.seal.as_str());
        headers.insert(MSG_ID, sealed.id.as_str());
        let (id, records) = open_batch(&keys, subject, Some(&headers), &sealed.payload, None, 1 << 20, 10).unwrap();
        assert_eq!((id.as_str(), records.len()), (sealed.id.as_str(), 2));
        assert!(open_batch(
            &keys,
            "logsocket.flow.bank.web",
            Some(&headers),
            &sealed.payload,
            None,
            1 << 20,
            10
        )
        .is_err());
        assert!(
            open_batch(&keys, subject, Some(&headers), &sealed.payload, None, 1 << 20, 1).is_err(),
            "too many records"
        );
        let mut plain = async_nats::HeaderMap::new();
        plain.insert(ENCODING, LZ4);
        let unsealed = lz4_flex::block::compress_prepend_size(body);
        assert!(
            open_batch(&keys, subject, Some(&plain), &unsealed, None, 1 << 20, 10).is_err(),
            "not sealed"
        );
        assert!(
            open_batch(&keys, subject, None, body, None, 1 << 20, 10).is_err(),
            "a plain array"
        );
    }
}
