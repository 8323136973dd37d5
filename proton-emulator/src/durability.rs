//! Getting the state onto disk before an answer reveals it.
//!
//! Every change bumps the state's version (under the state's lock) and tells the writer; an
//! answer goes out only once the version it saw is on disk. The writer runs on its own task and
//! writes whatever the state is when it gets to it, so changes that arrive while a write is under
//! way share the next write (group commit): requests never wait for each other's fsync one by
//! one, no lock is held during I/O, and yet no answer that says "created" (or shows something
//! created) can be lost by a restart. A debounce timer would only add latency to every change,
//! so there is none.
//!
//! A failed write answers InternalServerException to the requests waiting for it (the change is
//! in memory but not durable: the client may retry, idempotently) and is retried with backoff.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use super::state_file::{self, StateDocument};

const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// What the writer achieved so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Written {
    /// Every version up to this one is on disk.
    durable: u64,
    /// The last attempt, when it failed: the version it tried to write and why it could not.
    failed: Option<(u64, Arc<str>)>,
}

/// The versions of the state: the latest one, and the latest one on disk.
#[derive(Debug)]
pub struct Durability {
    path: std::path::PathBuf,
    changed: watch::Sender<u64>,
    written: watch::Sender<Written>,
}

impl Durability {
    /// `version`: the version of the state as loaded (already on disk).
    pub fn new(path: std::path::PathBuf, version: u64) -> Durability {
        Durability {
            path,
            changed: watch::Sender::new(version),
            written: watch::Sender::new(Written {
                durable: version,
                failed: None,
            }),
        }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Tells the writer that the state is now at `version`. Called under the state's lock, so
    /// versions arrive in order.
    pub fn announce(&self, version: u64) {
        self.changed.send_if_modified(|latest| {
            let newer = version > *latest;
            if newer {
                *latest = version;
            }
            newer
        });
    }

    /// Waits until `version` is on disk; the error says why it could not be written.
    pub async fn wait(&self, version: u64) -> Result<(), String> {
        let mut written = self.written.subscribe();
        loop {
            {
                let now = written.borrow_and_update();
                if now.durable >= version {
                    return Ok(());
                }
                if let Some((attempted, why)) = &now.failed
                    && *attempted >= version
                {
                    return Err(why.to_string());
                }
            }
            // The sender lives as long as `self`, so this fails only if the state is gone.
            if written.changed().await.is_err() {
                return Err("the state writer has stopped".to_string());
            }
        }
    }

    /// Writes the state whenever it changed, until `stop` fires; then writes what is left.
    /// `snapshot` returns the state and its version, taken under the state's lock.
    pub async fn run_writer(
        self: Arc<Self>,
        snapshot: impl Fn() -> (u64, StateDocument) + Send + Sync + 'static,
        mut stop: oneshot::Receiver<()>,
    ) {
        let snapshot = Arc::new(snapshot);
        let mut changed = self.changed.subscribe();
        let mut retry = RETRY_FIRST;
        loop {
            let latest = *changed.borrow_and_update();
            if latest > self.written.borrow().durable {
                if self.write_once(&snapshot).await {
                    retry = RETRY_FIRST;
                } else {
                    // Try again later, or at once for a new change (its request is waiting).
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => {}
                        result = changed.changed() => {
                            if result.is_err() {
                                break;
                            }
                        }
                        _ = &mut stop => break,
                    }
                    retry = (retry * 2).min(RETRY_MAX);
                }
                continue;
            }
            tokio::select! {
                result = changed.changed() => {
                    if result.is_err() {
                        break;
                    }
                }
                _ = &mut stop => break,
            }
        }
        // Whatever changed after the last write (e.g. through the in-process test helpers,
        // which do not wait) goes to disk before the emulator is gone.
        if *self.changed.borrow() > self.written.borrow().durable {
            self.write_once(&snapshot).await;
        }
    }

    /// One write of the current state; true when it reached the disk.
    async fn write_once(
        &self,
        snapshot: &Arc<impl Fn() -> (u64, StateDocument) + Send + Sync + 'static>,
    ) -> bool {
        let snapshot = Arc::clone(snapshot);
        let path = self.path.clone();
        let result = tokio::task::spawn_blocking(move || {
            let (version, document) = snapshot();
            (version, state_file::write(&path, &document))
        })
        .await;
        match result {
            Ok((version, Ok(()))) => {
                self.written.send_modify(|w| {
                    w.durable = w.durable.max(version);
                    w.failed = None;
                });
                true
            }
            Ok((version, Err(err))) => {
                tracing::warn!(%err, "cannot write the state file; will retry");
                self.fail(version, err.to_string());
                false
            }
            Err(err) => {
                tracing::warn!(%err, "the state writer's task failed; will retry");
                // Which version it held is unknown: every announced one may have been in it.
                self.fail(
                    *self.changed.borrow(),
                    format!("the state writer's task failed: {err}"),
                );
                false
            }
        }
    }

    /// The waiters of every version up to `attempted` (all in the failed write) are told why.
    fn fail(&self, attempted: u64, why: String) {
        self.written
            .send_modify(|w| w.failed = Some((attempted, why.into())));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn document(clock: i64) -> StateDocument {
        StateDocument {
            version: state_file::FORMAT_VERSION,
            clock,
            clock_offset_ms: 0,
            connections: vec![],
            sessions: vec![],
        }
    }

    /// A state of one number (written as the clock), with its version.
    fn state() -> Arc<Mutex<(u64, i64)>> {
        Arc::new(Mutex::new((0, 0)))
    }

    fn change(state: &Mutex<(u64, i64)>, durability: &Durability, clock: i64) -> u64 {
        let mut s = state.lock().unwrap();
        s.0 += 1;
        s.1 = clock;
        durability.announce(s.0);
        s.0
    }

    #[tokio::test]
    async fn an_answer_waits_for_its_version_to_be_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let durability = Arc::new(Durability::new(path.clone(), 0));
        let s = state();
        let (stop, stopped) = oneshot::channel();
        let reader = Arc::clone(&s);
        let writer = tokio::spawn(Arc::clone(&durability).run_writer(
            move || {
                let s = reader.lock().unwrap();
                (s.0, document(s.1))
            },
            stopped,
        ));

        assert_eq!(durability.wait(0).await, Ok(()), "nothing to wait for");
        let version = change(&s, &durability, 11);
        durability.wait(version).await.unwrap();
        assert_eq!(state_file::load(&path).unwrap().unwrap().clock, 11);

        // Changes made in a burst are all on disk once the last one is.
        let mut last = 0;
        for clock in 12..20 {
            last = change(&s, &durability, clock);
        }
        durability.wait(last).await.unwrap();
        assert_eq!(state_file::load(&path).unwrap().unwrap().clock, 19);

        // A change nobody waits for is written when the writer stops.
        change(&s, &durability, 99);
        stop.send(()).unwrap();
        writer.await.unwrap();
        assert_eq!(state_file::load(&path).unwrap().unwrap().clock, 99);
    }

    #[tokio::test]
    async fn a_failed_write_is_reported_to_its_waiters_and_retried() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("later");
        let path = sub.join("state.json");
        let durability = Arc::new(Durability::new(path.clone(), 0));
        let s = state();
        let (_stop, stopped) = oneshot::channel();
        let reader = Arc::clone(&s);
        tokio::spawn(Arc::clone(&durability).run_writer(
            move || {
                let s = reader.lock().unwrap();
                (s.0, document(s.1))
            },
            stopped,
        ));
        let version = change(&s, &durability, 5);
        let err = durability.wait(version).await.unwrap_err();
        assert!(err.contains("later"), "{err}");

        // Once the directory exists, the retry (or the next change) gets it to disk.
        std::fs::create_dir(&sub).unwrap();
        let version = change(&s, &durability, 6);
        durability.wait(version).await.unwrap();
        assert_eq!(state_file::load(&path).unwrap().unwrap().clock, 6);
    }
}
