//! A listener's options: where to start reading and which records to send. One type,
//! [`ListenQuery`], and one codec for both ends: k8stail writes it with [`ListenQuery::to_pairs`],
//! the relay reads it with [`ListenQuery::from_pairs`] (mini-redis's one type per command, both
//! directions). On the wire they are `application/x-www-form-urlencoded` pairs, in the URL's query
//! string or, when the URL has none, in the [`OPTIONS_HEADER`] header.

use super::filter::Filter;

/// The header carrying the query options when the URL cannot: the API server's service proxy
/// drops the query string of a WebSocket upgrade (kubernetes/kubernetes#77142).
pub const OPTIONS_HEADER: &str = "x-logsocket-query";

/// The longest value of one option a relay takes.
pub const MAX_OPTION: usize = 1024;

/// Every option, as a relay names them when it refuses an unknown one.
pub const OPTION_NAMES: &str =
    "tail, after, epoch, rate, grep, exclude, pod, container, exclude-pod, exclude-container, namespace";

/// The highest `rate` a listener may ask for (records per second); more is "everything".
pub const MAX_RATE: u32 = 1_000_000;

/// The rate a listener gets: the lower of what it asked for (`rate`) and what its flow's
/// FlowTaps allow (`listenerRate`); `None`: every record. The relay samples by it, and
/// `k8stail taps` shows it.
pub fn effective_rate(asked: Option<u32>, tap: Option<u32>) -> Option<u32> {
    match (asked, tap) {
        (Some(a), Some(t)) => Some(a.min(t)),
        (a, t) => a.or(t),
    }
}

/// Where a new listener starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Start {
    /// New records only (no option, or `tail=0`).
    #[default]
    Live,
    /// The last N buffered records, then live (like `kubectl logs --tail N | grep`: the
    /// listener's authorization and filters apply to those N): `tail=N`.
    Tail(u64),
    /// Everything the tap holds, then live: `tail=all`.
    All,
    /// Everything after `seq`, when it was read from the tap with this `epoch` (if given):
    /// `after=SEQ&epoch=EPOCH`.
    After { seq: u64, epoch: Option<u64> },
}

/// The filter options as written by the listener (regular expressions, uncompiled), in the
/// order they travel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterOptions {
    /// `grep`: keep records whose message matches.
    pub grep: Option<String>,
    /// `exclude`: drop records whose message matches.
    pub exclude: Option<String>,
    /// `pod`: keep records whose pod name matches.
    pub pod: Option<String>,
    /// `container`: keep records whose container name matches.
    pub container: Option<String>,
    /// `exclude-pod`: drop records whose pod name matches.
    pub exclude_pod: Option<String>,
    /// `exclude-container`: drop records whose container name matches.
    pub exclude_container: Option<String>,
    /// `namespace`: keep records of this namespace only (not a pattern).
    pub namespace: Option<String>,
}

impl FilterOptions {
    /// The options as (wire name, value) pairs, patterns first, each set one once.
    pub fn pairs(&self) -> impl Iterator<Item = (&'static str, &String)> {
        [
            ("grep", &self.grep),
            ("exclude", &self.exclude),
            ("pod", &self.pod),
            ("container", &self.container),
            ("exclude-pod", &self.exclude_pod),
            ("exclude-container", &self.exclude_container),
            ("namespace", &self.namespace),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
    }

    /// Whether no option is set.
    pub fn is_empty(&self) -> bool {
        self.pairs().next().is_none()
    }

    /// The slot of option `name`, if it is a filter option.
    fn slot(&mut self, name: &str) -> Option<&mut Option<String>> {
        Some(match name {
            "grep" => &mut self.grep,
            "exclude" => &mut self.exclude,
            "pod" => &mut self.pod,
            "container" => &mut self.container,
            "exclude-pod" => &mut self.exclude_pod,
            "exclude-container" => &mut self.exclude_container,
            "namespace" => &mut self.namespace,
            _ => return None,
        })
    }

    /// Compile the patterns; an invalid one is reported under its wire name.
    pub fn compile(&self) -> Result<Filter, String> {
        self.compile_as(|option| option)
    }

    /// Compile the patterns; an invalid one is reported under `label(wire name)` (k8stail names
    /// its flags).
    pub fn compile_as(&self, label: impl Fn(&'static str) -> &'static str) -> Result<Filter, String> {
        let pattern = |name: &'static str, value: &Option<String>| {
            value.as_deref().map(|v| Filter::pattern(label(name), v)).transpose()
        };
        Ok(Filter {
            grep: pattern("grep", &self.grep)?,
            exclude: pattern("exclude", &self.exclude)?,
            pod: pattern("pod", &self.pod)?,
            container: pattern("container", &self.container)?,
            exclude_pod: pattern("exclude-pod", &self.exclude_pod)?,
            exclude_container: pattern("exclude-container", &self.exclude_container)?,
            namespace: self.namespace.clone(),
        })
    }
}

/// Everything a listener asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenQuery {
    pub start: Start,
    pub filter: FilterOptions,
    /// `rate`: at most this many records per second, sampled at the relay (the records left
    /// out are counted per pod in `dropped` frames with reason `sampled`).
    pub rate: Option<u32>,
}

impl ListenQuery {
    /// Read the options, refusing unknown names, bad numbers, values over [`MAX_OPTION`] and
    /// contradictions. Patterns are not compiled here ([`FilterOptions::compile`]).
    pub fn from_pairs(pairs: &[(String, String)]) -> Result<ListenQuery, String> {
        let mut filter = FilterOptions::default();
        let (mut tail, mut after, mut epoch, mut rate) = (None, None, None, None);
        let number = |k: &str, v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{k} must be a whole number, not {v:?}"))
        };
        for (k, v) in pairs {
            if v.len() > MAX_OPTION {
                return Err(format!("{k} is longer than {MAX_OPTION} characters"));
            }
            match k.as_str() {
                "tail" if v == "all" => tail = Some(Start::All),
                "tail" => tail = Some(Start::Tail(number(k, v)?)),
                "after" => after = Some(number(k, v)?),
                "epoch" => epoch = Some(number(k, v)?),
                "rate" => match number(k, v)? {
                    n @ 1..=1_000_000 => rate = Some(n as u32),
                    _ => return Err(format!("rate is records per second, from 1 to {MAX_RATE}, not {v}")),
                },
                other => match filter.slot(other) {
                    Some(slot) => *slot = Some(v.clone()),
                    None => return Err(format!("unknown query option {other:?}; supported: {OPTION_NAMES}")),
                },
            }
        }
        let start = match (tail, after) {
            (Some(_), Some(_)) => return Err("use either tail or after, not both".into()),
            (Some(start), None) => start,
            (None, Some(seq)) => Start::After { seq, epoch },
            (None, None) if epoch.is_some() => return Err("epoch goes with after".into()),
            (None, None) => Start::Live,
        };
        Ok(ListenQuery { start, filter, rate })
    }

    /// The options as pairs: the filters, then where to start (nothing for [`Start::Live`]).
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        let mut pairs: Vec<(String, String)> = self.filter.pairs().map(|(k, v)| (k.into(), v.clone())).collect();
        if let Some(rate) = self.rate {
            pairs.push(("rate".into(), rate.to_string()));
        }
        match self.start {
            Start::Live => {}
            Start::Tail(n) => pairs.push(("tail".into(), n.to_string())),
            Start::All => pairs.push(("tail".into(), "all".into())),
            Start::After { seq, epoch } => {
                pairs.push(("after".into(), seq.to_string()));
                if let Some(epoch) = epoch {
                    pairs.push(("epoch".into(), epoch.to_string()));
                }
            }
        }
        pairs
    }

    /// The options URL-encoded, without the `?` (empty when there are none): the query string,
    /// and the value of [`OPTIONS_HEADER`].
    pub fn encode(&self) -> String {
        serde_urlencoded::to_string(self.to_pairs()).expect("string pairs always encode")
    }

    /// The pairs of the URL's query string, else of the [`OPTIONS_HEADER`] value (`header`).
    pub fn pairs_of(query: Vec<(String, String)>, header: Option<&[u8]>) -> Result<Vec<(String, String)>, String> {
        if !query.is_empty() {
            return Ok(query);
        }
        let Some(value) = header else {
            return Ok(query);
        };
        let text = std::str::from_utf8(value).map_err(|_| format!("{OPTIONS_HEADER} is not URL-encoded text"))?;
        serde_urlencoded::from_str(text.trim_start_matches('?')).map_err(|e| format!("{OPTIONS_HEADER}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(text: &str) -> Vec<(String, String)> {
        serde_urlencoded::from_str(text).unwrap()
    }

    #[test]
    fn what_one_end_writes_the_other_reads_back() {
        let queries = [
            ListenQuery::default(),
            ListenQuery {
                start: Start::Tail(5),
                filter: FilterOptions {
                    grep: Some("a b&c=d/é+%".into()),
                    exclude_container: Some("^istio-".into()),
                    namespace: Some("shop".into()),
                    ..Default::default()
                },
                rate: None,
            },
            ListenQuery {
                start: Start::All,
                ..Default::default()
            },
            ListenQuery {
                start: Start::Tail(10),
                rate: Some(100),
                ..Default::default()
            },
            ListenQuery {
                start: Start::After {
                    seq: 41,
                    epoch: Some(7),
                },
                ..Default::default()
            },
            ListenQuery {
                start: Start::After { seq: 41, epoch: None },
                ..Default::default()
            },
        ];
        for q in queries {
            let encoded = q.encode();
            assert_eq!(ListenQuery::from_pairs(&pairs(&encoded)).unwrap(), q, "{encoded}");
        }
    }

    #[test]
    fn filters_are_sent_escaped_before_the_start() {
        let q = ListenQuery {
            start: Start::Tail(5),
            filter: FilterOptions {
                grep: Some("a b&c=d".into()),
                ..Default::default()
            },
            rate: Some(50),
        };
        assert_eq!(q.encode(), "grep=a+b%26c%3Dd&rate=50&tail=5");
        assert_eq!(ListenQuery::default().encode(), "");
    }

    #[test]
    fn contradictions_unknown_options_and_long_values_are_refused() {
        for (text, why) in [
            ("tail=1&after=2", "either tail or after"),
            ("epoch=3", "epoch goes with after"),
            ("tail=-1", "whole number"),
            ("tail=lots", "whole number"),
            ("follow=1", "unknown query option \"follow\""),
            ("rate=0", "rate is records per second, from 1 to"),
            ("rate=1000001", "from 1 to 1000000"),
            ("rate=fast", "whole number"),
        ] {
            let err = ListenQuery::from_pairs(&pairs(text)).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
        let long = vec![("grep".to_string(), "x".repeat(MAX_OPTION + 1))];
        assert!(ListenQuery::from_pairs(&long).unwrap_err().contains("longer than"));
    }

    #[test]
    fn the_header_is_read_only_when_the_url_has_no_query() {
        let url = vec![("tail".to_string(), "3".to_string())];
        assert_eq!(ListenQuery::pairs_of(url.clone(), Some(b"tail=9")).unwrap(), url);
        assert_eq!(
            ListenQuery::pairs_of(vec![], Some(b"?tail=9")).unwrap(),
            pairs("tail=9")
        );
        assert!(ListenQuery::pairs_of(vec![], None).unwrap().is_empty());
        assert!(ListenQuery::pairs_of(vec![], Some(&[0xff])).is_err());
    }

    #[test]
    fn an_invalid_pattern_is_reported_under_the_name_asked_for() {
        let f = FilterOptions {
            grep: Some("(unclosed".into()),
            ..Default::default()
        };
        assert!(f.compile().unwrap_err().starts_with("invalid grep pattern"));
        let flag = f.compile_as(|o| if o == "grep" { "--include" } else { o }).unwrap_err();
        assert!(flag.starts_with("invalid --include pattern"), "{flag}");
    }
}
