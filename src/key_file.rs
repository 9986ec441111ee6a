//! A file of secret keys (a mounted Secret), one per line: the first is the one in use for new
//! work (signing, sealing), every line is accepted, so a key is rotated by putting a new first
//! line and keeping the old one below it until nothing made with it is left. The file is read
//! again when it changes (kubelet updates a mounted Secret in place); a file that became
//! unreadable or empty keeps the keys in use (and says so). Used for the ingest keys and the
//! bus keys; each derives what it needs from a line.

use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime};

/// Shortest key accepted: 32 characters (e.g. `openssl rand -hex 32` gives 64).
pub const MIN_KEY_LEN: usize = 32;

/// How often the file's modification time is looked at.
const RELOAD_CHECK: Duration = Duration::from_secs(5);

/// Keys derived from the lines of a file (or given, in tests).
pub struct KeyFile<K> {
    /// What the keys are for, in messages ("ingest", "bus").
    what: &'static str,
    path: Option<PathBuf>,
    derive: fn(&str) -> K,
    state: RwLock<Loaded<K>>,
}

struct Loaded<K> {
    keys: Vec<K>,
    modified: Option<SystemTime>,
    checked: Instant,
}

impl<K> std::fmt::Debug for KeyFile<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys themselves.
        let n = self.state.read().map(|s| s.keys.len()).unwrap_or(0);
        write!(f, "{n} key(s)")?;
        if let Some(p) = &self.path {
            write!(f, " from {}", p.display())?;
        }
        Ok(())
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl<K> KeyFile<K> {
    fn parse(&self, text: &str, origin: &str) -> Result<Vec<K>, String> {
        parse(self.what, self.derive, text, origin)
    }

    /// Keys from `path`, one per line, the one in use first.
    pub fn load(what: &'static str, path: &Path, derive: fn(&str) -> K) -> Result<KeyFile<K>, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the {what} key file {}: {e}", path.display()))?;
        let keys = parse(what, derive, &text, &path.display().to_string())?;
        Ok(KeyFile {
            what,
            path: Some(path.to_owned()),
            derive,
            state: RwLock::new(Loaded {
                keys,
                modified: modified(path),
                checked: Instant::now(),
            }),
        })
    }

    /// Fixed keys (tests, benches).
    pub fn from_keys(what: &'static str, keys: &[&str], derive: fn(&str) -> K) -> Result<KeyFile<K>, String> {
        Ok(KeyFile {
            what,
            path: None,
            derive,
            state: RwLock::new(Loaded {
                keys: parse(what, derive, &keys.join("\n"), &format!("{what} keys"))?,
                modified: None,
                checked: Instant::now(),
            }),
        })
    }

    /// `f` of the keys (the one in use first), read again first if the file changed.
    pub fn with<T>(&self, f: impl FnOnce(&[K]) -> T) -> T {
        self.refresh();
        f(&self.state.read().unwrap().keys)
    }

    /// Make the next use look at the file again, as if it changed (tests).
    #[cfg(test)]
    pub(crate) fn due(&self) {
        let mut state = self.state.write().unwrap();
        state.checked = Instant::now() - RELOAD_CHECK;
        state.modified = Some(SystemTime::now() - Duration::from_secs(60));
    }

    fn refresh(&self) {
        let Some(path) = &self.path else { return };
        {
            let state = self.state.read().unwrap();
            if state.checked.elapsed() < RELOAD_CHECK {
                return;
            }
        }
        let mut state = self.state.write().unwrap();
        if state.checked.elapsed() < RELOAD_CHECK {
            return;
        }
        state.checked = Instant::now();
        let now = modified(path);
        if now == state.modified {
            return;
        }
        match std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|t| self.parse(&t, &path.display().to_string()))
        {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), file = %path.display(), "{} keys reloaded", self.what);
                state.keys = keys;
                state.modified = now;
            }
            Err(e) => tracing::warn!(error = %e, "{} keys not reloaded; the ones in use stay", self.what),
        }
    }
}

fn parse<K>(what: &str, derive: fn(&str) -> K, text: &str, origin: &str) -> Result<Vec<K>, String> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    if lines.is_empty() {
        return Err(format!(
            "{origin}: no {what} key; put one per line, the newest first (e.g. `openssl rand -hex 32`)"
        ));
    }
    if let Some(n) = lines.iter().position(|l| l.len() < MIN_KEY_LEN) {
        return Err(format!(
            "{origin}: key on line {} is shorter than {MIN_KEY_LEN} characters; use e.g. `openssl rand -hex 32`",
            n + 1
        ));
    }
    Ok(lines.into_iter().map(derive).collect())
}
