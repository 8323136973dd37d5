//! Polls of PENDING connections: answered by one List of them all (see `aws::pending`), with a
//! Get only for what the list does not show as recorded; a list the budget defers part-way goes
//! on from its next page; where Proton does not answer, one call at a time (the Proton port
//! behind a gate that holds every connection). Real reconcile, in-memory API server, Proton
//! emulator over HTTP.

mod support;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use eac_controller::aws::budget::{CallBudget, CallClass};
use eac_controller::aws::credentials::AwsIdentity;
use eac_controller::aws::proton::{
    CreateRequest, ErrorClass, Proton, ProtonError, ProtonSettings, StepCalls, Ticket,
};
use eac_controller::connection::api::ConnectionState;
use support::{Env, patient, spec};

const GET: &str = "GetEnvironmentAccountConnection";
const LIST: &str = "ListEnvironmentAccountConnections";
const CREATE: &str = "CreateEnvironmentAccountConnection";
/// More than two pages of the List (100 a page).
const N: usize = 250;

fn uid(i: usize) -> String {
    format!("5e7d0000-0000-4000-8000-{i:012}")
}

fn names() -> Vec<String> {
    (0..N).map(|i| format!("pending-{i:03}")).collect()
}

/// N resources, each with its PENDING connection recorded.
async fn pending(env: &Env) -> Vec<String> {
    let names = names();
    for (i, n) in names.iter().enumerate() {
        env.api.create(n, &uid(i), spec(n));
        env.reconcile(n).await.expect("created");
    }
    names
}

fn id_of(env: &Env, name: &str) -> String {
    env.api
        .get(name)
        .and_then(|o| o.status)
        .and_then(|s| s.id)
        .expect("an id recorded")
}

/// Reconciles the call budget deferred so far.
fn deferred(env: &Env) -> u64 {
    env.metric("eac_reconcile_total{result=\"deferred\"}") as u64
}

fn state_of(env: &Env, name: &str) -> Option<ConnectionState> {
    env.api
        .get(name)
        .and_then(|o| o.status)
        .and_then(|s| s.status)
}

#[tokio::test]
async fn polls_of_many_pending_connections_are_answered_by_one_list() {
    let env = Env::start_with(patient(), CallBudget::unlimited()).await;
    let names = pending(&env).await;
    env.count_proton_calls_from_now().await;

    for n in &names {
        env.resync(n).await.expect("polled");
    }
    assert_eq!(env.calls(GET), 0, "no Get: the list shows each one PENDING");
    assert_eq!(env.calls(LIST), 3, "one list of {N} PENDING connections");

    // One is accepted and one rejected: the next round's list does not show them, so those
    // two are read, and recorded as they are now.
    let (accepted, rejected) = (&names[7], &names[200]);
    env.proton().accept(&id_of(&env, accepted)).unwrap();
    env.proton().reject(&id_of(&env, rejected)).unwrap();
    spacing_passes().await;
    for n in &names {
        env.resync(n).await.expect("polled");
    }
    assert_eq!(env.calls(GET), 2, "a Get each for the two that changed");
    assert_eq!(env.calls(LIST), 6, "one more list for the round");
    assert_eq!(state_of(&env, accepted), Some(ConnectionState::Connected));
    assert_eq!(state_of(&env, rejected), Some(ConnectionState::Rejected));
    assert_eq!(state_of(&env, &names[8]), Some(ConnectionState::Pending));
}

#[tokio::test]
async fn a_list_shows_news_only_if_it_began_after_the_connection_was_last_seen() {
    let env = Env::start_with(patient(), CallBudget::unlimited()).await;
    let names = pending(&env).await;
    env.count_proton_calls_from_now().await;
    let before_the_list = tokio::time::Instant::now();
    env.resync(&names[0]).await.unwrap();
    assert_eq!(env.calls(LIST), 3);
    // The same connection again at once: the list it was answered by is not news any more,
    // but the next may not begin yet (a list of 250 is spaced by 250 ms); the poll stretches.
    // Checked when both polls were over within the spacing, as they are unless the machine
    // stalled for a quarter of a second (then the next list may begin, and rightly does).
    env.resync(&names[0]).await.unwrap();
    let lists = env.calls(LIST);
    if before_the_list.elapsed() < Duration::from_millis(N as u64) {
        assert_eq!(lists, 3, "not listed again within the spacing");
        assert_eq!(env.calls(GET), 0, "nor read: the list of 250 ms ago stands");
    } else {
        println!("the two polls took the whole spacing: the second's check is left out");
    }
    spacing_passes().await;
    env.resync(&names[0]).await.unwrap();
    assert_eq!(
        env.calls(LIST),
        lists + 3,
        "listed again once the spacing passed, not answered from the old list"
    );
    assert_eq!(env.calls(GET), 0);
}

/// A list of N PENDING connections is followed by the next no sooner than N ms later (see
/// `aws::pending`): the time that rule is about passes.
async fn spacing_passes() {
    tokio::time::sleep(Duration::from_millis(N as u64 + 50)).await;
}

#[tokio::test]
async fn a_connection_the_list_shows_otherwise_than_recorded_is_read() {
    let env = Env::start_with(patient(), CallBudget::unlimited()).await;
    let names = pending(&env).await;
    // Someone changes one connection's role outside the controller while it is PENDING.
    let sdk = support::proton_client(&env.emulator.url(), "AKIDTEST");
    #[allow(deprecated)]
    sdk.update_environment_account_connection()
        .id(id_of(&env, &names[3]))
        .role_arn("arn:aws:iam::444455556666:role/changed-by-hand")
        .send()
        .await
        .expect("the emulator updates the connection");
    env.count_proton_calls_from_now().await;

    for n in &names {
        env.resync(n).await.expect("polled");
    }
    assert_eq!(
        env.calls(GET),
        1,
        "the one the list shows with another role is read"
    );
    assert_eq!(env.calls(LIST), 3);
}

#[tokio::test]
async fn a_list_the_budget_defers_part_way_goes_on_from_its_next_page() {
    let mut env = Env::start_with(patient(), CallBudget::unlimited()).await;
    let names = pending(&env).await;
    // Polls may use 2 calls a second, one at a time: each page of the list waits for its slot.
    env.restart_with_budget(CallBudget::new(
        NonZeroU32::new(4).unwrap(),
        NonZeroU32::new(1).unwrap(),
        0.5,
    ));
    env.count_proton_calls_from_now().await;

    let started = tokio::time::Instant::now();
    let deadline = started + Duration::from_secs(20);
    let mut deferrals = 0;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the poll's list of {N} did not end within 20 s: {} pages so far",
            env.calls(LIST)
        );
        let before = deferred(&env);
        env.resync(&names[0]).await.expect("polled or deferred");
        if deferred(&env) == before {
            break;
        }
        deferrals += 1;
        tokio::time::sleep(env.comes_back_in(&names[0]).min(Duration::from_secs(2))).await;
    }
    assert!(deferrals > 0, "the budget deferred the list part-way");
    assert_eq!(
        env.calls(LIST),
        3,
        "three pages in all: the list went on where it stopped"
    );
    // Each page is a poll of its own, at the poll share's pace (one each 500 ms): a page after
    // the first does not go as work (one each 250 ms), as a step's later calls do when the step
    // would start again from its first.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1_000),
        "three pages at the poll share's pace take at least 1 s: {took:?}"
    );
    // Every other connection is answered by that list, without a call.
    for n in &names[1..] {
        env.resync(n).await.expect("polled");
    }
    assert_eq!(env.calls(LIST), 3);
    assert_eq!(env.calls(GET), 0);
}

#[tokio::test]
async fn a_refused_list_leaves_each_poll_to_its_get() {
    let env = Env::start_with(patient(), CallBudget::unlimited()).await;
    let names = pending(&env).await;
    env.count_proton_calls_from_now().await;
    // An IAM policy without ListEnvironmentAccountConnections, say.
    env.proton().fail_next(LIST, "AccessDeniedException", 1_000);

    for n in &names[..5] {
        env.resync(n).await.expect("polled with a Get");
    }
    assert_eq!(env.calls(GET), 5, "each poll read its connection");
    assert_eq!(
        env.calls(LIST),
        1,
        "the list was tried once; while it is known refused, polls go straight to their Get"
    );
    for n in &names[..5] {
        assert_eq!(state_of(&env, n), Some(ConnectionState::Pending));
        assert_eq!(
            support::condition(&env.api.get(n).unwrap(), "Synced").map(|c| c.0),
            Some("True".to_string()),
            "{n}: the refused list is not the resource's problem"
        );
    }
}

/// N resources created while the controller runs, until each has its PENDING connection.
async fn pending_while_running(env: &Env) -> Vec<String> {
    let names = names();
    for (i, n) in names.iter().enumerate() {
        env.api.create(n, &uid(i), spec(n));
    }
    env.api
        .wait_until(
            &format!("all {N} resources recorded with a PENDING connection"),
            Duration::from_secs(30),
            |api| {
                names.iter().all(|n| {
                    api.get(n).and_then(|o| o.status).is_some_and(|s| {
                        s.id.is_some() && s.status == Some(ConnectionState::Pending)
                    })
                })
            },
        )
        .await;
    names
}

/// The management account accepts `name`'s connection; waits until the running controller
/// records it CONNECTED.
async fn accept_and_see_connected(env: &Env, name: &str) {
    env.proton().accept(&id_of(env, name)).unwrap();
    env.api
        .wait_until(
            &format!("{name} CONNECTED after its acceptance"),
            Duration::from_secs(10),
            |_| state_of(env, name) == Some(ConnectionState::Connected),
        )
        .await;
}

/// While the controller runs, the fast polls of PENDING connections are made by the poller from
/// the list: rounds of polls go by with List pages only, and no reconcile at all; a connection
/// accepted meanwhile wakes its own resource (and only it), which reads it with one Get.
#[tokio::test]
async fn a_running_controller_makes_fast_polls_from_the_list_without_a_reconcile_each() {
    let env = Env::start_with(patient(), CallBudget::unlimited()).await;
    let running = env.run_controller(8);
    let names = pending_while_running(&env).await;
    env.count_proton_calls_from_now().await;
    // One round of polls after the last status write has gone through its watch.
    env.wait_for_calls(LIST, 3, Duration::from_secs(20)).await;
    let before = env.reconciles();

    // Two more rounds (2 s apart: a new connection's fast poll).
    env.wait_for_calls(LIST, 9, Duration::from_secs(20)).await;
    assert_eq!(env.calls(GET), 0, "the list showed each one as recorded");
    let interval = env.metric("eac_effective_poll_interval_seconds{class=\"poll\"}");
    assert!(
        (1.5..4.0).contains(&interval),
        "the polls the poller makes count in the effective interval (2 s, jittered): {interval}"
    );
    assert_eq!(
        env.reconciles() - before,
        0,
        "polls made without a reconcile (one each per 2 s before: {} in two rounds)",
        2 * N
    );

    let accepted = &names[42];
    accept_and_see_connected(&env, accepted).await;
    assert_eq!(env.calls(GET), 1, "only the accepted connection was read");
    assert!(
        env.reconciles() - before <= 3,
        "only its resource was woken (and the watch of its own status write): {}",
        env.reconciles() - before
    );
    assert_eq!(state_of(&env, &names[43]), Some(ConnectionState::Pending));
    running.abort();
}

/// A lost lease drops the controller's future while it runs (the runner stops reconciling at
/// once, without waiting for the controller to wind down): what the controller started (the
/// poller, its timetable) must stop with it, or a standby would go on polling AWS and queueing
/// reconciles.
#[tokio::test]
async fn a_controller_dropped_while_it_runs_stops_its_poller_and_its_timetable() {
    let env = Env::start_with(patient(), CallBudget::unlimited()).await;
    let running = env.run_controller(8);
    let names = pending_while_running(&env).await;
    env.count_proton_calls_from_now().await;
    env.wait_for_calls(LIST, 3, Duration::from_secs(20)).await;
    let uid = env
        .api
        .get(&names[0])
        .and_then(|o| o.metadata.uid)
        .expect("created");
    assert!(
        env.ctx.comes_back_in(&uid).is_some(),
        "its reconcile comes back"
    );

    running.abort();
    assert!(running.await.is_err_and(|e| e.is_cancelled()));

    assert_eq!(
        env.ctx.comes_back_in(&uid),
        None,
        "a stopped controller's timetable is empty"
    );
    let lists = env.calls(LIST);
    // Two rounds of the fast polls (2 s apart) would have listed again by then.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        env.calls(LIST),
        lists,
        "no List after the controller stopped"
    );
}

/// A list refused outright (an IAM policy without ListEnvironmentAccountConnections) while the
/// controller runs: the list is tried again only after a wait (2 s, doubling), and each due
/// resource is woken and polls with its Get, as without the poller.
#[tokio::test]
async fn a_running_controller_whose_list_is_refused_polls_with_gets() {
    let env = Env::start_with(patient(), CallBudget::unlimited()).await;
    let running = env.run_controller(8);
    let names = pending_while_running(&env).await;
    env.proton()
        .fail_next(LIST, "AccessDeniedException", 100_000);
    env.count_proton_calls_from_now().await;

    env.wait_for_calls(GET, 2 * N as u64, Duration::from_secs(20))
        .await;
    assert!(
        env.calls(LIST) < env.calls(GET) / 10,
        "the list is tried now and then, not once a poll: {} lists, {} Gets",
        env.calls(LIST),
        env.calls(GET)
    );
    let accepted = &names[7];
    accept_and_see_connected(&env, accepted).await;
    running.abort();
}

/// The Proton port of the controller reaching the emulator through a gate (calls time out after
/// `timeout`), and a PENDING connection made through it before any outage.
struct BehindAGate {
    gate: support::gate::Gate,
    proton: Proton,
    recorded: eac_controller::aws::proton::Connection,
}

const REGION: &str = "us-east-1";

impl BehindAGate {
    async fn start(env: &Env, timeout: Duration) -> Self {
        let gate = support::gate::Gate::to(env.emulator.addr()).await;
        let proton = Proton::with_static_credentials(
            ProtonSettings {
                default_region: REGION.into(),
                endpoint: Some(gate.url()),
                sts_endpoint: None,
                timeout,
            },
            CallBudget::unlimited(),
            eac_controller::metrics::Metrics::new(),
        );
        let calls = StepCalls::default();
        let recorded = proton
            .create(
                &ticket(CallClass::Work, &calls),
                REGION,
                &create_request(0),
                send_by(),
            )
            .await
            .expect("a PENDING connection, made before the outage");
        BehindAGate {
            gate,
            proton,
            recorded,
        }
    }

    /// The gate holds every connection from now on (a network that drops packets), and a Get
    /// finds so: Proton's region is away.
    async fn drop_every_packet(&self) {
        self.gate.hold();
        self.find_away("sent, and timed out").await;
    }

    /// The same, but the Get that finds the region away is reset at once (the gate shut for
    /// it) instead of waiting out the call timeout; the gate holds every connection after it.
    async fn drop_every_packet_found_at_once(&self) {
        self.gate.shut();
        self.find_away("sent, and reset").await;
        self.gate.hold();
    }

    async fn find_away(&self, how: &str) {
        let calls = StepCalls::default();
        let failed = self
            .proton
            .get(&ticket(CallClass::Work, &calls), REGION, "no-answer")
            .await
            .expect_err("no answer");
        assert!(!failed.is_unreached(), "{how}: {failed:?}");
        assert_eq!(failed.class, ErrorClass::Unanswered, "{how}: {failed:?}");
    }

    async fn poll(&self) -> Result<eac_controller::aws::proton::Connection, ProtonError> {
        let calls = StepCalls::default();
        self.proton
            .poll(&ticket(CallClass::Poll, &calls), REGION, &self.recorded)
            .await
    }

    /// Each held call's operation (its X-Amz-Target), not its signed headers.
    fn targets(&self) -> Vec<String> {
        self.gate
            .held()
            .iter()
            .filter_map(|sent| sent.lines().find(|l| l.starts_with("x-amz-target:")))
            .map(str::to_string)
            .collect()
    }

    /// Waits until the gate holds (or held) `count` calls of `operation`: a call that timed out
    /// may be read by the gate a moment later on a busy machine. Checked every 20 ms (the gate is
    /// no part of the API server that `wait_until` follows); fails after 10 s, naming `what`.
    async fn until_held(&self, operation: &str, count: usize, what: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.held(operation) < count {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after 10 s waiting for {what} to be held by the gate: {:?}",
                self.targets()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How many calls of `operation` the gate holds (or held).
    fn held(&self, operation: &str) -> usize {
        self.targets()
            .iter()
            .filter(|target| target.ends_with(&format!(".{operation}")))
            .count()
    }
}

fn create_request(i: usize) -> CreateRequest {
    CreateRequest {
        client_token: uid(i),
        environment_name: format!("prod-{i}"),
        management_account_id: "111122223333".into(),
        roles: Default::default(),
        tags: Default::default(),
    }
}

/// The end of a Create's window to be sent, a minute away.
fn send_by() -> Option<jiff::Timestamp> {
    Some(jiff::Timestamp::now() + jiff::SignedDuration::from_secs(60))
}

fn ticket(class: CallClass, calls: &StepCalls) -> Ticket<'_> {
    Ticket {
        identity: &AwsIdentity::Own,
        key: "5e7d0000-0000-4000-8000-000000000000",
        class,
        admitted: false,
        trial: None,
        calls,
    }
}

/// Proton's network drops every packet (a gate holding every connection), and a call has found
/// so: while the shared list of PENDING connections waits out the call timeout (the one call
/// let through to the region), another poll is answered at once that Proton does not answer,
/// instead of waiting for that list; and the poll whose list got no answer does not then wait
/// out the timeout again on a Get.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_nothing_answers_a_poll_waits_for_no_list_and_sends_no_get() {
    let env = Env::start_with(patient(), CallBudget::unlimited()).await;
    let port = Arc::new(BehindAGate::start(&env, Duration::from_secs(2)).await);
    port.drop_every_packet().await;
    let first = tokio::spawn({
        let port = port.clone();
        async move { port.poll().await }
    });
    port.until_held(LIST, 1, "the first poll's list").await;
    let second = port.poll().await.expect_err("not answered");
    assert!(
        second.is_unreached(),
        "answered at once, not sent: {second:?}"
    );
    assert!(
        !first.is_finished(),
        "the second poll did not wait for the first one's list"
    );
    let first = first.await.unwrap().expect_err("no answer to the list");
    assert!(!first.is_unreached(), "the list was sent: {first:?}");
    assert_eq!(
        (port.held(LIST), port.held(GET)),
        (1, 1),
        "the list, and no Get after it (the Get is the one that found the outage): {:?}",
        port.targets()
    );
}

/// A list refused (an IAM policy without ListEnvironmentAccountConnections) still leaves a poll
/// to its Get while Proton's region is away: only a list nothing answered says a Get would fare
/// no better. The Get is then the one call let through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_list_leaves_the_poll_to_its_get_even_where_nothing_answers() {
    let env = Env::start_with(patient(), CallBudget::unlimited()).await;
    // The Get must be sent, and time out, within the 2 s the refusal is kept (below); on a busy
    // machine a call given 300 ms was at times not yet written when it timed out.
    let port = BehindAGate::start(&env, Duration::from_secs(1)).await;
    env.proton().fail_next(LIST, "AccessDeniedException", 1);
    let polled = port
        .poll()
        .await
        .expect("read with a Get after the refused list");
    assert_eq!(polled.state, ConnectionState::Pending);
    // The refusal is kept for 2 s: the next poll goes straight to its Get.
    port.drop_every_packet_found_at_once().await;
    let failed = port.poll().await.expect_err("its Get got no answer");
    assert!(
        failed.class == ErrorClass::Unanswered && !failed.is_unreached(),
        "the Get was sent, and timed out: {failed:?}"
    );
    port.until_held(GET, 1, "the poll's Get").await;
    assert_eq!(
        (port.held(LIST), port.held(GET)),
        (0, 1),
        "the poll's Get (the one that found the outage was reset): {:?}",
        port.targets()
    );
}

/// Over real HTTP from the emulator: a 500 Proton answers (InternalServerException) is its
/// answer, reported as `AwsServerError`, and the region stays one that answers (every call goes,
/// not one at a time); a 503 saying the service is unavailable is no answer, `AwsUnavailable`,
/// and the region is then away (one call at a time).
#[tokio::test]
async fn a_500_proton_answers_is_a_server_error_and_a_503_unavailable_an_outage() {
    let env = Env::start_with(patient(), CallBudget::unlimited()).await;
    let port = BehindAGate::start(&env, Duration::from_secs(2)).await;
    let calls = StepCalls::default();
    let work = ticket(CallClass::Work, &calls);
    let get = || port.proton.get(&work, REGION, &port.recorded.id);
    env.proton().fail_next(GET, "InternalServerException", 3);
    for _ in 0..3 {
        let e = get().await.expect_err("a 500");
        assert_eq!(
            (e.class, e.reason()),
            (ErrorClass::Transient, "AwsServerError"),
            "{e:?}"
        );
    }
    let (first, second) = (
        port.proton.hold_trial(REGION, GET),
        port.proton.hold_trial(REGION, GET),
    );
    assert!(
        first.is_ok() && second.is_ok(),
        "the region answers: no turns"
    );
    drop((first, second));
    assert_eq!(get().await.expect("answered").id, port.recorded.id);

    env.proton()
        .fail_next(GET, "ServiceUnavailableException", 1);
    let e = get().await.expect_err("a 503");
    assert_eq!(
        (e.class, e.reason()),
        (ErrorClass::Unanswered, "AwsUnavailable"),
        "{e:?}"
    );
    let first = port.proton.hold_trial(REGION, GET);
    assert!(first.is_ok(), "the one turn");
    assert!(
        matches!(port.proton.hold_trial(REGION, GET), Err(e) if e.is_unreached()),
        "the region is away: one call at a time"
    );
    drop(first);
    assert_eq!(
        get().await.expect("answered again").id,
        port.recorded.id,
        "the call let through finds it back"
    );
}

/// Credentials the client cannot load (the controller's own, say) fail a poll's list before
/// anything is sent: the poll ends on that list's error and sends no Get, which would fail the
/// same way (and take a slot in the budget) for each PENDING resource.
#[tokio::test]
async fn a_list_that_failed_in_the_client_is_not_followed_by_a_get() {
    use aws_credential_types::provider::{self, ProvideCredentials, error::CredentialsError};

    #[derive(Debug)]
    struct NoCredentials;
    impl ProvideCredentials for NoCredentials {
        fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            provider::future::ProvideCredentials::ready(Err(CredentialsError::not_loaded(
                "no credentials in this test",
            )))
        }
    }

    let env = Env::start_with(patient(), CallBudget::unlimited()).await;
    let port = BehindAGate::start(&env, Duration::from_secs(2)).await;
    let sdk = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(NoCredentials),
        )
        .build();
    let unsigned = Proton::from_sdk_config(
        &sdk,
        ProtonSettings {
            default_region: REGION.into(),
            endpoint: Some(port.gate.url()),
            sts_endpoint: None,
            timeout: Duration::from_secs(2),
        },
        CallBudget::unlimited(),
        eac_controller::metrics::Metrics::new(),
    );
    let calls = StepCalls::default();
    let failed = unsigned
        .poll(&ticket(CallClass::Poll, &calls), REGION, &port.recorded)
        .await
        .expect_err("no credentials");
    assert!(failed.failed_in_client(), "{failed:?}");
    assert_eq!(
        failed.operation, LIST,
        "the list's error, and no Get after it: {failed:?}"
    );
    assert_eq!(failed.reason(), "AwsError");
    assert!(
        failed.message.contains("no credentials in this test"),
        "{}",
        failed.message
    );
}

/// The turn a Create's intent takes in a region that does not answer (`Proton::hold_trial`,
/// taken before the intent is written) is the Create's through its call: another call
/// meanwhile is not sent, nor is a Create without it, and the Create given the turn is sent.
/// Without it, a call between the intent and the Create could leave an intent written for a
/// Create not sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creates_turn_taken_before_its_intent_is_its_own_through_the_create() {
    let env = Env::start_with(patient(), CallBudget::unlimited()).await;
    // Long enough for a call to be written before it times out on a busy machine.
    let port = BehindAGate::start(&env, Duration::from_secs(1)).await;
    port.drop_every_packet().await;
    let turn = port
        .proton
        .hold_trial(REGION, CREATE)
        .expect("the region's one turn, free once the Get that found the outage is over");
    let calls = StepCalls::default();
    let other = port
        .proton
        .get(&ticket(CallClass::Work, &calls), REGION, "another")
        .await
        .expect_err("not sent");
    assert!(other.is_unreached(), "refused at once: {other:?}");
    let without = port
        .proton
        .create(
            &ticket(CallClass::Work, &calls),
            REGION,
            &create_request(1),
            send_by(),
        )
        .await
        .expect_err("not sent");
    assert!(without.is_unreached(), "no turn, no Create: {without:?}");
    assert!(
        matches!(port.proton.hold_trial(REGION, CREATE), Err(e) if e.is_unreached()),
        "one turn at a time"
    );
    let with_turn = Ticket {
        trial: Some(&turn),
        ..ticket(CallClass::Work, &calls)
    };
    let sent = port
        .proton
        .create(&with_turn, REGION, &create_request(2), send_by())
        .await
        .expect_err("no answer from behind the gate");
    assert!(!sent.is_unreached(), "sent, and timed out: {sent:?}");
    port.until_held(CREATE, 1, "the Create given the turn")
        .await;
    assert_eq!(
        (port.held(CREATE), port.held(GET)),
        (1, 1),
        "the Create with the turn, and the Get that found the outage: {:?}",
        port.targets()
    );
    drop(turn);
    let next = port
        .proton
        .get(&ticket(CallClass::Work, &calls), REGION, "next")
        .await
        .expect_err("no answer from behind the gate");
    assert!(!next.is_unreached(), "the turn is free again: {next:?}");
}
