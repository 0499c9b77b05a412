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
