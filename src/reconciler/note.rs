//! An Event to publish about an object, as every kind's decision names it.

/// An Event to publish: reason, note, and whether it is a warning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub reason: &'static str,
    pub note: String,
    pub warning: bool,
}

impl Note {
    pub fn normal(reason: &'static str, note: impl Into<String>) -> Self {
        Note {
            reason,
            note: note.into(),
            warning: false,
        }
    }

    pub fn warning(reason: &'static str, note: impl Into<String>) -> Self {
        Note {
            reason,
            note: note.into(),
            warning: true,
        }
    }
}
