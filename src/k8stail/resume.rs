//! `--resume-file`: where the stream stands, written atomically, read at start.

use super::notes::Notes;
use super::stream::Position;
use super::TapKey;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// What `--resume-file` holds.
#[derive(Debug, Serialize, Deserialize)]
struct ResumeFile {
    tap: String,
    epoch: u64,
    seq: u64,
}

pub fn read_resume(path: &Path, target: &TapKey, notes: &mut Notes) -> Result<Option<Position>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::Usage(format!(
                "cannot read --resume-file {}: {e}",
                path.display()
            )))
        }
    };
    let file: ResumeFile = serde_json::from_str(&text).map_err(|e| {
        Error::Usage(format!(
            "--resume-file {} is not a k8stail resume file ({e}); delete it to start fresh",
            path.display()
        ))
    })?;
    if file.tap != target.to_string() {
        notes.note(&format!(
            "--resume-file {} is for {}, not {target}; starting fresh",
            path.display(),
            file.tap
        ));
        return Ok(None);
    }
    Ok(Some(Position {
        epoch: file.epoch,
        seq: file.seq,
    }))
}

pub fn write_resume(path: &Path, target: &TapKey, p: Position) -> Result<(), String> {
    let file = ResumeFile {
        tap: target.to_string(),
        epoch: p.epoch,
        seq: p.seq,
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&file).expect("serialisable"))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("cannot write --resume-file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_file_round_trips_and_one_for_another_tap_is_ignored() {
        let dir = std::env::temp_dir().join(format!("k8stail-resume-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pos");
        let web = crate::k8stail::parse_target("shop/web", false).unwrap();
        let mut notes = Notes::new(false);
        assert_eq!(
            read_resume(&path, &web, &mut notes).unwrap(),
            None,
            "no file: start fresh"
        );
        write_resume(&path, &web, Position { epoch: 9, seq: 41 }).unwrap();
        assert_eq!(
            read_resume(&path, &web, &mut notes).unwrap(),
            Some(Position { epoch: 9, seq: 41 })
        );
        let other = crate::k8stail::parse_target("shop/api", false).unwrap();
        assert_eq!(read_resume(&path, &other, &mut notes).unwrap(), None);
        std::fs::write(&path, "garbage").unwrap();
        assert!(matches!(read_resume(&path, &web, &mut notes), Err(Error::Usage(m)) if m.contains("delete it")));
    }
}
