//! Leader election against the in-memory API server, in virtual time: who leads, when a cut-off
//! leader stops, when a standby takes over, and that the two never overlap.

mod support;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eac_controller::http::Readiness;
use eac_controller::leader::{Elector, LeaseConfig};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use support::FakeApi;
use tokio::sync::watch;
use tokio::time::Instant;

const LEASE_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/eac/leases/eac-controller";
const DURATION: Duration = Duration::from_secs(15);
const DEADLINE: Duration = Duration::from_secs(10);

fn config(identity: &str) -> LeaseConfig {
    LeaseConfig {
        namespace: "eac".into(),
        name: "eac-controller".into(),
        identity: identity.into(),
        lease_duration: DURATION,
        renew_deadline: DEADLINE,
        retry_period: LeaseConfig::retry_period_for(DEADLINE),
    }
}

/// One candidate: its leadership flag, its switch to the API server, a log of its flips.
struct Candidate {
    leading: watch::Receiver<bool>,
    cut: Arc<std::sync::atomic::AtomicBool>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    flips: Arc<Mutex<Vec<(Instant, bool)>>>,
}

impl Candidate {
    fn start(api: &FakeApi, identity: &str) -> Candidate {
        let (client, cut) = api.client_with_switch();
        let (leading_tx, leading) = watch::channel(false);
        let (stop, stop_rx) = watch::channel(false);
        let elector = Elector::new(Api::<Lease>::namespaced(client, "eac"), config(identity));
        let task = tokio::spawn(elector.run(leading_tx, Readiness::default(), stop_rx));
        let flips = Arc::new(Mutex::new(Vec::new()));
        let (log, mut rx) = (flips.clone(), leading.clone());
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let now = *rx.borrow_and_update();
                log.lock().unwrap().push((Instant::now(), now));
            }
        });
        Candidate {
            leading,
            cut,
            stop,
            task,
            flips,
        }
    }

    fn leads(&self) -> bool {
        *self.leading.borrow()
    }

    async fn until(&mut self, leading: bool, limit: Duration) -> Instant {
        tokio::time::timeout(limit, self.leading.wait_for(|l| *l == leading))
            .await
            .unwrap_or_else(|_| panic!("did not become leading={leading} within {limit:?}"))
            .unwrap();
        Instant::now()
    }

    async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.task.await.unwrap();
    }
}

fn holder(api: &FakeApi) -> Option<String> {
    api.object(LEASE_PATH)
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
}

#[tokio::test(start_paused = true)]
async fn a_single_candidate_takes_the_lease_and_keeps_renewing_it() {
    let api = FakeApi::default();
    let mut a = Candidate::start(&api, "pod-a");
    a.until(true, Duration::from_secs(5)).await;
    assert_eq!(holder(&api).as_deref(), Some("pod-a"));
    let renewed = api.object(LEASE_PATH).unwrap()["spec"]["renewTime"].clone();

    tokio::time::sleep(Duration::from_secs(60)).await;

    assert!(a.leads(), "renewals keep it leading");
    assert_ne!(
        api.object(LEASE_PATH).unwrap()["spec"]["renewTime"],
        renewed
    );
    a.shutdown().await;
    assert_eq!(holder(&api), None, "released on shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_leader_cut_off_stops_within_the_renew_deadline_before_the_standby_takes_over() {
    let api = FakeApi::default();
    let mut a = Candidate::start(&api, "pod-a");
    a.until(true, Duration::from_secs(5)).await;
    let mut b = Candidate::start(&api, "pod-b");
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(a.leads() && !b.leads(), "one leader while both are healthy");

    // pod-a's connection to the API server is cut: its renewals hang.
    let cut_at = Instant::now();
    a.cut.store(true, Ordering::SeqCst);
    let a_stopped = a.until(false, Duration::from_secs(30)).await;
    let b_started = b.until(true, Duration::from_secs(60)).await;

    let stopped_after = a_stopped - cut_at;
    assert!(
        stopped_after <= DEADLINE,
        "the cut-off leader stopped {stopped_after:?} after the cut (renew deadline {DEADLINE:?})"
    );
    assert!(
        a_stopped < b_started,
        "no overlap: pod-a stopped at {:?}, pod-b started at {:?}",
        a_stopped - cut_at,
        b_started - cut_at
    );
    assert!(
        b_started - cut_at >= DURATION - Duration::from_secs(3),
        "the standby waited for the lease to expire: {:?}",
        b_started - cut_at
    );
    assert_eq!(holder(&api).as_deref(), Some("pod-b"));

    // Back on the network, pod-a sees pod-b's lease and stays a standby.
    a.cut.store(false, Ordering::SeqCst);
    api.heal();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!a.leads() && b.leads());
    let flips = a.flips.lock().unwrap().clone();
    assert_eq!(
        flips.iter().map(|(_, l)| *l).collect::<Vec<_>>(),
        [true, false],
        "pod-a leads again only after re-acquiring the lease"
    );

    // pod-b shuts down and releases: pod-a re-acquires without waiting for expiry.
    let released_at = Instant::now();
    b.shutdown().await;
    let again = a.until(true, Duration::from_secs(10)).await;
    assert!(again - released_at < DURATION, "{:?}", again - released_at);
    a.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_leader_refused_by_the_api_server_stops_within_the_renew_deadline() {
    let api = FakeApi::default();
    let mut a = Candidate::start(&api, "pod-a");
    let started = a.until(true, Duration::from_secs(5)).await;
    // RBAC on the Lease is withdrawn: every renewal answers 403.
    api.deny(None, "/leases/");
    let stopped = a.until(false, Duration::from_secs(30)).await;
    assert!(
        stopped - started <= DEADLINE + Duration::from_secs(3),
        "{:?}",
        stopped - started
    );
    assert!(api.answered(403) > 0);
    a.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn two_candidates_starting_together_elect_exactly_one() {
    let api = FakeApi::default();
    let a = Candidate::start(&api, "pod-a");
    let b = Candidate::start(&api, "pod-b");
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert!(a.leads() ^ b.leads(), "exactly one leads");
    let holder = holder(&api).unwrap();
    assert_eq!(holder == "pod-a", a.leads());
    for c in [&a, &b] {
        let flips = c.flips.lock().unwrap();
        assert!(flips.len() <= 1, "no flapping: {flips:?}");
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_lease_taken_by_another_holder_ends_leadership_at_the_next_renewal() {
    let api = FakeApi::default();
    let mut a = Candidate::start(&api, "pod-a");
    a.until(true, Duration::from_secs(5)).await;
    // Someone else takes the Lease behind pod-a's back (a newer resourceVersion).
    let mut lease = api.object(LEASE_PATH).unwrap();
    lease["spec"]["holderIdentity"] = "intruder".into();
    lease["spec"]["renewTime"] = "2030-01-01T00:00:00.000000Z".into();
    api.put_object(LEASE_PATH, lease);

    a.until(false, Duration::from_secs(5)).await;
    assert_eq!(holder(&api).as_deref(), Some("intruder"));
    a.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn standbys_racing_for_an_expired_lease_elect_one_and_the_loser_gets_409() {
    let api = FakeApi::default();
    let mut a = Candidate::start(&api, "pod-a");
    a.until(true, Duration::from_secs(5)).await;
    let b = Candidate::start(&api, "pod-b");
    let c = Candidate::start(&api, "pod-c");
    tokio::time::sleep(Duration::from_secs(5)).await;

    a.cut.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(60)).await;

    assert!(!a.leads());
    assert!(b.leads() ^ c.leads(), "exactly one standby took over");
    assert!(
        api.answered(409) >= 1,
        "both read the same expired record and wrote it back: one write was refused"
    );
    for standby in [&b, &c] {
        let flips = standby.flips.lock().unwrap();
        assert!(flips.len() <= 1, "no flapping: {flips:?}");
    }
    a.cut.store(false, Ordering::SeqCst);
    api.heal();
    b.shutdown().await;
    c.shutdown().await;
    a.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_leader_an_outage_stopped_leads_again_within_half_a_second_of_the_api_servers_return() {
    let api = FakeApi::default();
    let mut a = Candidate::start(&api, "pod-a");
    a.until(true, Duration::from_secs(5)).await;
    let b = Candidate::start(&api, "pod-b");
    tokio::time::sleep(Duration::from_secs(30)).await;

    // The API server stops for 12 to 13.5 s (every call refused, 503, for both candidates): the
    // four lengths end at four points of the 2 s between two tries at the retry period.
    let mut back_in = Vec::new();
    for extra in [0, 500, 1000, 1500] {
        let down_at = Instant::now();
        api.down();
        let stopped = a.until(false, Duration::from_secs(30)).await;
        assert!(
            stopped - down_at <= DEADLINE,
            "the leader stopped {:?} into the outage (renew deadline {DEADLINE:?})",
            stopped - down_at
        );
        tokio::time::sleep_until(down_at + Duration::from_millis(12_000 + extra)).await;
        api.up();
        let back = Instant::now();
        back_in.push(a.until(true, Duration::from_secs(5)).await - back);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(a.leads() && !b.leads(), "the standby never took over");
    }
    assert!(
        back_in.iter().all(|t| *t <= Duration::from_millis(500)),
        "pod-a took its Lease back {back_in:?} after the API server's returns (its tries after a \
         failure are {:?} apart)",
        config("pod-a").retry_after_failure()
    );
    assert_eq!(holder(&api).as_deref(), Some("pod-a"));
    assert!(b.flips.lock().unwrap().is_empty(), "pod-b never led");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_refused_lease_is_tried_at_the_retry_period_not_sooner() {
    let api = FakeApi::default();
    let mut a = Candidate::start(&api, "pod-a");
    a.until(true, Duration::from_secs(5)).await;
    api.deny(None, "/leases/");
    let refused = api.answered(403);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let tries = api.answered(403) - refused;
    // One Get a try, every retry period (2 s): about 10 in 20 s. Tries after an unanswered call
    // come every 500 ms, which would make about 40.
    assert!(
        (8..=12).contains(&tries),
        "{tries} refused Lease calls in 20 s"
    );
    api.allow_all();
    a.shutdown().await;
}
