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
    /// How late its answers come.
    delay: support::AnswerDelay,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    flips: Arc<Mutex<Vec<(Instant, bool)>>>,
}

impl Candidate {
    fn start(api: &FakeApi, identity: &str) -> Candidate {
        Candidate::start_with(api, config(identity), Readiness::default())
    }

    fn start_with(api: &FakeApi, config: LeaseConfig, readiness: Readiness) -> Candidate {
        let (client, cut, delay) = api.client_with_controls();
        let (leading_tx, leading) = watch::channel(false);
        let (stop, stop_rx) = watch::channel(false);
        let elector = Elector::new(Api::<Lease>::namespaced(client, "eac"), config);
        let task = tokio::spawn(elector.run(leading_tx, readiness, stop_rx));
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
            delay,
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

/// pod-a leading, and pod-b a standby that has watched its Lease for `settle`.
async fn leader_and_standby(api: &FakeApi, settle: Duration) -> (Candidate, Candidate) {
    let mut a = Candidate::start(api, "pod-a");
    a.until(true, Duration::from_secs(5)).await;
    let b = Candidate::start(api, "pod-b");
    tokio::time::sleep(settle).await;
    (a, b)
}

/// Connects pod-a (cut off) to the API server again, and stops both.
async fn reconnect_and_stop(api: &FakeApi, a: Candidate, b: Candidate) {
    a.cut.store(false, Ordering::SeqCst);
    api.heal();
    b.shutdown().await;
    a.shutdown().await;
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
    let (mut a, mut b) = leader_and_standby(&api, Duration::from_secs(30)).await;
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
    let (mut a, b) = leader_and_standby(&api, Duration::from_secs(30)).await;

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

/// Waits for `b` to lead, and checks that it led only after `a` stopped; returns when `b` began.
async fn takes_over_after(a: &Candidate, b: &mut Candidate) -> Instant {
    b.until(true, Duration::from_secs(30)).await;
    let stopped = a
        .flips
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|(_, leads)| !leads)
        .map(|(at, _)| *at)
        .expect("the first leader stopped");
    let started = b
        .flips
        .lock()
        .unwrap()
        .iter()
        .find(|(_, leads)| *leads)
        .map(|(at, _)| *at)
        .expect("the standby led");
    assert!(
        stopped <= started,
        "pod-b led {:?} before pod-a stopped",
        stopped - started
    );
    started
}

/// A renewal the API server stores at once but answers 7 s late (a congested network), then
/// the leader is cut off: the standby saw the stored record when it was stored, so the
/// leader's renew deadline must count from when it sent that renewal, not from the answer,
/// or it would still lead when the standby takes over.
#[tokio::test(start_paused = true)]
async fn the_renew_deadline_counts_from_the_renewals_send_not_from_its_late_answer() {
    let api = FakeApi::default();
    let (mut a, mut b) = leader_and_standby(&api, Duration::from_secs(5)).await;

    let renewed = api.object(LEASE_PATH).unwrap()["spec"]["renewTime"].clone();
    a.delay.set(http::Method::PUT, Duration::from_secs(7));
    api.wait_until(
        "pod-a's next renewal to be stored (its answer is held 7 s)",
        Duration::from_secs(5),
        |api| api.object(LEASE_PATH).unwrap()["spec"]["renewTime"] != renewed,
    )
    .await;
    let stored = Instant::now();
    a.cut.store(true, Ordering::SeqCst);

    let stopped = a.until(false, Duration::from_secs(30)).await;
    assert!(
        stopped - stored <= DEADLINE,
        "pod-a stopped {:?} after its last renewal was stored (renew deadline {DEADLINE:?})",
        stopped - stored
    );
    takes_over_after(&a, &mut b).await;
    reconnect_and_stop(&api, a, b).await;
}

/// The Lease changes between the leader's read and its write (a label applied by hand or by a
/// GitOps tool): the write is refused with 409, and the leader reads it again and renews,
/// without ever stopping (which would cost a full relist).
#[tokio::test(start_paused = true)]
async fn a_conflict_on_the_leaders_own_renewal_does_not_stop_it() {
    let api = FakeApi::default();
    let (a, b) = leader_and_standby(&api, Duration::from_secs(5)).await;

    // pod-a's next read is answered 1 s late; the Lease is labelled meanwhile.
    let reads = |api: &FakeApi| {
        api.requests()
            .iter()
            .filter(|r| r.method == http::Method::GET && r.path == LEASE_PATH)
            .count()
    };
    let before = reads(&api);
    a.delay.set(http::Method::GET, Duration::from_secs(1));
    api.wait_until(
        "pod-a's next read of the Lease (its answer is held 1 s)",
        Duration::from_secs(5),
        |api| reads(api) > before,
    )
    .await;
    a.delay.clear();
    let mut lease = api.object(LEASE_PATH).unwrap();
    lease["metadata"]["labels"] = serde_json::json!({"team": "platform"});
    let conflicts = api.answered(409);
    api.put_object(LEASE_PATH, lease);
    api.wait_until(
        "pod-a's renewal to be refused with 409",
        Duration::from_secs(5),
        |api| api.answered(409) > conflicts,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(20)).await;

    let flips = a.flips.lock().unwrap().clone();
    assert_eq!(flips.len(), 1, "pod-a led throughout: {flips:?}");
    assert!(a.leads() && !b.leads());
    assert_eq!(
        api.object(LEASE_PATH).unwrap()["metadata"]["labels"]["team"],
        "platform",
        "the renewal after the conflict keeps the label"
    );
    b.shutdown().await;
    a.shutdown().await;
}

/// The Lease is deleted by hand while pod-a leads and pod-b waits. If pod-a still answers, it
/// re-creates it and goes on leading; if it is cut off (it may still be leading), pod-b waits
/// out the holder's duration as if the Lease were there, and leads only after pod-a stopped.
#[tokio::test(start_paused = true)]
async fn a_deleted_lease_is_not_taken_from_a_holder_that_may_still_lead() {
    let api = FakeApi::default();
    let (a, mut b) = leader_and_standby(&api, Duration::from_secs(5)).await;

    api.delete_at(LEASE_PATH);
    assert!(api.object(LEASE_PATH).is_none());
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(a.leads() && !b.leads(), "pod-a re-created it and leads");
    assert_eq!(holder(&api).as_deref(), Some("pod-a"));
    assert!(b.flips.lock().unwrap().is_empty(), "pod-b never led");

    a.cut.store(true, Ordering::SeqCst);
    api.delete_at(LEASE_PATH);
    let deleted = Instant::now();
    let b_started = takes_over_after(&a, &mut b).await;
    assert!(
        b_started - deleted >= DURATION - config("pod-b").retry_period,
        "pod-b took the deleted Lease {:?} after the deletion, before pod-a's duration",
        b_started - deleted
    );
    assert_eq!(holder(&api).as_deref(), Some("pod-b"));
    reconnect_and_stop(&api, a, b).await;
}

/// The Lease records whole seconds: 2.5 s is recorded as 3, never 2, so a standby waits at
/// least as long as the leader's renew deadline assumes.
#[tokio::test(start_paused = true)]
async fn a_lease_duration_with_a_fraction_of_a_second_is_rounded_up() {
    let api = FakeApi::default();
    let mut config = config("pod-a");
    config.lease_duration = Duration::from_millis(2_500);
    config.renew_deadline = Duration::from_millis(2_400);
    config.retry_period = LeaseConfig::retry_period_for(config.renew_deadline);
    let mut a = Candidate::start_with(&api, config, Readiness::default());
    a.until(true, Duration::from_secs(5)).await;
    assert_eq!(
        api.object(LEASE_PATH).unwrap()["spec"]["leaseDurationSeconds"],
        3
    );
    a.shutdown().await;
}

/// A leader's readiness is its watch's: while its watch fails (its list refused, a CRD
/// removed), its Lease renewals, which still succeed, must not keep it ready. A standby's is
/// its Lease calls'.
#[tokio::test(start_paused = true)]
async fn a_leaders_lease_renewals_do_not_keep_it_ready_while_its_watch_fails() {
    let api = FakeApi::default();
    let readiness = Readiness::new(Duration::from_secs(5));
    let mut a = Candidate::start_with(&api, config("pod-a"), readiness.clone());
    a.until(true, Duration::from_secs(5)).await;
    // What the runner and the watch do when it leads.
    readiness.leading();
    readiness.synced();
    assert!(readiness.get());

    readiness.failed();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(a.leads(), "it renews its Lease meanwhile");
    let why = readiness
        .check()
        .expect_err("not ready while its watch fails");
    assert!(why.contains("has failed for"), "{why}");

    // A standby (say after it lost the Lease) is ready while its Lease calls are answered.
    readiness.standby();
    readiness.failed();
    let standby = Candidate::start_with(&api, config("pod-b"), readiness.clone());
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(!standby.leads());
    assert!(readiness.get(), "{:?}", readiness.check());
    standby.shutdown().await;
    a.shutdown().await;
}

/// A renewal held on a connection that is never answered (the API server's peer gone without a
/// reset) is given up after half the renew deadline and tried again (on a new connection): the
/// leader keeps its term. Before, the one try waited out the whole renew deadline, and the
/// leader stopped, though the API server answered every other call.
#[tokio::test(start_paused = true)]
async fn one_renewal_never_answered_does_not_end_the_term() {
    let api = FakeApi::default();
    let (a, b) = leader_and_standby(&api, Duration::from_secs(5)).await;
    let before = a.flips.lock().unwrap().len();
    // The next renewal is held, and only it: the ones after it are answered.
    a.cut.store(true, Ordering::SeqCst);
    support::poll_until(
        "a renewal held (1 once the API server holds one)",
        Duration::from_secs(5),
        || f64::from(u8::from(api.held_requests() > 0)),
        1.0,
    )
    .await;
    a.cut.store(false, Ordering::SeqCst);

    tokio::time::sleep(DURATION * 2).await;
    assert!(a.leads(), "still leading");
    let flips = a.flips.lock().unwrap().clone();
    assert_eq!(flips.len(), before, "no flip: {flips:?}");
    assert!(!b.leads());
    assert_eq!(holder(&api).as_deref(), Some("pod-a"));
    api.heal();
    b.shutdown().await;
    a.shutdown().await;
}
