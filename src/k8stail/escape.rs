//! Output safety: text from records and from the network is shown escaped, never interpreted by
//! the terminal. Records come from any pod; an escape sequence in one must not recolour,
//! retitle or rewrite the terminal, or forge other lines (docs/k8stail.md, OUTPUT SAFETY).

/// `s` with every character `unsafe_char` picks written by `escape`; borrowed when there is
/// none (the common case).
fn escaped<'a>(
    s: &'a str,
    unsafe_char: impl Fn(char) -> bool,
    escape: impl Fn(char, &mut String),
) -> std::borrow::Cow<'a, str> {
    if !s.chars().any(&unsafe_char) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c) {
            escape(c, &mut out);
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// `\u{1b}`, as Rust writes a character.
fn escape_default(c: char, out: &mut String) {
    out.extend(c.escape_default());
}

/// Text from a record made safe for a terminal: control characters other than newline and tab
/// (escape sequences that could recolour, retitle or rewrite the terminal, or move the cursor
/// to forge other lines) are shown escaped, e.g. `\u{1b}`. Records come from any pod.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    escaped(s, |c| c.is_control() && c != '\n' && c != '\t', escape_default)
}

/// Text from the network made safe for one terminal line: every control character, newline
/// and tab included, shown escaped (`\n`, `\u{1b}`). For notes, status lines, error messages
/// and pretty records.
pub fn one_line(s: &str) -> std::borrow::Cow<'_, str> {
    escaped(s, char::is_control, escape_default)
}

/// JSON text with DEL and C1 control characters (which JSON allows raw inside strings) written
/// as `\u` escapes: the same JSON, harmless on a terminal.
pub fn json_for_terminal(s: &str) -> std::borrow::Cow<'_, str> {
    escaped(
        s,
        |c| ('\u{7f}'..='\u{9f}').contains(&c),
        |c, out| out.push_str(&format!("\\u{:04x}", c as u32)),
    )
}
