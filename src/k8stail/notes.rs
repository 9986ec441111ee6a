//! One-line notes on stderr, and the transient status line (only on a terminal): what the
//! stream waits for, redrawn in place, cleared before anything else is printed.

/// Notes and the status line of one stream.
pub struct Notes {
    pub tty: bool,
    status_shown: bool,
    /// The status line's text, to draw it again after a line printed over it.
    last: Option<String>,
}

impl Notes {
    pub fn new(tty: bool) -> Notes {
        Notes {
            tty,
            status_shown: false,
            last: None,
        }
    }

    /// Everything notes print may carry text from the network (status messages, pod names,
    /// error reasons): escaped to one line, like records.
    pub fn status(&mut self, text: &str) {
        if self.tty {
            eprint!("\r\x1b[2K{}", super::escape::one_line(text));
            self.status_shown = true;
            self.last = Some(text.to_owned());
        }
    }

    /// Take the status line away (records follow).
    pub fn clear(&mut self) {
        self.last = None;
        self.hide();
    }

    /// Take the status line away for a line on stdout, to draw it again with [`Notes::show`].
    pub fn hide(&mut self) {
        if self.status_shown {
            eprint!("\r\x1b[2K");
            self.status_shown = false;
        }
    }

    /// Draw the status line again after [`Notes::hide`].
    pub fn show(&mut self) {
        if let Some(text) = self.last.clone() {
            self.status(&text);
        }
    }

    /// A note of less weight (what `--rate` left out): dim on a terminal that takes colour.
    pub fn dim(&mut self, text: &str) {
        let colour = self.tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        self.hide();
        match colour {
            true => eprintln!("\x1b[2mk8stail: {}\x1b[0m", super::escape::one_line(text)),
            false => eprintln!("k8stail: {}", super::escape::one_line(text)),
        }
        self.show();
    }

    pub fn note(&mut self, text: &str) {
        self.hide();
        eprintln!("k8stail: {}", super::escape::one_line(text));
        self.show();
    }
}
