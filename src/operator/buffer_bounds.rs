//! A FlowTap's `spec.buffer` lives in the shared fluentd of its Logging: its memory
//! (`totalLimitSize`), and how often it sends (`flushInterval`), are everyone's. Bounded by the
//! operator's settings; a tap asking for more is refused with a condition saying which value and
//! what is allowed, and nothing is rendered for it.

use super::status::Refusal;
use crate::k8s::flowtap::BufferSpec;

/// The `OutputReady` reason of a tap whose buffer is out of bounds.
pub const BUFFER_OUT_OF_RANGE: &str = "BufferOutOfRange";
/// Default `--max-tap-buffer-bytes`.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;
/// `flushInterval` bounds, in seconds: faster floods the relay with tiny requests, slower is
/// not live (and holds a minute of records in the shared fluentd).
pub const FLUSH_SECONDS: (f64, f64) = (0.1, 60.0);

/// A fluentd size (`8m`, `512k`, `1g`, a number of bytes): what fluentd reads it as.
pub fn size_bytes(size: &str) -> Option<u64> {
    let size = size.trim();
    let (number, unit) = match size.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&size[..i], c.to_ascii_lowercase()),
        _ => (size, ' '),
    };
    let n: u64 = number.parse().ok()?;
    let scale: u64 = match unit {
        ' ' => 1,
        'k' => 1 << 10,
        'm' => 1 << 20,
        'g' => 1 << 30,
        't' => 1 << 40,
        _ => return None,
    };
    n.checked_mul(scale)
}

fn mib(bytes: u64) -> String {
    format!("{}Mi", bytes >> 20)
}

/// Why `buffer` is refused with a shared fluentd allowing `max_bytes` per tap, and the relay
/// taking requests of at most `max_request_bytes`, if it is.
pub fn check(buffer: &BufferSpec, max_bytes: u64, max_request_bytes: u64) -> Option<Refusal> {
    let refuse = |what: String| {
        Some(Refusal::new(
            BUFFER_OUT_OF_RANGE,
            format!("{what}; the tap's buffer lives in the Logging's shared fluentd, so it is bounded by the operator (nothing was rendered for this tap): change spec.buffer"),
        ))
    };
    let total = size_bytes(&buffer.total_limit_size);
    let chunk = size_bytes(&buffer.chunk_limit_size);
    match total {
        None => {
            return refuse(format!(
                "spec.buffer.totalLimitSize {:?} is not a size",
                buffer.total_limit_size
            ))
        }
        Some(t) if t > max_bytes => {
            return refuse(format!(
                "spec.buffer.totalLimitSize {} is more than the {} a tap may use (--max-tap-buffer-bytes)",
                buffer.total_limit_size,
                mib(max_bytes)
            ))
        }
        _ => {}
    }
    match (chunk, total) {
        (None, _) => {
            return refuse(format!(
                "spec.buffer.chunkLimitSize {:?} is not a size",
                buffer.chunk_limit_size
            ))
        }
        (Some(c), Some(t)) if c > t => {
            return refuse(format!(
                "spec.buffer.chunkLimitSize {} is larger than totalLimitSize {}",
                buffer.chunk_limit_size, buffer.total_limit_size
            ))
        }
        // fluentd would send requests the relay refuses (413), and drop them.
        (Some(c), _) if c > max_request_bytes => {
            return refuse(format!(
                "spec.buffer.chunkLimitSize {} is larger than the {} the relay takes in one request (--max-body-bytes)",
                buffer.chunk_limit_size,
                mib(max_request_bytes)
            ))
        }
        _ => {}
    }
    let seconds: f64 = super::output_spec::fluentd_seconds(&buffer.flush_interval)
        .parse()
        .unwrap_or(f64::INFINITY);
    if !(FLUSH_SECONDS.0..=FLUSH_SECONDS.1).contains(&seconds) {
        return refuse(format!(
            "spec.buffer.flushInterval {} is outside {}s..{}s",
            buffer.flush_interval, FLUSH_SECONDS.0, FLUSH_SECONDS.1
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer(flush: &str, chunk: &str, total: &str) -> BufferSpec {
        BufferSpec {
            flush_interval: flush.into(),
            chunk_limit_size: chunk.into(),
            total_limit_size: total.into(),
            ..Default::default()
        }
    }

    #[test]
    fn sizes_read_as_fluentd_reads_them() {
        assert_eq!(size_bytes("8m"), Some(8 << 20));
        assert_eq!(size_bytes("512k"), Some(512 << 10));
        assert_eq!(size_bytes("1G"), Some(1 << 30));
        assert_eq!(size_bytes("4096"), Some(4096));
        assert_eq!(size_bytes("99999999999999999999g"), None);
        assert_eq!(size_bytes("m"), None);
    }

    #[test]
    fn a_buffer_within_the_bounds_passes_and_one_beyond_says_which_value_and_what_is_allowed() {
        let max = DEFAULT_MAX_BYTES;
        assert_eq!(check(&BufferSpec::default(), max, 16 << 20), None);
        assert_eq!(check(&buffer("500ms", "1m", "64m"), max, 16 << 20), None);
        let huge = check(&buffer("1s", "1m", "500g"), max, 16 << 20).expect("refused");
        assert_eq!(huge.reason, BUFFER_OUT_OF_RANGE);
        assert!(
            huge.message.contains("totalLimitSize 500g") && huge.message.contains("64Mi"),
            "{}",
            huge.message
        );
        let slow = check(&buffer("24h", "1m", "8m"), max, 16 << 20).expect("refused");
        assert!(slow.message.contains("flushInterval 24h"), "{}", slow.message);
        assert!(check(&buffer("10ms", "1m", "8m"), max, 16 << 20).is_some(), "too fast");
        assert!(
            check(&buffer("1s", "16m", "8m"), max, 16 << 20).is_some(),
            "a chunk larger than the buffer"
        );
    }
}
