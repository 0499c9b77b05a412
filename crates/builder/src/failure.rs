//! What kind of failure an error is, said once per error variant. Exit codes, retries and
//! metric labels are derived from it; nothing decides them by matching reason strings.

use std::fmt;

/// The kinds of failure, as a user acts on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// Something the user wrote is wrong: a flag, a file, a spec field, a Secret's contents.
    Input,
    /// The registry refused the credentials or the permission.
    Auth,
    /// An owner, repository, image, tag or blob does not exist.
    NotFound,
    /// TLS: an untrusted or expired certificate, a wrong host name, an unusable CA.
    Tls,
    /// A host could not be reached, timed out, or said it is unavailable.
    Network,
    /// Anything else: an unexpected answer, local I/O, an internal error.
    Other,
}

impl FailureKind {
    /// Lower-case label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::Input => "input",
            Self::Auth => "auth",
            Self::NotFound => "not_found",
            Self::Tls => "tls",
            Self::Network => "network",
            Self::Other => "other",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The kind of a failure and whether trying again without a change may succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Category {
    pub kind: FailureKind,
    pub transient: bool,
}

impl Category {
    /// A failure that stays until someone changes something.
    pub const fn permanent(kind: FailureKind) -> Self {
        Self {
            kind,
            transient: false,
        }
    }

    /// A failure that may pass by itself.
    pub const fn transient(kind: FailureKind) -> Self {
        Self {
            kind,
            transient: true,
        }
    }
}

/// The messages of an error and its sources joined by `: `, without a message its predecessor
/// already contains (wrappers often repeat their source).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(error);
    while let Some(e) = current {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}

/// `text` cut to at most `max` bytes at a character boundary, with `…` when cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_names_each_cause_once() {
        let io = std::io::Error::other("connection reset");
        let wrapped = std::io::Error::other(io);
        assert_eq!(error_chain(&wrapped), "connection reset");
        #[derive(Debug, thiserror::Error)]
        #[error("upload failed")]
        struct Upload(#[source] std::io::Error);
        let chain = error_chain(&Upload(std::io::Error::other("broken pipe")));
        assert_eq!(chain, "upload failed: broken pipe");
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("ééé", 3), "é…");
        assert_eq!(truncate("abcdef", 3), "abc…");
    }
}
