//! One copy of each text that thousands of entries repeat (a namespace, a region): the tables
//! that keep an entry per resource share it instead of holding a copy each.

use std::collections::HashSet;
use std::sync::Arc;

/// The copies kept, one per text.
#[derive(Debug, Default)]
pub struct Interned(HashSet<Arc<str>>);

impl Interned {
    /// The one copy of `text`, kept from now on if it was not.
    pub fn share(&mut self, text: &str) -> Arc<str> {
        match self.0.get(text) {
            Some(kept) => kept.clone(),
            None => {
                let kept: Arc<str> = text.into();
                self.0.insert(kept.clone());
                kept
            }
        }
    }

    /// Keeps only the texts some entry still holds (`in_use` lists them).
    pub fn retain_used<'a>(&mut self, in_use: impl IntoIterator<Item = &'a str>) {
        let used: HashSet<&str> = in_use.into_iter().collect();
        self.0.retain(|text| used.contains(&**text));
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_text_is_kept_once_until_no_entry_holds_it() {
        let mut kept = Interned::default();
        let a = kept.share("team-a");
        let again = kept.share("team-a");
        assert!(Arc::ptr_eq(&a, &again), "one copy");
        kept.share("team-b");
        assert_eq!(kept.len(), 2);
        kept.retain_used(["team-a"]);
        assert_eq!(kept.len(), 1);
        assert!(Arc::ptr_eq(&kept.share("team-a"), &a));
        kept.clear();
        assert!(kept.is_empty());
    }
}
