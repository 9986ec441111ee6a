//! The fields of a log record that both ends read: the relay to route, filter and authorize,
//! k8stail to filter locally. A record is fluentd's JSON object; [`Meta`] holds the few fields
//! read from it (`kubernetes.namespace_name`, `pod_name`, `container_name`, `labels`, and
//! `message` or `log`), absent or non-string fields reading as `None`.

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt;

/// Fields of a record the relay uses; absent (or non-string) fields read as `None`.
///
/// All strings live in one buffer with spans into it: a record costs two allocations here,
/// whatever its number of labels (ingest runs at hundreds of thousands of records a second,
/// and per-field strings made the allocator the relay's largest cost).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Meta {
    text: Box<str>,
    /// `kubernetes.namespace_name`, `pod_name`, `container_name`, and `message` (or `log`).
    fields: [Option<Span>; 4],
    /// `kubernetes.labels` with string values, in record order.
    labels: Vec<(Span, Span)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span(usize, usize);

const NAMESPACE: usize = 0;
const POD: usize = 1;
const CONTAINER: usize = 2;
const MESSAGE: usize = 3;

impl Meta {
    pub(crate) fn build(fields: [Option<&str>; 4], labels: &[(Cow<'_, str>, Option<Cow<'_, str>>)]) -> Meta {
        let len = fields.iter().flatten().map(|f| f.len()).sum::<usize>()
            + labels
                .iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| k.len() + v.len()))
                .sum::<usize>();
        let mut text = String::with_capacity(len);
        let mut push = |s: &str| {
            let start = text.len();
            text.push_str(s);
            Span(start, text.len())
        };
        let fields = fields.map(|f| f.map(&mut push));
        let labels = labels
            .iter()
            .filter_map(|(k, v)| v.as_deref().map(|v| (push(k), push(v))))
            .collect();
        Meta {
            text: text.into_boxed_str(),
            fields,
            labels,
        }
    }

    fn get(&self, span: Span) -> &str {
        &self.text[span.0..span.1]
    }

    fn field(&self, i: usize) -> Option<&str> {
        self.fields[i].map(|s| self.get(s))
    }

    /// `kubernetes.namespace_name`.
    pub fn namespace(&self) -> Option<&str> {
        self.field(NAMESPACE)
    }

    /// `kubernetes.pod_name`.
    pub fn pod(&self) -> Option<&str> {
        self.field(POD)
    }

    /// `kubernetes.container_name`.
    pub fn container(&self) -> Option<&str> {
        self.field(CONTAINER)
    }

    /// `message` (containerd) or `log` (docker), when it is a string.
    pub fn message(&self) -> Option<&str> {
        self.field(MESSAGE)
    }

    /// The value of label `key`; with a key given twice, the last one, as a JSON map would.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels().rev().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// The labels with string values, in record order.
    pub fn labels(&self) -> impl DoubleEndedIterator<Item = (&str, &str)> + '_ {
        self.labels.iter().map(|&(k, v)| (self.get(k), self.get(v)))
    }
}

impl fmt::Debug for Meta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Meta")
            .field("namespace", &self.namespace())
            .field("pod", &self.pod())
            .field("container", &self.container())
            .field("labels", &self.labels().collect::<Vec<_>>())
            .field("message", &self.message())
            .finish()
    }
}

/// What the relay reads from one record's JSON (k8stail uses it to filter locally).
pub fn meta_of(json: &str) -> Result<Meta, String> {
    let parsed: RawMeta<'_> = serde_json::from_str(json).map_err(|e| e.to_string())?;
    Ok(parsed.into_meta())
}

impl RawMeta<'_> {
    pub(crate) fn into_meta(self) -> Meta {
        let k = self.kubernetes.unwrap_or_default();
        let message = self.message.0.or(self.log.0);
        Meta::build(
            [
                k.namespace_name.0.as_deref(),
                k.pod_name.0.as_deref(),
                k.container_name.0.as_deref(),
                message.as_deref(),
            ],
            &k.labels.0,
        )
    }
}

#[derive(Deserialize, Default)]
pub(crate) struct RawMeta<'a> {
    #[serde(borrow, default)]
    kubernetes: Option<RawKubernetes<'a>>,
    #[serde(borrow, default)]
    message: MaybeStr<'a>,
    #[serde(borrow, default)]
    log: MaybeStr<'a>,
}

#[derive(Deserialize, Default)]
struct RawKubernetes<'a> {
    #[serde(borrow, default)]
    namespace_name: MaybeStr<'a>,
    #[serde(borrow, default)]
    pod_name: MaybeStr<'a>,
    #[serde(borrow, default)]
    container_name: MaybeStr<'a>,
    #[serde(borrow, default)]
    labels: Labels<'a>,
}

/// `kubernetes.labels` as (key, value) pairs in record order; anything but an object (e.g.
/// `null`) reads as no labels.
#[derive(Default)]
struct Labels<'a>(Vec<(Cow<'a, str>, Option<Cow<'a, str>>)>);

impl<'de: 'a, 'a> Deserialize<'de> for Labels<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Labels<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of labels")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Labels::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut labels = Vec::new();
                // Keys as `MaybeStr` (always a string in JSON), which borrows where it can.
                while let Some((key, value)) = map.next_entry::<MaybeStr<'de>, MaybeStr<'de>>()? {
                    labels.push((key.0.unwrap_or_default(), value.0));
                }
                Ok(Labels(labels))
            }
        }
        d.deserialize_any(V)
    }
}

/// A string, or `None` for any other JSON value: a record whose `message` is an object (merged
/// JSON logs) is still a valid record.
#[derive(Default)]
struct MaybeStr<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for MaybeStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MaybeStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(MaybeStr(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(MaybeStr(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(MaybeStr(Some(Cow::Owned(v))))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(MaybeStr(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(MaybeStr(None))
            }
        }
        d.deserialize_any(V)
    }
}
