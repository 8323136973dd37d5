//! Ids kept by the thousand, kept small. Kubernetes uids and Proton's connection ids are UUIDs:
//! held as a `String`, each costs 24 bytes and a heap block of 48, and the controller keeps one
//! per resource in several tables (the triggers seen, the PENDING polls and lists). A
//! [`CompactId`] keeps a UUID as its 16 bytes, in 24 bytes and no heap block; any other id is
//! kept as it is.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CompactId {
    Uuid([u8; 16]),
    Other(Box<str>),
}

impl CompactId {
    pub fn of(id: &str) -> CompactId {
        // Only a UUID's canonical (lowercase, hyphenated) form becomes bytes, so two different
        // ids never share a key, and the id reads back exactly as it was given.
        match uuid::Uuid::try_parse(id) {
            Ok(u)
                if u.hyphenated()
                    .encode_lower(&mut uuid::Uuid::encode_buffer())
                    == id =>
            {
                CompactId::Uuid(u.into_bytes())
            }
            _ => CompactId::Other(id.into()),
        }
    }
}

impl fmt::Display for CompactId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompactId::Uuid(bytes) => {
                let u = uuid::Uuid::from_bytes(*bytes);
                f.write_str(
                    u.hyphenated()
                        .encode_lower(&mut uuid::Uuid::encode_buffer()),
                )
            }
            CompactId::Other(id) => f.write_str(id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uuid_is_kept_as_its_bytes_and_no_two_ids_share_a_key() {
        let canonical = "0b9c6f1e-7d2a-4c55-9f0e-1a2b3c4d5e6f";
        assert!(matches!(CompactId::of(canonical), CompactId::Uuid(_)));
        assert_eq!(CompactId::of(canonical).to_string(), canonical);
        // Other spellings of the same UUID are other ids, and stay apart.
        let others = [
            "0B9C6F1E-7D2A-4C55-9F0E-1A2B3C4D5E6F",
            "0b9c6f1e7d2a4c559f0e1a2b3c4d5e6f",
            "{0b9c6f1e-7d2a-4c55-9f0e-1a2b3c4d5e6f}",
            "conn-1",
            "",
        ];
        for id in others {
            assert_eq!(CompactId::of(id), CompactId::Other(id.into()));
            assert_ne!(CompactId::of(id), CompactId::of(canonical));
            assert_eq!(CompactId::of(id).to_string(), id, "read back as given");
        }
        assert_eq!(CompactId::of(canonical), CompactId::of(canonical));
        assert!(std::mem::size_of::<CompactId>() <= 24);
    }
}
