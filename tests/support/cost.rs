//! What a real API server charges in CPU for the work a client gives it, so that a benchmark
//! against the fake sees the cost a real one (with etcd, on the same cores) puts on every
//! request and every watch event. The model and its calibration are in docs/benchmark.md.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// CPU charged by the fake API server, spent on its own threads (and so taken from whatever
/// else shares the cores, the controller included).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ApiCost {
    /// Every request: TLS, authentication, authorization, routing, the response.
    pub request: Duration,
    /// Every write on top of that: admission, validation, the etcd transaction, the watch cache.
    pub write: Duration,
    /// Every KiB of a request's body and of a single object answered (decoding, admission,
    /// validation, managed fields, encoding).
    pub per_kib: Duration,
    /// Every KiB of the objects a list or a watch's initial events carry, from the watch cache,
    /// where they are held decoded: encoding them only.
    pub list_per_kib: Duration,
    /// Every watch event delivered to a watcher: filtering and framing (the object was encoded
    /// once, with the write).
    pub event: Duration,
    /// Every KiB of a watch event delivered (the write to the watcher's stream).
    pub event_per_kib: Duration,
}

impl ApiCost {
    /// Calibrated on the real API server's figures in issue 15 (kube-apiserver v1.36 and etcd
    /// on 2 cores). The writes on its floor: 29.7 s for 5,000 resources, about 6 ms of wall time
    /// (12 ms of the two cores) per resource for a create, a finalizer patch, a status apply and
    /// an Event, each write seen by two watches. The reads on its start: 10,000 settled
    /// resources listed, decoded by the controller and ready in 2.2 s, which bounds a list of
    /// them (3.7 KiB each, as kubectl and the controller leave them) to about 1.5 s. See
    /// docs/benchmark.md.
    pub const KUBE_APISERVER: ApiCost = ApiCost {
        request: Duration::from_micros(600),
        write: Duration::from_micros(1_600),
        per_kib: Duration::from_micros(120),
        list_per_kib: Duration::from_micros(40),
        event: Duration::from_micros(50),
        event_per_kib: Duration::from_micros(20),
    };

    /// What one request costs: `write` if it changes something, `bytes` its body and answer.
    pub fn of_request(&self, write: bool, bytes: usize) -> Duration {
        let write = if write { self.write } else { Duration::ZERO };
        self.request + write + self.per_kib.mul_f64(kib(bytes))
    }

    /// What a list answering `bytes` of objects costs (from the watch cache).
    pub fn of_list(&self, bytes: usize) -> Duration {
        self.request + self.of_encoding(bytes)
    }

    /// What encoding `bytes` of objects held decoded costs (a list's, a watch's initial events).
    pub fn of_encoding(&self, bytes: usize) -> Duration {
        self.list_per_kib.mul_f64(kib(bytes))
    }

    /// What reading `bytes` of objects from etcd and decoding them costs, on top of answering
    /// them: as much again as encoding them (an estimate; a list from the watch cache has them
    /// decoded already).
    pub fn of_etcd_read(&self, bytes: usize) -> Duration {
        self.of_encoding(bytes)
    }

    /// What delivering one watch event of `bytes` costs.
    pub fn of_event(&self, bytes: usize) -> Duration {
        self.event + self.event_per_kib.mul_f64(kib(bytes))
    }
}

fn kib(bytes: usize) -> f64 {
    bytes as f64 / 1024.0
}

/// Spends `cost` of this thread's CPU time (not wall time: a thread the cores are busy
/// elsewhere for keeps spending until it has had its share, as an API server's would).
pub fn burn(cost: Duration) {
    if cost.is_zero() {
        return;
    }
    let spending = Spending::start();
    while spending.spent() < cost {
        std::hint::spin_loop();
    }
}

/// This thread's CPU time from its start (wall time where the thread's CPU clock is not
/// available). What the fake spends itself building an answer (finding, copying and encoding
/// objects, as a real API server does) is taken off the price it charges for it: else an answer
/// would cost the cores the price and the fake's own work besides (for a page of 250 resources,
/// 36 to 46 ms of the fake's own work on top of 37 ms charged).
pub struct Spending {
    start: Duration,
    clock: fn() -> Option<Duration>,
}

impl Spending {
    pub fn start() -> Self {
        let clock: fn() -> Option<Duration> = if thread_cpu().is_some() {
            thread_cpu
        } else {
            wall
        };
        Spending {
            start: clock().unwrap_or_default(),
            clock,
        }
    }

    pub fn spent(&self) -> Duration {
        (self.clock)()
            .unwrap_or_default()
            .saturating_sub(self.start)
    }
}

fn wall() -> Option<Duration> {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    Some(START.get_or_init(std::time::Instant::now).elapsed())
}

/// Spends `cost` on the blocking pool, so the async side (the fake's other requests and
/// watches, and an in-process controller) is not held up by it, only competed with.
pub async fn charge(cost: Duration) {
    if cost.is_zero() {
        return;
    }
    let _ = tokio::task::spawn_blocking(move || burn(cost)).await;
}

fn thread_cpu() -> Option<Duration> {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the current thread's CPU time into `t`, which it owns.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    (rc == 0).then(|| Duration::new(t.tv_sec as u64, t.tv_nsec as u32))
}

/// What clients made the fake API server do since the cost was set.
#[derive(Debug, Default)]
pub struct Work {
    pub requests: AtomicU64,
    pub writes: AtomicU64,
    /// Bytes of the bodies written (creates, patches, applies, Events).
    pub bytes_written: AtomicU64,
    /// Bytes answered: responses, lists and watch events.
    pub bytes_served: AtomicU64,
    pub events: AtomicU64,
}

/// A copy of [`Work`] at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct WorkDone {
    pub requests: u64,
    pub writes: u64,
    pub bytes_written: u64,
    pub bytes_served: u64,
    pub events: u64,
}

impl Work {
    pub fn request(&self, write: bool, body: usize, answer: usize) {
        self.requests.fetch_add(1, Relaxed);
        if write {
            self.writes.fetch_add(1, Relaxed);
            self.bytes_written.fetch_add(body as u64, Relaxed);
        }
        self.bytes_served.fetch_add(answer as u64, Relaxed);
    }

    /// A watch event sent to a watcher (counted when sent; charged when delivered).
    pub fn event(&self, bytes: usize) {
        self.events.fetch_add(1, Relaxed);
        self.bytes_served.fetch_add(bytes as u64, Relaxed);
    }

    pub fn done(&self) -> WorkDone {
        WorkDone {
            requests: self.requests.load(Relaxed),
            writes: self.writes.load(Relaxed),
            bytes_written: self.bytes_written.load(Relaxed),
            bytes_served: self.bytes_served.load(Relaxed),
            events: self.events.load(Relaxed),
        }
    }
}

impl std::ops::Sub for WorkDone {
    type Output = WorkDone;
    fn sub(self, before: WorkDone) -> WorkDone {
        WorkDone {
            requests: self.requests - before.requests,
            writes: self.writes - before.writes,
            bytes_written: self.bytes_written - before.bytes_written,
            bytes_served: self.bytes_served - before.bytes_served,
            events: self.events - before.events,
        }
    }
}
