//! The account mappings as the connection side follows them, shared with the management side of
//! the same process: both resolve a namespace's credentials from the same watches, and neither
//! reconciles before they are read.

use std::sync::Arc;

use tokio::sync::watch;

use super::decide::Accounts;

/// A handle on the [`Accounts`] both sides act with; clones share them.
#[derive(Clone)]
pub struct SharedAccounts(Arc<watch::Sender<Accounts>>);

impl Default for SharedAccounts {
    /// Mappings off: the controller's own credentials for every namespace.
    fn default() -> Self {
        SharedAccounts(Arc::new(watch::Sender::new(Accounts::disabled())))
    }
}

impl SharedAccounts {
    /// The accounts as of now.
    pub fn get(&self) -> Accounts {
        self.0.borrow().clone()
    }

    pub fn set(&self, accounts: Accounts) {
        self.0.send_replace(accounts);
    }

    /// Resolves once the mappings are read, or at once when they are off or read already. A
    /// reconcile before would report `AccountMappingsNotRead` (a status write and a Warning each
    /// time the controller starts or takes over), or act with credentials not yet known.
    pub async fn known(&self) {
        let mut accounts = self.0.subscribe();
        // The sender is held by `self`: the wait cannot fail.
        let _ = accounts.wait_for(|a| !a.is_waiting()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[tokio::test]
    async fn known_waits_for_the_mappings_only_while_they_are_not_read() {
        let shared = SharedAccounts::default();
        assert!(shared.known().now_or_never().is_some(), "mappings off");

        shared.set(Accounts::waiting());
        let mut known = Box::pin(shared.known());
        assert!((&mut known).now_or_never().is_none(), "not read yet");
        let waiting = shared.clone();
        waiting.set(Accounts::disabled().with_unmapped(Default::default()));
        assert!(
            tokio::time::timeout(std::time::Duration::from_secs(5), known)
                .await
                .is_ok(),
            "read: the wait ends"
        );
        assert!(!shared.get().is_waiting());
    }
}
