//! A TCP gate between a client and a server on 127.0.0.1. Open, it passes bytes both ways; shut,
//! it resets every connection, the open ones and each new one, as when the server's pod is gone
//! from behind its Service; holding, it takes every connection, the open ones and each new one,
//! away from the server and never answers on it (a node cut off by a network that drops its
//! packets), until told to reset those it holds.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Open,
    Shut,
    Hold,
}

/// The connections the gate holds.
#[derive(Default)]
struct Held {
    /// What the client sent on each, as text, in the order they were taken.
    sent: Mutex<Vec<String>>,
    /// When each was taken, and when it ended (the client closed it, or it was reset), in the
    /// same order.
    spans: Mutex<Vec<(Instant, Option<Instant>)>>,
    /// Moved on to reset every connection held so far.
    reset: watch::Sender<u64>,
}

pub struct Gate {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    held: Arc<Held>,
    task: tokio::task::JoinHandle<()>,
}

impl Gate {
    /// An open gate to `target`, on a free port.
    pub async fn to(target: SocketAddr) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = watch::channel(Mode::Open).0;
        let mode_seen = mode.subscribe();
        let held = Arc::new(Held::default());
        let task = tokio::spawn({
            let held = held.clone();
            async move {
                loop {
                    let Ok((inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    let mut mode_seen = mode_seen.clone();
                    let now = *mode_seen.borrow_and_update();
                    match now {
                        Mode::Shut => reset(inbound),
                        Mode::Hold => {
                            // Subscribed here, not in the task: a reset told before the task
                            // runs resets this connection too.
                            let reset_seen = held.reset.subscribe();
                            tokio::spawn(hold(inbound, Vec::new(), held.clone(), reset_seen));
                        }
                        Mode::Open => {
                            tokio::spawn(pass(inbound, target, mode_seen, held.clone()));
                        }
                    }
                }
            }
        });
        Gate {
            addr,
            mode,
            held,
            task,
        }
    }

    /// The URL of the server, through the gate.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Resets every connection from now on, and the open ones (those held too).
    pub fn shut(&self) {
        self.mode.send_replace(Mode::Shut);
        self.reset_held();
    }

    /// Passes new connections to the server again; those held stay held.
    pub fn open(&self) {
        self.mode.send_replace(Mode::Open);
    }

    /// Holds every connection from now on, and the open ones: what the client sends there is
    /// read (see [`Gate::held`]) and never answered.
    pub fn hold(&self) {
        self.mode.send_replace(Mode::Hold);
    }

    /// What the client sent on each connection held, as text.
    pub fn held(&self) -> Vec<String> {
        self.held.sent.lock().unwrap().clone()
    }

    /// The most connections held open at once among those taken after the first `skip`:
    /// the calls waiting for an answer at once, as each held connection carries one. A
    /// connection that ends within 100 ms of another's start is not counted with it: a client
    /// closes a connection it gave up on after the call has returned, and its next call may
    /// reach the gate first.
    pub fn most_held_at_once(&self, skip: usize) -> usize {
        const CLOSING: Duration = Duration::from_millis(100);
        let spans = self.held.spans.lock().unwrap();
        let spans = spans.get(skip..).unwrap_or_default();
        spans
            .iter()
            .map(|(taken, _)| {
                spans
                    .iter()
                    .filter(|(t, ended)| t <= taken && ended.is_none_or(|e| e > *taken + CLOSING))
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    /// Resets every connection held so far: the calls on them fail now.
    pub fn reset_held(&self) {
        self.held.reset.send_modify(|n| *n += 1);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Passes bytes between `inbound` and `target` while the gate is open. What the client sends
/// once the gate has shut or holds is never passed, even if this task has not yet woken to the
/// change: a request on a pooled connection, written just after the test shut the gate, would
/// otherwise reach the server.
async fn pass(
    mut inbound: TcpStream,
    target: SocketAddr,
    mut mode_seen: watch::Receiver<Mode>,
    held: Arc<Held>,
) {
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        reset(inbound);
        return;
    };
    let mode_now = mode_seen.clone();
    let mut from_client = vec![0u8; 16 * 1024];
    let mut from_server = vec![0u8; 16 * 1024];
    let (now, unpassed) = {
        let (mut client_reads, mut client_writes) = inbound.split();
        let (mut server_reads, mut server_writes) = outbound.split();
        loop {
            tokio::select! {
                read = client_reads.read(&mut from_client) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let now = *mode_now.borrow();
                        if now != Mode::Open {
                            break (now, from_client[..n].to_vec());
                        }
                        if server_writes.write_all(&from_client[..n]).await.is_err() {
                            return;
                        }
                    }
                },
                read = server_reads.read(&mut from_server) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if client_writes.write_all(&from_server[..n]).await.is_err() {
                            return;
                        }
                    }
                },
                now = async { mode_seen.wait_for(|mode| *mode != Mode::Open).await.map(|m| *m) } => match now {
                    Ok(now) => break (now, Vec::new()),
                    Err(_) => return,
                },
            }
        }
    };
    drop(outbound);
    match now {
        Mode::Hold => {
            let reset_seen = held.reset.subscribe();
            hold(inbound, unpassed, held, reset_seen).await
        }
        _ => reset(inbound),
    }
}

/// Keeps `stream` open and unanswered, recording what the client sends (from `sent`, what was
/// read of it already), until the held connections are reset (`reset_seen` moves on) or the
/// client closes it.
async fn hold(
    mut stream: TcpStream,
    sent: Vec<u8>,
    held: Arc<Held>,
    mut reset_seen: watch::Receiver<u64>,
) {
    let index = {
        let mut all_sent = held.sent.lock().unwrap();
        held.spans.lock().unwrap().push((Instant::now(), None));
        all_sent.push(String::from_utf8_lossy(&sent).into_owned());
        all_sent.len() - 1
    };
    let ended = |held: &Held| held.spans.lock().unwrap()[index].1 = Some(Instant::now());
    let mut buf = [0u8; 4096];
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return ended(&held),
                Ok(n) => held.sent.lock().unwrap()[index]
                    .push_str(&String::from_utf8_lossy(&buf[..n])),
            },
            _ = reset_seen.changed() => {
                reset(stream);
                return ended(&held);
            }
        }
    }
}

/// Closes `stream` with a reset, not an orderly end.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}
