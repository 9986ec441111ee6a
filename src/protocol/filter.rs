//! A listener's record filters, compiled: evaluated at the relay so filtered-out records never
//! cross the network, and by k8stail for what it filters itself. Patterns come from users, so
//! they are compiled with size limits.

use super::record_meta::Meta;
use regex::{Regex, RegexBuilder};

/// Record filters a listener asks for ([`super::query::FilterOptions`], compiled).
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// Keep records whose message matches.
    pub grep: Option<Regex>,
    /// Drop records whose message matches.
    pub exclude: Option<Regex>,
    /// Keep records whose pod name matches.
    pub pod: Option<Regex>,
    /// Keep records whose container name matches.
    pub container: Option<Regex>,
    /// Drop records whose pod name matches.
    pub exclude_pod: Option<Regex>,
    /// Drop records whose container name matches.
    pub exclude_container: Option<Regex>,
    /// Keep records of this namespace only.
    pub namespace: Option<String>,
}

impl Filter {
    /// Compile a user-supplied pattern with limits, so a hostile regex cannot exhaust memory.
    pub fn pattern(what: &str, pattern: &str) -> Result<Regex, String> {
        RegexBuilder::new(pattern)
            .size_limit(1 << 20)
            .dfa_size_limit(1 << 20)
            .build()
            .map_err(|e| format!("invalid {what} pattern: {e}"))
    }

    /// Whether a record passes every filter.
    pub fn matches(&self, meta: &Meta) -> bool {
        let message = meta.message().unwrap_or("");
        let opt_match = |re: &Option<Regex>, value: Option<&str>| match re {
            Some(re) => value.is_some_and(|v| re.is_match(v)),
            None => true,
        };
        self.namespace
            .as_ref()
            .is_none_or(|ns| meta.namespace() == Some(ns.as_str()))
            && opt_match(&self.pod, meta.pod())
            && opt_match(&self.container, meta.container())
            && !self
                .exclude_pod
                .as_ref()
                .is_some_and(|re| re.is_match(meta.pod().unwrap_or("")))
            && !self
                .exclude_container
                .as_ref()
                .is_some_and(|re| re.is_match(meta.container().unwrap_or("")))
            && self.grep.as_ref().is_none_or(|re| re.is_match(message))
            && self.exclude.as_ref().is_none_or(|re| !re.is_match(message))
    }
}
