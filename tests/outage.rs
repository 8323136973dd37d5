//! The `eac-controller` binary with leader election on (as the chart runs it) through a 10 s
//! API-server outage, the pressures of an incident together: the leader cannot renew its Lease
//! and stops, every watch fails, and when the API server answers again the leader must take its
//! Lease back, list and watch again, and serve a resource applied right then. The fake API server
//! over HTTP on 127.0.0.1 (refusing every request while down), the Proton emulator over HTTP.
//! And Proton's own outage: its endpoint resetting every connection, then answering again.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use eac_controller::aws::budget::CallBudget;
use eac_controller::connection::api::{ConnectionState, EnvironmentAccountConnection, TAG_UID};
use eac_controller::policy::api::{
    ConnectionAcceptancePolicy, ConnectionAcceptancePolicySpec, UnmatchedRequests,
};
use eac_controller::reconciler::watch::PAGE;
use eac_controller::runner;
use k8s_openapi::api::coordination::v1::Lease;
use proton_emulator::EmulatorConfig;
use support::binary::{
    Controller, alive, leader_elected_args, outage, ready, run_args, the_leader_stops,
};
use support::gate::Gate;
use support::{Env, FakeApi, NS, WarmUp, kube_config_of, patient, spec};

const LIMIT: Duration = Duration::from_secs(60);
/// The account the emulator answers for by default: the policy's management and environment
/// account alike.
const EMULATOR_ACCOUNT: &str = "444455556666";
/// Resources the controller holds before the outage (within the default budget's burst).
const BEFORE: usize = 15;

fn has_id(o: Option<&EnvironmentAccountConnection>) -> bool {
    o.and_then(|o| o.status.as_ref())
        .is_some_and(|s| s.id.is_some())
}

fn uid(i: usize) -> String {
    format!("0b9c6f1e-7d2a-4c55-9f0e-{i:012}")
}

/// The fake API server over HTTP, its kubeconfig (in the directory returned), and the emulator.
/// Its streamed lists end a second after their objects, and it warms up at each restart, as a
/// real API server does.
async fn over_http() -> (Env, tempfile::TempDir, std::path::PathBuf) {
    let env = Env::start_full(
        patient(),
        CallBudget::unlimited(),
        EmulatorConfig::default(),
    )
    .await;
    // As a real API server ends a streamed list: on its bookmark timer.
    env.api.delay_initial_events_end(Duration::from_secs(1));
    // As a real one starts: refusing for a moment (its authorizer, then each custom resource's
    // watch cache).
    env.api.warm_up_at_restart(WarmUp::KUBE_APISERVER);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = env.api.serve_http_stoppable(dir.path()).await;
    (env, dir, kubeconfig)
}

/// The binary with the arguments `args` makes for the emulator's URL, against [`over_http`].
async fn started(args: impl Fn(&str) -> Vec<String>) -> (Env, tempfile::TempDir, Controller) {
    let (env, dir, kubeconfig) = over_http().await;
    let url = env.emulator.url();
    let controller = Controller::start(&kubeconfig, &args(&url), None);
    (env, dir, controller)
}

/// The leader-elected binary as in a pod (`KUBERNETES_SERVICE_HOST` set), started while the fake
/// API server is stopped (connections refused), after `before` was applied (name, uid index); returns once it has warned
/// that it waits, with when the outage began.
async fn started_in_a_pod_while_down(
    before: &[(&str, usize)],
) -> (Env, tempfile::TempDir, Controller, tokio::time::Instant) {
    let (env, dir, kubeconfig) = over_http().await;
    for (name, i) in before {
        env.api.create(name, &uid(*i), spec(name));
    }
    env.api.stop();
    let down_at = tokio::time::Instant::now();
    let controller = Controller::start_with_env(
        &kubeconfig,
        &leader_elected_args(&env.emulator.url()),
        None,
        &[("KUBERNETES_SERVICE_HOST", "10.96.0.1")],
    );
    controller
        .until("the warning that it waits", LIMIT, |c| {
            c.logged("the Kubernetes API server does not answer") >= 1
        })
        .await;
    (env, dir, controller, down_at)
}

/// Waits for each of `names` to have its connection, and then `/readyz` at `readyz`, all within
/// 5 s of `back` (the API server's return); returns how long after `back` the last connection
/// was there.
async fn served_and_ready_within_5_s(
    env: &Env,
    controller: &Controller,
    readyz: &str,
    names: &[&str],
    back: tokio::time::Instant,
) -> Duration {
    let within = |back: tokio::time::Instant| Duration::from_secs(5).saturating_sub(back.elapsed());
    for name in names {
        env.api
            .wait_for(
                name,
                "a connection within 5 s of the API server's return",
                within(back),
                has_id,
            )
            .await;
    }
    let served = back.elapsed();
    controller
        .until(
            "/readyz ready within 5 s of the API server's return",
            within(back),
            |_| ready(readyz),
        )
        .await;
    served
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_leader_election_a_resource_applied_after_a_10_s_outage_is_served_within_5_s() {
    // Default flags otherwise: the default AWS budget, lease timings and resync.
    let (env, _dir, controller) = started(leader_elected_args).await;
    let names: Vec<String> = (0..BEFORE).map(|i| format!("before-{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        env.api.create(name, &uid(i), spec(name));
    }
    for name in &names {
        env.api
            .wait_for(name, "a connection before the outage", LIMIT, has_id)
            .await;
    }
    let readyz = controller.readyz_addr(LIMIT).await;
    controller
        .until("/readyz ready before the outage", LIMIT, |_| ready(&readyz))
        .await;

    let back = outage(&env.api, &controller, Duration::from_secs(10)).await;
    env.api.create("after", &uid(BEFORE), spec("after"));
    let served = served_and_ready_within_5_s(&env, &controller, &readyz, &["after"], back).await;
    let ready_at = back.elapsed();
    assert!(
        env.api.warm_up_refused(429) >= 1,
        "the new term's watches met the fresh watch caches of the restarted API server"
    );
    assert!(
        controller.logged("listing in pages instead") >= 1,
        "a streamed watch the filling cache shed listed in pages at once"
    );
    assert_eq!(
        controller.logged("became leader"),
        2,
        "led, lost the Lease in the outage, led again"
    );
    for name in &names {
        assert!(
            has_id(env.api.get(name).as_ref()),
            "{name} kept its connection"
        );
    }
    assert_eq!(
        env.calls("CreateEnvironmentAccountConnection"),
        BEFORE as u64 + 1,
        "one Create for each resource, none again after the restart"
    );
    println!(
        "with leader election, after a 10 s outage: the leader led again and the new resource had its connection {:.2} s, /readyz was ready {:.2} s, after the API server came back",
        served.as_secs_f64(),
        ready_at.as_secs_f64()
    );
}

/// Waits for the reconcile that created `name`'s connection to be over: its Created Event is
/// published after its status write was answered. The status shows the id as soon as the API
/// server applies the write, before its answer reaches the controller: an API server stopped
/// right then leaves the reconcile to retry the write with backoff, whenever the server is back.
async fn reconcile_over(env: &Env, name: &str) {
    env.api
        .wait_until(
            &format!("the Created Event of {name} (its reconcile over)"),
            LIMIT,
            |api| {
                api.events()
                    .iter()
                    .any(|e| e["reason"] == "Created" && e["regarding"]["name"] == name)
            },
        )
        .await;
}

/// Without leader election the watch resumes after the API server's process was stopped; the
/// restarted API server's watch cache, filling, answers it 429 (and, once filled, would answer
/// 410 Gone: it begins after the outage), and the watch lists again, in pages. A resource
/// applied right at the return comes in that relist: it must be reconciled once the relist is
/// in the cache (before, its request ran while the cache still held the list from before the
/// outage, found no object, and was dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_applied_as_the_api_server_returns_comes_in_the_relist_and_is_served_within_5_s()
{
    let (env, _dir, controller) = started(|url| run_args(url, &[])).await;
    env.api.create("before", &uid(0), spec("before"));
    env.api
        .wait_for("before", "a connection before the outage", LIMIT, has_id)
        .await;
    reconcile_over(&env, "before").await;
    let readyz = controller.readyz_addr(LIMIT).await;
    controller
        .until("/readyz ready before the outage", LIMIT, |_| ready(&readyz))
        .await;

    // Stopped (every connection cut, new ones closed at once), long enough for the watch's
    // backoff to reach its cap; twice: the watch lists in pages after its first return, and must
    // still not wait out the 429 and the 410 at the second.
    let paged = |c: &Controller| {
        c.log()
            .lines()
            .filter(|l| {
                l.contains("listing in pages instead")
                    && l.contains("kind=EnvironmentAccountConnection")
            })
            .count()
    };
    for outage in 1..=2 {
        env.api.stop();
        tokio::time::sleep(Duration::from_secs(6)).await;
        env.api.up();
        assert!(
            env.api.connections_refused() > 0,
            "the controller tried while the API server was stopped"
        );
        let back = tokio::time::Instant::now();
        let name = format!("after-{outage}");
        env.api.create(&name, &uid(outage), spec(&name));
        let served = served_and_ready_within_5_s(&env, &controller, &readyz, &[&name], back).await;
        // Before the next outage: a retried write would make the API server fill the kind's
        // watch cache before the watch comes back, and the watch would not meet the 429.
        reconcile_over(&env, &name).await;
        assert_eq!(
            env.calls("CreateEnvironmentAccountConnection"),
            1 + outage as u64
        );
        assert!(
            env.api.warm_up_refused(429) >= outage,
            "the resumed watches met the fresh watch caches of the restarted API server"
        );
        assert_eq!(
            paged(&controller),
            outage,
            "the resumed watch the filling cache shed listed in pages at once, not after its 410:\n{}",
            controller.log()
        );
        println!(
            "after a 6 s outage (#{outage}), the resource applied at the return had its connection {:.2} s after it",
            served.as_secs_f64()
        );
    }
    // Each page as large as the controller asks for (the largest transient of a relist).
    let pages: Vec<String> = env
        .api
        .requests_to::<EnvironmentAccountConnection>()
        .into_iter()
        .filter(|r| r.method == http::Method::GET && r.query.contains("limit="))
        .map(|r| r.query)
        .collect();
    let page = format!("limit={PAGE}");
    assert!(
        pages.len() >= 2 && pages.iter().all(|q| q.split('&').any(|p| p == page)),
        "the relists' pages ask for {PAGE} objects each: {pages:?}"
    );
}

/// Resources applied at once in a burst.
const BURST: usize = 40;

/// Applies [`BURST`] resources once `controller` is ready; returns their names once 8 have their
/// connections (with a budget of 4 Creates a second, the burst is then under way).
async fn burst_under_way(env: &Env, controller: &Controller) -> Vec<String> {
    let readyz = controller.readyz_addr(LIMIT).await;
    controller
        .until("/readyz ready before the burst", LIMIT, |_| ready(&readyz))
        .await;
    let names: Vec<String> = (0..BURST).map(|i| format!("burst-{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        env.api.create(name, &uid(i), spec(name));
    }
    env.api
        .wait_until(
            "8 of the burst to have their connections (4 Creates a second)",
            LIMIT,
            |api| served(api, &names) >= 8,
        )
        .await;
    names
}

/// How many of `names` have their connections.
fn served(api: &FakeApi, names: &[String]) -> usize {
    names.iter().filter(|n| has_id(api.get(n).as_ref())).count()
}

/// Each of `names` (the resource with uid `uid(i)` at `i`) has exactly one connection, the one
/// its status names, and there is no other connection.
fn each_has_exactly_one_connection(env: &Env, names: &[String]) {
    let connections = env.proton().connections();
    for (i, name) in names.iter().enumerate() {
        let owned: Vec<_> = connections
            .iter()
            .filter(|c| c.tags.get(TAG_UID) == Some(&uid(i)))
            .collect();
        assert_eq!(owned.len(), 1, "{name} has exactly one connection");
        let id = env.api.get(name).and_then(|o| o.status).and_then(|s| s.id);
        assert_eq!(
            id.as_deref(),
            Some(owned[0].id.as_str()),
            "{name}'s status names its connection"
        );
    }
    assert_eq!(
        connections.len(),
        names.len(),
        "no connection besides theirs"
    );
}

/// An incident's pressures together: a burst of new resources throttled by a small AWS budget
/// (4 Creates a second), and a 10 s outage in the middle of it that stops the leader while
/// Creates are under way and their status writes are refused. When the API server answers again
/// the leader leads again and every resource ends with exactly one connection, the one its
/// status names: none lost, none made twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_in_the_middle_of_a_throttled_burst_loses_no_connection_and_makes_none_twice() {
    let (env, _dir, controller) = started(|url| {
        let mut args = leader_elected_args(url);
        args.extend(["--aws-rate-limit", "4", "--aws-burst", "4"].map(String::from));
        args
    })
    .await;
    let names = burst_under_way(&env, &controller).await;
    let served = |api: &FakeApi| served(api, &names);
    let before = served(&env.api);
    assert!(
        before < BURST / 2,
        "the outage begins in the middle of the burst: {before} of {BURST} served"
    );

    let back = outage(&env.api, &controller, Duration::from_secs(10)).await;
    env.api
        .wait_until(
            &format!("all {BURST} of the burst to have their connections after the return"),
            LIMIT,
            |api| served(api) == BURST,
        )
        .await;
    let settled = back.elapsed();
    assert_eq!(
        controller.logged("became leader"),
        2,
        "led, lost the Lease in the outage, led again"
    );
    each_has_exactly_one_connection(&env, &names);
    println!(
        "a 10 s outage after {before} of {BURST} throttled Creates: all had their connections {:.2} s after the return ({} Create calls)",
        settled.as_secs_f64(),
        env.calls("CreateEnvironmentAccountConnection"),
    );
}

/// A controller started in a pod while the API server is away (a node, or the whole cluster,
/// restarting) waits for it instead of exiting: an exit would leave the pod to the kubelet's
/// restart backoff (10 s doubling to 5 minutes), so it would come back long after the API server.
/// Meanwhile it is alive (`/healthz`) and not ready, and warns at its 1st and every 10th failed
/// try (one a second); when the API server answers,
/// it leads, and serves what was applied before and a resource applied right then, within 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_in_a_pod_while_the_api_server_is_away_it_waits_and_serves_within_5_s_of_the_return()
 {
    let (env, _dir, mut controller, down_at) = started_in_a_pod_while_down(&[("before", 0)]).await;
    let addr = controller.readyz_addr(LIMIT).await;
    env.api
        .wait_until("3 tries of the first call refused", LIMIT, |api| {
            api.connections_refused() >= 3
        })
        .await;
    assert!(
        alive(&addr),
        "alive while it waits: the kubelet leaves it be"
    );
    assert!(!ready(&addr), "not ready while it waits");
    // Before, a process started in an outage exited after its first call's retries (about 3 s).
    tokio::time::sleep_until(down_at + Duration::from_secs(12)).await;
    assert!(
        controller.running(),
        "still running after 12 s without an API server"
    );
    assert!(alive(&addr));

    env.api.up();
    let back = tokio::time::Instant::now();
    env.api.create("after", &uid(1), spec("after"));
    let served =
        served_and_ready_within_5_s(&env, &controller, &addr, &["before", "after"], back).await;
    // A try a second: the first failed try warns, then every tenth.
    let warned: Vec<u32> = controller
        .log()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("the Kubernetes API server does not answer"))
        .filter_map(|l| {
            l.split("tries=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(
        !warned.is_empty() && warned.len() <= 2 && warned.iter().all(|n| n % 10 == 1),
        "the 1st failed try warned, then every 10th: {warned:?}"
    );
    assert_eq!(controller.logged("became leader"), 1);
    assert_eq!(
        env.calls("CreateEnvironmentAccountConnection"),
        2,
        "one Create each"
    );
    println!(
        "started in a pod 12 s into an outage: both resources had their connections {:.2} s after the API server came back",
        served.as_secs_f64()
    );
}

/// Waiting for the API server at its start, the controller still stops at once when Kubernetes
/// stops its pod (SIGTERM), and cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_the_api_server_at_its_start_it_stops_at_once_on_sigterm() {
    let (_env, _dir, mut controller, _) = started_in_a_pod_while_down(&[]).await;
    let status = controller
        .stopped_by_sigterm("the exit within 2 s of SIGTERM", Duration::from_secs(2))
        .await;
    assert!(status.success(), "{status:?}: {}", controller.log());
    assert_eq!(controller.logged("stopped before it was connected"), 1);
}

/// A restarted API server refuses every request 403 until its RBAC caches are filled (12 s here,
/// a big cluster's, where the fake's usual is 500 ms). A resource the outage left waiting for the
/// return, whose retry meets that 403, still waits for the return: it has its connection within
/// 3 s of the window's end (the watches try every 2 s through it, and the first to list tells
/// the return). Before, the 403 cleared its wait, and it sat out the backoff it then had (12 to
/// 20 s from its retry, which came 6 to 10 s after the return: 18 s at the earliest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_refused_by_a_restarting_api_server_is_served_at_its_return() {
    const RBAC: Duration = Duration::from_secs(12);
    let (env, _dir, controller) = started(|url| run_args(url, &[])).await;
    env.api.warm_up_at_restart(WarmUp {
        authorizer: RBAC,
        ..WarmUp::KUBE_APISERVER
    });
    let readyz = controller.readyz_addr(LIMIT).await;
    controller
        .until("/readyz ready before the outage", LIMIT, |_| ready(&readyz))
        .await;
    // Its first write refused (an answer), then three tries the outage leaves unanswered: its
    // next try is 6 to 10 s after the third (a backoff of 8 s, +/- 25 %), in the 403s.
    env.api.deny(
        Some(http::Method::PATCH),
        "/environmentaccountconnections/held",
    );
    env.api.create("held", &uid(0), spec("held"));
    controller
        .until("its first write refused", LIMIT, |c| {
            c.logged("reconcile failed") >= 1
        })
        .await;
    env.api.down();
    env.api.allow_all();
    controller
        .until("three of its tries failed in the outage", LIMIT, |c| {
            c.logged("reconcile failed") >= 4
        })
        .await;
    env.api.up();
    let back = tokio::time::Instant::now();
    env.api
        .wait_until_explained(
            "its connection within 3 s of the end of the restarted server's 403s",
            RBAC + Duration::from_secs(3),
            |api| has_id(api.get("held").as_ref()),
            |api| {
                format!(
                    "the resource: {:?}\nthe controller's log:\n{}",
                    api.get("held").map(|o| o.status),
                    controller.log()
                )
            },
        )
        .await;
    let refused_as_starting = env
        .api
        .requests_to::<EnvironmentAccountConnection>()
        .iter()
        .filter(|r| r.code == 403 && r.path.contains("/held"))
        .count();
    println!(
        "a retry met the restarted server's 403s ({refused_as_starting} refusals of its writes in all); its connection {:.2} s after the return, {:.2} s after the 403s ended",
        back.elapsed().as_secs_f64(),
        back.elapsed().as_secs_f64() - RBAC.as_secs_f64()
    );
    assert!(
        refused_as_starting >= 2,
        "a retry met the 403s of the restart, not only the denial before: {refused_as_starting}"
    );
}

/// Resources and a policy whose writes fail when the API server stops (refused by RBAC first,
/// then unanswered through a 30 s outage) back off, their next try 12 to 20 s away by the end.
/// When the API server answers again they are tried at once, not at the end of that backoff:
/// each resource has its connection, and the policy its status, within 5 s of the return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_an_outage_stopped_is_done_within_5_s_of_its_end_whatever_its_backoff() {
    const HELD: usize = 10;
    let (env, _dir, controller) = started(|url| run_args(url, &[])).await;
    let readyz = controller.readyz_addr(LIMIT).await;
    controller
        .until("/readyz ready before the outage", LIMIT, |_| ready(&readyz))
        .await;
    let names: Vec<String> = (0..HELD).map(|i| format!("held-{i}")).collect();
    env.api.deny(
        Some(http::Method::PATCH),
        "/environmentaccountconnections/held-",
    );
    env.api.deny(
        Some(http::Method::PATCH),
        "/connectionacceptancepolicies/held-",
    );
    for (i, name) in names.iter().enumerate() {
        env.api.create(name, &uid(i), spec(name));
    }
    env.api.create_object(
        NS,
        "held-policy",
        &uid(HELD),
        ConnectionAcceptancePolicy::new(
            "held-policy",
            ConnectionAcceptancePolicySpec {
                management_account_id: EMULATOR_ACCOUNT.into(),
                region: None,
                environment_account_ids: vec![EMULATOR_ACCOUNT.into()],
                environment_names: None,
                unmatched: UnmatchedRequests::Leave,
            },
        ),
    );
    let refused = |requests: Vec<support::Seen>, name: &str| {
        requests
            .iter()
            .any(|r| r.code == 403 && r.path.contains(&format!("/{name}")))
    };
    env.api
        .wait_until(
            &format!("a write of each of the {HELD} resources and of the policy refused"),
            LIMIT,
            |api| {
                names
                    .iter()
                    .all(|n| refused(api.requests_to::<EnvironmentAccountConnection>(), n))
                    && refused(
                        api.requests_to::<ConnectionAcceptancePolicy>(),
                        "held-policy",
                    )
            },
        )
        .await;
    let refusals: Vec<usize> = names
        .iter()
        .map(|n| {
            env.api
                .requests_to::<EnvironmentAccountConnection>()
                .iter()
                .filter(|r| r.code == 403 && r.path.contains(&format!("/{n}")))
                .count()
        })
        .collect();
    println!("403s per resource before the outage: {refusals:?}");
    env.api.down();
    env.api.allow_all();
    tokio::time::sleep(Duration::from_secs(30)).await;
    // What each waits for at the return is the outage only once a write of its was refused in
    // it: on a slow machine the 403s before can run long enough for a backoff to outlast 30 s,
    // and one that ended on a 403 keeps its backoff (the API server answered).
    env.api
        .wait_until(
            "a write of each resource and of the policy refused while the API server was down",
            LIMIT,
            |api| {
                let refused = api.refused_paths();
                names
                    .iter()
                    .map(String::as_str)
                    .chain(["held-policy"])
                    .all(|n| refused.iter().any(|p| p.contains(&format!("/{n}"))))
            },
        )
        .await;
    let requests_before = env.api.requests().len();
    env.api.up();
    let back = tokio::time::Instant::now();
    env.api
        .wait_until_explained(
            &format!("all {HELD} resources to have their connections within 5 s of the return"),
            Duration::from_secs(5),
            |api| names.iter().all(|n| has_id(api.get(n).as_ref())),
            |api| {
                let states: Vec<String> = names
                    .iter()
                    .map(|n| match api.get(n) {
                        Some(o) => format!(
                            "{n}: finalizers {:?}, status {:?}",
                            o.metadata.finalizers,
                            o.status.map(|s| (s.id, s.conditions))
                        ),
                        None => format!("{n}: gone"),
                    })
                    .collect();
                let since: Vec<String> = api.requests()[requests_before..]
                    .iter()
                    .map(|r| format!("{} {} {}", r.method, r.path, r.code))
                    .collect();
                let log = controller.log();
                let tail: Vec<&str> = log.lines().rev().take(150).collect();
                format!(
                    "resources:\n{}\nrequests since the return:\n{}\nthe controller's last log lines:\n{}",
                    states.join("\n"),
                    since.join("\n"),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            },
        )
        .await;
    env.api
        .wait_until(
            "the policy's status within 5 s of the return",
            Duration::from_secs(5).saturating_sub(back.elapsed()),
            |api| {
                api.get_object::<ConnectionAcceptancePolicy>(NS, "held-policy")
                    .and_then(|p| p.status)
                    .is_some_and(|s| s.observed_generation == Some(1))
            },
        )
        .await;
    println!(
        "after a 30 s outage, what it stopped was done {:.2} s after the return",
        back.elapsed().as_secs_f64()
    );
    for kind in ["EnvironmentAccountConnection", "ConnectionAcceptancePolicy"] {
        let said = controller
            .log()
            .lines()
            .filter(|l| {
                l.contains("trying again at once what its outage stopped")
                    && l.contains(&format!("kind=\"{kind}\""))
            })
            .count();
        // At the return, and at the second look only if a call failed after the first.
        assert!(
            (1..=2).contains(&said),
            "said at the return for {kind}:\n{}",
            controller.log()
        );
    }
}

/// How many reconciles of the resource `name` ended on a call Proton left unanswered.
fn unanswered_tries(controller: &Controller, name: &str) -> usize {
    let resource = format!("resource=\"{name}\"");
    controller
        .log()
        .lines()
        .filter(|l| {
            l.contains("reconcile ended on a problem")
                && l.contains("AwsUnavailable")
                && l.contains(&resource)
        })
        .count()
}

/// Creates `name` (uid 0) and waits for its connection: the controller learns its account
/// first, so an outage after this is Proton's, not STS's (which shares the emulator's port).
async fn connected_before_protons_outage(env: &Env, name: &str) {
    env.api.create(name, &uid(0), spec(name));
    env.api
        .wait_for(name, "a connection before Proton's outage", LIMIT, has_id)
        .await;
}

/// How many connections Proton holds that were created with `token` as the client token.
fn made_with_token(env: &Env, token: &str) -> usize {
    env.emulator
        .state()
        .connections()
        .iter()
        .filter(|c| c.client_token.as_deref() == Some(token))
        .count()
}

/// Proton stops answering (its endpoint resets every connection, as when its pod is gone from
/// behind its Service) while a resource is created. The resource backs off as for any passing
/// fault; once Proton answers again (probed every 2 s), its connection is created at once, not
/// at the end of a backoff that grew through the outage (12 to 20 s away at the return).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_proton_left_unanswered_is_served_within_5_s_of_its_return_whatever_its_backoff()
{
    /// After its fifth failure a resource waits 16 s (+/- 25 %) before its next try.
    const FAILURES: usize = 5;
    let (env, _dir, kubeconfig) = over_http().await;
    let gate = Gate::to(env.emulator.addr()).await;
    let controller = Controller::start(&kubeconfig, &run_args(&gate.url(), &[]), None);
    let readyz = controller.readyz_addr(LIMIT).await;
    controller
        .until("/readyz ready before Proton's outage", LIMIT, |_| {
            ready(&readyz)
        })
        .await;
    // Nothing but the resource's tries and the probes call Proton: only a probe can see it back
    // before the resource's next try.
    gate.shut();
    env.api.create("during", &uid(1), spec("during"));
    let failed = |c: &Controller| unanswered_tries(c, "during");
    controller
        .until(
            &format!(
                "{FAILURES} failed tries to create the connection of a resource applied during Proton's outage"
            ),
            LIMIT,
            |c| failed(c) >= FAILURES,
        )
        .await;
    gate.open();
    let back = tokio::time::Instant::now();
    controller
        .until(
            "the connection of the resource applied during the outage, within 5 s of Proton's return",
            Duration::from_secs(5),
            |_| has_id(env.api.get("during").as_ref()),
        )
        .await;
    println!(
        "after {FAILURES} failures, the connection was created {:.2} s after Proton's return",
        back.elapsed().as_secs_f64()
    );
    assert_eq!(
        failed(&controller),
        FAILURES,
        "no try between the last failure and the return:\n{}",
        controller.log()
    );
    // STS's outage: the first call is the controller's GetCallerIdentity, and STS shares the
    // emulator's port.
    assert_eq!(
        controller.logged("STS does not answer: probing it until it does"),
        1,
        "warned once:\n{}",
        controller.log()
    );
    let said = |what: &str| {
        controller
            .log()
            .lines()
            .filter(|l| l.contains("answers again") && l.contains(what))
            .count()
    };
    assert_eq!(said("outage_secs="), 1, "the return said once");
    // At the return, and at the second look only if a call failed after the first.
    assert!(
        (1..=2).contains(&said("kind=\"EnvironmentAccountConnection\"")),
        "{}",
        controller.log()
    );
    assert_eq!(
        made_with_token(&env, &uid(1)),
        1,
        "one connection for the resource"
    );
}

/// Proton's outage in the middle of a burst throttled by a small AWS budget (4 calls a second):
/// Creates under way when the gate shuts are cut off, some of them after Proton acted on them.
/// When it answers again every resource ends with exactly one connection, the one its status
/// names, and what the outage stopped comes back through the budget, not around it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proton_outage_in_a_throttled_burst_loses_no_connection_makes_none_twice_and_keeps_to_the_budget()
 {
    const RATE: u64 = 4;
    let (env, _dir, kubeconfig) = over_http().await;
    let gate = Gate::to(env.emulator.addr()).await;
    let args = run_args(&gate.url(), &["--aws-rate-limit", "4", "--aws-burst", "4"]);
    let controller = Controller::start(&kubeconfig, &args, None);
    let names = burst_under_way(&env, &controller).await;
    let served = |api: &FakeApi| served(api, &names);
    gate.shut();
    let before = served(&env.api);
    assert!(
        before < BURST / 2,
        "the outage begins in the middle of the burst: {before} of {BURST} served"
    );
    controller
        .until("the warning that Proton does not answer", LIMIT, |c| {
            c.logged("Proton does not answer") == 1
        })
        .await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    env.proton().reset_calls();
    gate.open();
    let back = tokio::time::Instant::now();
    env.api
        .wait_until(
            &format!("all {BURST} of the burst to have their connections after Proton's return"),
            LIMIT,
            |api| served(api) == BURST,
        )
        .await;
    let settled = back.elapsed();
    each_has_exactly_one_connection(&env, &names);
    // The rest of the burst at the budget's rate, and 5 s for the return to be seen and spare.
    let bound = Duration::from_secs_f64((BURST - before) as f64 / RATE as f64 + 5.0);
    assert!(
        settled <= bound,
        "all served {settled:?} after the return, more than {bound:?}; Proton's calls: {:?}; the controller's log:\n{}",
        env.proton().calls(),
        controller.log()
    );
    let calls = env.proton().calls();
    // The budget's rate and burst, and the probe that found Proton back (outside the budget).
    assert!(
        calls.peak_requests_per_second <= 2 * RATE + 1,
        "peak {} requests/s after the return: {calls:?}",
        calls.peak_requests_per_second
    );
    println!(
        "a 12 s Proton outage after {before} of {BURST} throttled Creates: all had their connections {:.2} s after the return ({} Create calls after it, peak {} requests/s)",
        settled.as_secs_f64(),
        calls.count("CreateEnvironmentAccountConnection"),
        calls.peak_requests_per_second,
    );
}

/// A call sent before Proton's return that fails after it: Proton's network dropped its packets
/// (the gate holds every connection), so the resource's fourth Create waits for an answer that
/// never comes; Proton answers again meanwhile, the return is told and looked at twice, and
/// only then does the Create fail (the gate resets it). The reconcile began before the return,
/// so it is tried again at once, not at the end of the backoff (6 to 10 s) that it computed from
/// the outage's failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_sent_before_protons_return_that_fails_after_it_is_tried_again_at_once() {
    /// After its third failure a resource waits 4 s (+/- 25 %), after the fourth 8 s.
    const FAILURES: usize = 3;
    let (env, _dir, kubeconfig) = over_http().await;
    let gate = Gate::to(env.emulator.addr()).await;
    let controller = Controller::start(&kubeconfig, &run_args(&gate.url(), &[]), None);
    connected_before_protons_outage(&env, "before").await;
    // Settled, so that no poll of it is the one call that goes to Proton while it is away:
    // that is to be the resource's own.
    let before = env.proton().connections()[0].id.clone();
    env.proton().accept(&before).unwrap();
    env.api
        .wait_for(
            "before",
            "the connection made before the outage recorded CONNECTED",
            LIMIT,
            |o| {
                o.and_then(|o| o.status.as_ref()).and_then(|s| s.status)
                    == Some(ConnectionState::Connected)
            },
        )
        .await;
    gate.shut();
    env.api.create("during", &uid(1), spec("during"));
    controller
        .until(
            &format!("{FAILURES} failed tries of the resource applied during Proton's outage"),
            LIMIT,
            |c| unanswered_tries(c, "during") >= FAILURES,
        )
        .await;
    gate.hold();
    let token = uid(1);
    controller
        .until(
            "the gate to hold the resource's next call (its client token)",
            LIMIT,
            |_| gate.held().iter().any(|sent| sent.contains(&token)),
        )
        .await;
    gate.open();
    controller
        .until("Proton's return told (a probe answered)", LIMIT, |c| {
            c.logged("Proton answers again") == 1
        })
        .await;
    let told = tokio::time::Instant::now();
    // The scenario: the held call outlasts the second look at the return (5 s after it), so
    // only its own reconcile's end can make the resource due.
    tokio::time::sleep_until(told + Duration::from_secs(6)).await;
    assert!(
        !has_id(env.api.get("during").as_ref()),
        "its call is still held"
    );
    gate.reset_held();
    let failed_at = tokio::time::Instant::now();
    controller
        .until(
            "the connection of the resource whose call failed after Proton's return, within 5 s of that failure",
            Duration::from_secs(5),
            |_| has_id(env.api.get("during").as_ref()),
        )
        .await;
    println!(
        "a call held through Proton's return failed 6 s after it: the connection was created {:.2} s after that failure",
        failed_at.elapsed().as_secs_f64()
    );
    assert_eq!(
        unanswered_tries(&controller, "during"),
        FAILURES + 1,
        "the held call failed too:\n{}",
        controller.log()
    );
    assert_eq!(
        controller.logged("AWS answered again while this reconcile ran: trying again now"),
        1,
        "{}",
        controller.log()
    );
    assert_eq!(
        made_with_token(&env, &token),
        1,
        "one connection for the resource"
    );
}

/// Proton's network drops every packet (the gate holds every connection, never answering), so
/// each call waits out `--aws-timeout` (2 s here, 30 s by default). Once one has, the region is
/// away, and one call at a time goes there besides the probe: the resources due meanwhile are
/// answered at once that it does not answer (`AwsUnavailable`, nothing sent) instead of each
/// holding a worker for the whole timeout, which would leave none for the resources of regions
/// that answer. When the network passes packets again, every resource gets exactly one
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proton_that_drops_every_packet_gets_one_call_at_a_time_and_makes_no_connection_twice() {
    const DROPPED: usize = 8;
    let (env, _dir, kubeconfig) = over_http().await;
    let gate = Gate::to(env.emulator.addr()).await;
    // With no list lag, an intent to create is stale 2 s after it was written: each Create
    // tried later writes it again first, unless it would not be sent.
    let args = run_args(
        &gate.url(),
        &["--aws-timeout", "2s", "--aws-list-lag", "0s"],
    );
    let controller = Controller::start(&kubeconfig, &args, None);
    let mut names = vec!["before".to_string()];
    connected_before_protons_outage(&env, &names[0]).await;
    gate.hold();
    names.extend((1..=DROPPED).map(|i| format!("dropped-{i}")));
    for (i, name) in names.iter().enumerate().skip(1) {
        env.api.create(name, &uid(i), spec(name));
    }
    let dropped = &names[1..];
    // Their first calls went before anything was known of the outage, and waited it out.
    controller
        .until(
            "each resource applied in the outage to fail once",
            LIMIT,
            |c| dropped.iter().all(|n| unanswered_tries(c, n) >= 1),
        )
        .await;
    // And reported it: each status then holds the intent its first Create went under.
    let reported = |api: &FakeApi| {
        dropped.iter().all(|n| {
            api.get(n)
                .and_then(|o| support::condition(&o, "Synced"))
                .is_some_and(|(_, reason, _)| reason == "AwsUnavailable")
        })
    };
    env.api
        .wait_until(
            "each resource applied in the outage to report AwsUnavailable",
            LIMIT,
            reported,
        )
        .await;
    let away_from = gate.held().len();
    let writes_from = env.api.requests().len();
    controller
        .until(
            "each resource applied in the outage to fail three more times",
            LIMIT,
            |c| dropped.iter().all(|n| unanswered_tries(c, n) >= 4),
        )
        .await;
    let at_once = gate.most_held_at_once(away_from);
    let held = gate.held();
    let calls_held = held.len() - away_from;
    let creates_held = held[away_from..]
        .iter()
        .filter(|sent| sent.contains("CreateEnvironmentAccountConnection"))
        .count();
    // Each intent to create written since: a resource's createSentAt not written before.
    let requests = env.api.requests();
    let sent_at = |r: &support::Seen| {
        let at = r.status_written()["createSentAt"].as_str()?.to_string();
        (r.method != http::Method::GET).then(|| (r.path.clone(), at))
    };
    let before: HashSet<(String, String)> =
        requests[..writes_from].iter().filter_map(sent_at).collect();
    let intents: HashSet<(String, String)> = requests[writes_from..]
        .iter()
        .filter_map(sent_at)
        .filter(|at| !before.contains(at))
        .collect();
    let unsent = controller
        .log()
        .lines()
        .filter(|l| {
            l.contains("reconcile ended on a problem")
                && l.contains("not sent: Proton in us-east-1 does not answer")
        })
        .count();
    assert!(
        at_once <= 2,
        "at most one call and one probe wait for an answer at once; {at_once} did:\n{}",
        controller.log()
    );
    assert!(
        unsent > 0,
        "the others were not sent:\n{}",
        controller.log()
    );
    // A Create not sent writes no intent first, and one let through holds the region's turn
    // from its intent to its call: none is written but for a Create sent. One may be between
    // its intent and its call as the requests were read: its Create follows within a moment.
    let creates_since = |gate: &Gate| {
        gate.held()[away_from..]
            .iter()
            .filter(|sent| sent.contains("CreateEnvironmentAccountConnection"))
            .count()
    };
    support::poll_until(
        &format!(
            "a Create sent for each of the {} intents to create written ({creates_held} sent when they were read; {unsent} tries not sent)",
            intents.len()
        ),
        Duration::from_secs(5),
        || creates_since(&gate) as f64,
        intents.len() as f64,
    )
    .await;
    gate.open();
    gate.reset_held();
    env.api
        .wait_until(
            "every resource applied in the outage to have its connection once the gate opens",
            LIMIT,
            |api| served(api, &names) == names.len(),
        )
        .await;
    each_has_exactly_one_connection(&env, &names);
    println!(
        "Proton dropping every packet, {DROPPED} resources due: after the first timeouts at most {at_once} calls waited at once ({calls_held} calls held in all, {creates_held} of them Creates; {unsent} reconciles ended on a call not sent; {} intents to create written)",
        intents.len()
    );
}

/// STS drops every packet before the controller has learned its account: the reconciles that
/// need it wait for the one question out and take its failure, or fail at once, unsent, while
/// it is out; none waits its turn to ask again. Asked in turn, a question of three tries of 2 s
/// each, the eighth resource would report only after some 48 s, every worker held meanwhile.
/// When STS answers again, every resource gets its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sts_that_drops_every_packet_holds_one_question_not_a_worker_for_each() {
    const DUE: usize = 8;
    let (env, _dir, kubeconfig) = over_http().await;
    let gate = Gate::to(env.emulator.addr()).await;
    gate.hold();
    let names: Vec<String> = (1..=DUE).map(|i| format!("sts-{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        env.api.create(name, &uid(i), spec(name));
    }
    let args = run_args(&gate.url(), &["--aws-timeout", "2s"]);
    let controller = Controller::start(&kubeconfig, &args, None);
    let started = std::time::Instant::now();
    let reported = |api: &FakeApi| {
        names.iter().all(|n| {
            api.get(n)
                .and_then(|o| support::condition(&o, "Synced"))
                .is_some_and(|(_, reason, _)| reason == "AwsUnavailable")
        })
    };
    env.api
        .wait_until(
            "each resource to report that STS does not answer",
            LIMIT,
            reported,
        )
        .await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(24),
        "{took:?}: the resources waited their turn to ask\n{}",
        controller.log()
    );
    assert_eq!(
        env.proton().connections().len(),
        0,
        "nothing reached Proton"
    );
    gate.open();
    gate.reset_held();
    env.api
        .wait_until(
            "every resource to have its connection once STS answers",
            LIMIT,
            |api| served(api, &names) == names.len(),
        )
        .await;
    each_has_exactly_one_connection(&env, &names);
    println!(
        "STS dropping every packet, {DUE} resources due: all reported AwsUnavailable {:.1} s after the start",
        took.as_secs_f64()
    );
}

/// A PENDING connection whose polls the shared list of PENDING connections answers (see
/// `aws::pending`): through a 40 s Proton outage the list fails again and again, and the wait
/// before the next list grows (2 s, doubling: 32 s by the end). When Proton answers again that
/// wait is over. The resource's reconcile at the return settles it (PENDING, Synced again);
/// then the management account accepts, and the resource is CONNECTED at its next poll (about
/// 4 s at its age), not when the wait grown through the outage ends (some 20 s after the
/// return) or at its reconcile's next backstop (27 s or more).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_of_a_pending_connection_go_on_when_proton_answers_again_not_after_the_lists_wait() {
    let (env, _dir, kubeconfig) = over_http().await;
    let gate = Gate::to(env.emulator.addr()).await;
    let controller = Controller::start(&kubeconfig, &run_args(&gate.url(), &[]), None);
    env.api.create("waiting", &uid(0), spec("waiting"));
    env.api
        .wait_for("waiting", "its PENDING connection", LIMIT, has_id)
        .await;
    gate.shut();
    let shut_at = tokio::time::Instant::now();
    // The scenario: an outage long enough for the list's wait to grow past it.
    tokio::time::sleep_until(shut_at + Duration::from_secs(40)).await;
    assert!(
        controller.logged("Proton does not answer") >= 1,
        "the outage was seen:\n{}",
        controller.log()
    );
    gate.open();
    controller
        .until("Proton's return told (a probe answered)", LIMIT, |c| {
            c.logged("Proton answers again") == 1
        })
        .await;
    let synced = |o: Option<EnvironmentAccountConnection>| {
        o.as_ref()
            .and_then(|o| support::condition(o, "Synced"))
            .is_some_and(|(status, _, _)| status == "True")
    };
    env.api
        .wait_until(
            "the resource's reconcile after the return to settle it (Synced again)",
            Duration::from_secs(10),
            |api| synced(api.get("waiting")),
        )
        .await;
    let state = |api: &FakeApi| {
        api.get("waiting")
            .and_then(|o| o.status)
            .and_then(|s| s.status)
    };
    assert_eq!(state(&env.api), Some(ConnectionState::Pending));
    let id = env
        .api
        .get("waiting")
        .and_then(|o| o.status)
        .and_then(|s| s.id)
        .expect("an id");
    env.emulator.state().accept(&id).unwrap();
    let accepted = tokio::time::Instant::now();
    env.api
        .wait_until(
            "CONNECTED within 10 s of the acceptance after Proton's return",
            Duration::from_secs(10),
            |api| state(api) == Some(ConnectionState::Connected),
        )
        .await;
    println!(
        "after a 40 s Proton outage, an acceptance right after the return was seen {:.2} s later",
        accepted.elapsed().as_secs_f64()
    );
}

/// Which of the two services a cut-off node reaches again first.
#[derive(Clone, Copy, Debug)]
enum FirstBack {
    ApiServer,
    Proton,
}

/// An incident's pressures together: the leader's node is cut off from the API server and from
/// Proton at once (a network partition) in the middle of a throttled burst (4 Creates a second).
/// The leader stops within its renew deadline; the two services come back 8 s apart, in the
/// order `first`, and a resource is applied when the API server answers again. After the later
/// return every resource has exactly one connection, the one its status names, at the budget's
/// pace plus 5 s: none lost, none made twice. With the API server back first, the new term
/// meets Proton's outage, and none is left waiting out a backoff that grew through it; with
/// Proton back first, the new term starts with Proton answering.
async fn cut_off_from_both_in_a_throttled_burst(first: FirstBack) {
    const RATE: usize = 4;
    let (env, _dir, kubeconfig) = over_http().await;
    let gate = Gate::to(env.emulator.addr()).await;
    let mut args = leader_elected_args(&gate.url());
    args.extend(["--aws-rate-limit", "4", "--aws-burst", "4"].map(String::from));
    let controller = Controller::start(&kubeconfig, &args, None);
    let mut names = burst_under_way(&env, &controller).await;
    gate.shut();
    env.api.down();
    let cut_at = tokio::time::Instant::now();
    let before = served(&env.api, &names);
    assert!(
        before < BURST / 2,
        "the cut comes in the middle of the burst: {before} of {BURST} served"
    );
    the_leader_stops(&controller).await;
    let (first_at, second_at) = (
        cut_at + Duration::from_secs(10),
        cut_at + Duration::from_secs(18),
    );
    tokio::time::sleep_until(first_at).await;
    let apply_after = |env: &Env, names: &mut Vec<String>| {
        let name = "after".to_string();
        env.api.create(&name, &uid(names.len()), spec(&name));
        names.push(name);
    };
    match first {
        FirstBack::ApiServer => {
            env.api.up();
            apply_after(&env, &mut names);
            controller
                .until(
                    "the controller to lead again while Proton is still away",
                    LIMIT,
                    |c| c.logged("became leader") == 2,
                )
                .await;
        }
        FirstBack::Proton => gate.open(),
    }
    assert!(
        tokio::time::Instant::now() < second_at,
        "the first return is over before the second: {:?} after the cut",
        cut_at.elapsed()
    );
    tokio::time::sleep_until(second_at).await;
    match first {
        FirstBack::ApiServer => gate.open(),
        FirstBack::Proton => {
            env.api.up();
            apply_after(&env, &mut names);
        }
    }
    let back = tokio::time::Instant::now();
    let left = names.len() - served(&env.api, &names);
    // The rest at the budget's pace, and 5 s for the return to be seen and spare.
    let bound = Duration::from_secs_f64(left as f64 / RATE as f64 + 5.0);
    env.api
        .wait_until(
            &format!(
                "all {} resources to have their connections within {bound:?} of the later return ({first:?} came back first)",
                names.len()
            ),
            bound,
            |api| served(api, &names) == names.len(),
        )
        .await;
    let settled = back.elapsed();
    assert_eq!(
        controller.logged("became leader"),
        2,
        "led, lost the Lease in the cut, led again:\n{}",
        controller.log()
    );
    each_has_exactly_one_connection(&env, &names);
    println!(
        "cut off from both for 10 s ({first:?} back first, the other 8 s later) after {before} of {BURST} throttled Creates: the {left} left had their connections {:.2} s after the later return ({} Create calls in all)",
        settled.as_secs_f64(),
        env.calls("CreateEnvironmentAccountConnection"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_off_from_both_the_api_server_back_first_loses_no_connection_and_makes_none_twice() {
    cut_off_from_both_in_a_throttled_burst(FirstBack::ApiServer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_off_from_both_proton_back_first_loses_no_connection_and_makes_none_twice() {
    cut_off_from_both_in_a_throttled_burst(FirstBack::Proton).await;
}

/// Through an outage every watch fails every 2 s at most: each says so once at warn (the first
/// failure in a row; every tenth would too), the rest at debug; the return is said once. Nothing
/// is logged at error: kube's client, which logs every refused try at error, is quiet at the
/// default log level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_watch_warns_once_of_an_outage_and_the_return_is_said_once() {
    let (env, _dir, controller) = started(|url| run_args(url, &[])).await;
    let readyz = controller.readyz_addr(LIMIT).await;
    controller
        .until("/readyz ready before the outage", LIMIT, |_| ready(&readyz))
        .await;
    assert_eq!(controller.logged("the watch failed"), 0);

    env.api.down();
    // The client sends each call 6 times (5 retries, about 1.5 to 3.2 s) before the watch sees it
    // fail: a 13th refusal is the watch's third try, after two failures (two warnings, were each
    // failure warned of). Its tries are 2 s apart at most, so it fails fewer than 11 times
    // before the return.
    let plurals = [
        "environmentaccountconnections",
        "connectionacceptancepolicies",
        "accountmappings",
        "namespaces",
    ];
    env.api
        .wait_until(
            "each watch to fail twice (refused 13 times)",
            LIMIT,
            |api| plurals.iter().all(|plural| api.refused_to(plural) >= 13),
        )
        .await;
    env.api.up();
    controller
        .until("the return said", LIMIT, |c| {
            c.logged("the Kubernetes API server starts watches again") >= 1
        })
        .await;
    for kind in [
        "EnvironmentAccountConnection",
        "ConnectionAcceptancePolicy",
        "AccountMapping",
        "Namespace",
    ] {
        let warnings = controller
            .log()
            .lines()
            .filter(|l| l.contains("the watch failed") && l.contains(&format!("kind={kind} ")))
            .count();
        assert_eq!(
            warnings,
            1,
            "one warning for the watch of {kind}:\n{}",
            controller.log()
        );
    }
    assert_eq!(
        controller.logged(" ERROR "),
        0,
        "nothing at error:\n{}",
        controller.log()
    );
}

/// RBAC withdrawn from the resources' watch: every try is refused with 403, every 2 s at most.
/// That is one warning, with the likely fix (and one more every tenth try), not one a try:
/// kube's watcher, which warns of every refused try, is quiet at the default log level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_refused_again_and_again_is_one_warning() {
    let (env, _dir, controller) = started(|url| run_args(url, &[])).await;
    let readyz = controller.readyz_addr(LIMIT).await;
    controller
        .until("/readyz ready before RBAC is withdrawn", LIMIT, |_| {
            ready(&readyz)
        })
        .await;
    env.api
        .deny(Some(http::Method::GET), "/environmentaccountconnections");
    env.api.expire_watches();
    env.api
        .wait_until("the resources' watch refused 5 times", LIMIT, |api| {
            api.requests_to::<EnvironmentAccountConnection>()
                .iter()
                .filter(|r| r.code == 403)
                .count()
                >= 5
        })
        .await;
    let warned: Vec<String> = controller
        .log()
        .lines()
        .filter(|l| {
            l.contains(" WARN ")
                && (l.contains("kube_runtime") || l.contains("the watch failed"))
                && l.contains("kind=EnvironmentAccountConnection")
                || l.contains(" WARN kube_runtime")
        })
        .map(str::to_string)
        .collect();
    assert_eq!(
        warned.len(),
        1,
        "one warning of the refused watch: {warned:#?}"
    );
    assert!(
        warned[0].contains("the watch failed")
            && warned[0].contains("may the controller list and watch it?"),
        "it names the likely fix: {}",
        warned[0]
    );
}

/// Without leader election, an outage longer than `--watch-failure-timeout` makes `/readyz`
/// answer 503; when the API server answers again `/readyz` is ready within 5 s, though nothing
/// changed: a watch that resumes shows no event, but it started, and that is an answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_ready_again_after_a_long_outage_though_nothing_changed() {
    let (env, _dir, controller) =
        started(|url| run_args(url, &["--watch-failure-timeout", "5s"])).await;
    let readyz = controller.readyz_addr(LIMIT).await;
    controller
        .until("/readyz ready before the outage", LIMIT, |_| ready(&readyz))
        .await;

    env.api.down();
    controller
        .until(
            "/readyz not ready once the watches have failed for 5 s",
            LIMIT,
            |_| !ready(&readyz),
        )
        .await;
    env.api.up();
    controller
        .until(
            "/readyz ready within 5 s of the return, nothing having changed",
            Duration::from_secs(5),
            |_| ready(&readyz),
        )
        .await;
}

/// The controller's client tells its readiness when the API server answers again after leaving
/// its calls unanswered for a second or more: what ends the waits of the watches in their
/// backoff at once (`reconciler::watch`), instead of up to 2.5 s after the return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controllers_client_tells_the_api_servers_return_after_a_second_unanswered() {
    let (env, _dir, kubeconfig) = over_http().await;
    // The first request after the return must come within the authorizer's warm-up to be its
    // 403 (after it, the first request for the kind would be the 429 of its watch cache): 5 s,
    // not 0.5 s, so a loaded machine cannot make it late.
    env.api.warm_up_at_restart(WarmUp {
        authorizer: Duration::from_secs(5),
        ..WarmUp::KUBE_APISERVER
    });
    let readiness = eac_controller::http::Readiness::default();
    let client =
        runner::client_telling(kube_config_of(&kubeconfig).await, Some(readiness.clone())).unwrap();
    let api: kube::Api<EnvironmentAccountConnection> = kube::Api::namespaced(client, NS);
    let returns = readiness.api_answers().returns();
    api.list(&Default::default()).await.unwrap();

    env.api.stop();
    assert!(
        api.list(&Default::default()).await.is_err(),
        "left unanswered"
    );
    // The outage lasts what makes a return.
    tokio::time::sleep(eac_controller::api_answers::AWAY).await;
    assert!(
        api.list(&Default::default()).await.is_err(),
        "left unanswered"
    );
    assert!(!returns.has_changed().unwrap(), "no return while away");
    env.api.up();
    // The restarted server's first answer is a refusal (its warm-up): a return all the same.
    let first = api.list(&Default::default()).await;
    assert!(
        matches!(&first, Err(kube::Error::Api(s)) if s.code == 403),
        "the warm-up's 403: {first:?}"
    );
    assert!(returns.has_changed().unwrap(), "the return was told");
}

/// The controller's client decodes what the API server sends without managed fields (a write's
/// answer, a read, a list, a watch event), over HTTP; a plain client gets them, as the fake keeps
/// them as a real API server does.
#[tokio::test]
async fn the_controllers_client_decodes_objects_without_their_managed_fields() {
    use futures::StreamExt;
    use kube::api::{Patch, PatchParams, WatchEvent, WatchParams};
    let env = FakeApi::default();
    // Priced at nothing: it keeps managed fields, as when priced as kube-apiserver.
    env.set_cost(support::ApiCost {
        request: Duration::ZERO,
        write: Duration::ZERO,
        per_kib: Duration::ZERO,
        list_per_kib: Duration::ZERO,
        event: Duration::ZERO,
        event_per_kib: Duration::ZERO,
    });
    let dir = tempfile::tempdir().unwrap();
    let config = kube_config_of(&env.serve_http(dir.path()).await).await;
    env.create("prod", &uid(0), spec("prod"));
    let plain: kube::Api<EnvironmentAccountConnection> =
        kube::Api::namespaced(kube::Client::try_from(config.clone()).unwrap(), NS);
    let ours: kube::Api<EnvironmentAccountConnection> =
        kube::Api::namespaced(runner::client_from(config).unwrap(), NS);
    let managed =
        |o: &EnvironmentAccountConnection| o.metadata.managed_fields.as_ref().map_or(0, Vec::len);
    let status = |id: &str| {
        Patch::Apply(serde_json::json!({
            "apiVersion": "proton.eac.dev/v1alpha1",
            "kind": "EnvironmentAccountConnection",
            "status": {"id": id},
        }))
    };
    let apply = PatchParams::apply("eac-controller").force();
    let written = ours
        .patch_status("prod", &apply, &status("a"))
        .await
        .unwrap();
    assert_eq!(managed(&written), 0, "a write's answer");
    let mut whole = plain.get("prod").await.unwrap();
    assert!(managed(&whole) > 0, "the fake keeps them");
    let read = ours.get("prod").await.unwrap();
    assert_eq!(managed(&read), 0, "a read");
    whole.metadata.managed_fields = None;
    assert_eq!(
        serde_json::to_value(read).unwrap(),
        serde_json::to_value(whole).unwrap(),
        "nothing else cut"
    );
    let listed = ours.list(&Default::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(managed(&listed.items[0]), 0, "a list");
    let version = listed.metadata.resource_version.unwrap_or_default();
    let mut events = ours
        .watch(&WatchParams::default(), &version)
        .await
        .unwrap()
        .boxed();
    plain
        .patch_status("prod", &apply, &status("b"))
        .await
        .unwrap();
    let event = tokio::time::timeout(LIMIT, events.next())
        .await
        .expect("the watch event of the second write")
        .unwrap()
        .unwrap();
    match event {
        WatchEvent::Modified(o) => assert_eq!(managed(&o), 0, "a watch event"),
        other => panic!("{other:?}"),
    }
}

/// The Leases of the fake's namespace, over HTTP, through a client `build` makes as the
/// controller does (`runner::client_from` or `runner::lease_client_from`).
async fn leases(
    api: &FakeApi,
    build: fn(kube::Config) -> Result<kube::Client, kube::Error>,
) -> kube::Api<Lease> {
    let dir = tempfile::tempdir().unwrap();
    let config = kube_config_of(&api.serve_http(dir.path()).await).await;
    kube::Api::namespaced(build(config).unwrap(), NS)
}

#[tokio::test]
async fn a_call_the_api_server_refuses_with_503_is_retried_a_few_times_then_fails_within_seconds() {
    let env = FakeApi::default();
    let leases = leases(&env, runner::client_from).await;
    assert!(leases.get_opt("eac-controller").await.unwrap().is_none());

    env.down();
    let asked = tokio::time::Instant::now();
    // kube's own retry would wait up to 1,000 s between its 15 tries: this timeout would end it.
    let answer = tokio::time::timeout(Duration::from_secs(30), leases.get_opt("eac-controller"))
        .await
        .expect("the call ended within 30 s");
    let took = asked.elapsed();
    assert!(
        matches!(&answer, Err(kube::Error::Api(s)) if s.code == 503),
        "{answer:?}"
    );
    assert_eq!(env.refused(), 6, "the request and 5 retries");
    // Waits of 50 ms doubling, each plus up to twice as much again, at most 1 s each.
    assert!(
        (Duration::from_millis(1500)..Duration::from_millis(3200)).contains(&took),
        "failed after {took:?}"
    );
}

#[tokio::test]
async fn a_call_made_during_a_short_503_succeeds_within_a_second_of_the_api_servers_return() {
    let env = FakeApi::default();
    let leases = leases(&env, runner::client_from).await;
    env.down();
    let call = tokio::spawn(async move { leases.get_opt("eac-controller").await });
    env.wait_until(
        "two refused tries of the call",
        Duration::from_secs(10),
        |api| api.refused() >= 2,
    )
    .await;
    env.up();
    let back = tokio::time::Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the call ended within 10 s")
        .unwrap();
    assert!(matches!(answer, Ok(None)), "{answer:?}");
    assert!(
        back.elapsed() <= Duration::from_secs(1) + Duration::from_millis(200),
        "answered {:?} after the return",
        back.elapsed()
    );
}

#[tokio::test]
async fn a_lease_call_the_api_server_refuses_fails_at_once_for_the_elector_to_retry() {
    let env = FakeApi::default();
    let leases = leases(&env, |config| {
        runner::lease_client_from(config, Default::default())
    })
    .await;
    env.down();
    let answer = tokio::time::timeout(Duration::from_secs(30), leases.get_opt("eac-controller"))
        .await
        .expect("the call ended within 30 s");
    assert!(
        matches!(&answer, Err(kube::Error::Api(s)) if s.code == 503),
        "{answer:?}"
    );
    assert_eq!(env.refused(), 1, "no retry inside the call");
}

/// The Lease's holder, as the fake API server stores it.
fn lease_holder(api: &FakeApi) -> Option<String> {
    api.object(&format!(
        "/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/eac-controller"
    ))
    .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
}

/// Kubernetes stops the leader's pod (SIGTERM, a rolling update) while one of its Creates is
/// under way (Proton's network holds it). The leader finishes what is under way before it
/// gives up its Lease: it renews the Lease meanwhile, so no standby can start while it still
/// acts, and releases it once its controllers have stopped, so a standby takes over at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sigterm_the_leader_finishes_the_call_under_way_before_it_releases_its_lease() {
    let (env, _dir, kubeconfig) = over_http().await;
    let gate = Gate::to(env.emulator.addr()).await;
    let mut controller = Controller::start(&kubeconfig, &leader_elected_args(&gate.url()), None);
    env.api.create("before", &uid(0), spec("before"));
    env.api
        .wait_for("before", "a connection before the stop", LIMIT, has_id)
        .await;
    let holder = lease_holder(&env.api).expect("the leader holds the Lease");
    gate.hold();
    env.api.create("during", &uid(1), spec("during"));
    let token = uid(1);
    controller
        .until(
            "the gate to hold the resource's Create (its client token)",
            LIMIT,
            |_| gate.held().iter().any(|sent| sent.contains(&token)),
        )
        .await;

    controller.sigterm();
    controller
        .until("the log line that the shutdown was asked for", LIMIT, |c| {
            c.logged("shutdown requested") == 1
        })
        .await;
    // Two renewals' worth (2 s apart): the Lease stays held, the process runs.
    let asked = tokio::time::Instant::now();
    while asked.elapsed() < Duration::from_secs(3) {
        assert_eq!(
            lease_holder(&env.api).as_deref(),
            Some(holder.as_str()),
            "the Lease was given up while a Create was under way:\n{}",
            controller.log()
        );
        assert!(controller.running(), "{}", controller.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    gate.reset_held();
    let failed_at = tokio::time::Instant::now();
    let status = controller
        .exited(
            "the exit within 5 s of the held Create's failure",
            Duration::from_secs(5),
        )
        .await;
    assert!(status.success(), "{status:?}: {}", controller.log());
    assert_eq!(
        lease_holder(&env.api),
        None,
        "released once the controllers stopped:\n{}",
        controller.log()
    );
    assert_eq!(controller.logged("released the leader lease"), 1);
    println!(
        "SIGTERM with a Create under way: the Lease was held until that call failed, released and exited {:.2} s after it",
        failed_at.elapsed().as_secs_f64()
    );
}

/// A new leader that cannot start reconciling yet (the AccountMappings it needs first are
/// refused by RBAC) must not say it is ready: /readyz reports the leader's watch, not its Lease
/// renewals. Once the mappings can be read, it lists, watches and is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_is_not_ready_while_it_cannot_read_the_account_mappings_it_needs_first() {
    let (env, _dir, kubeconfig) = over_http().await;
    env.api.deny(Some(http::Method::GET), "/accountmappings");
    let mut args = leader_elected_args(&env.emulator.url());
    args.extend(["--account-mappings".into(), "true".into()]);
    let controller = Controller::start(&kubeconfig, &args, None);
    let readyz = controller.readyz_addr(LIMIT).await;
    controller
        .until("the leader lease to be acquired", LIMIT, |c| {
            c.logged("became leader") == 1
        })
        .await;
    // It renews its Lease every 2 s meanwhile: three renewals.
    let led = tokio::time::Instant::now();
    while led.elapsed() < Duration::from_secs(6) {
        assert!(
            !ready(&readyz),
            "ready while its AccountMappings are refused:\n{}",
            controller.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.api.allow_all();
    controller
        .until(
            "/readyz ready once the AccountMappings can be read",
            LIMIT,
            |_| ready(&readyz),
        )
        .await;
}

/// Kubernetes stops the leader's pod while its watch has never synced (the resources' list is
/// refused: a CRD missing, RBAC): kube-runtime never ends such a controller's graceful shutdown,
/// so the leader drops it after its grace (20 s) and still releases its Lease, well before the
/// pod's 30 s are up, so a standby takes over at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sigterm_a_leader_whose_watch_never_synced_still_releases_its_lease_in_time() {
    let (env, _dir, kubeconfig) = over_http().await;
    env.api
        .deny(Some(http::Method::GET), "/environmentaccountconnections");
    let mut controller =
        Controller::start(&kubeconfig, &leader_elected_args(&env.emulator.url()), None);
    controller
        .until("the leader lease to be acquired", LIMIT, |c| {
            c.logged("became leader") == 1
        })
        .await;
    assert!(lease_holder(&env.api).is_some());
    controller.sigterm();
    let asked = tokio::time::Instant::now();
    let status = controller
        .exited(
            "the exit within 25 s of SIGTERM (the grace, 20 s, and the release)",
            Duration::from_secs(25),
        )
        .await;
    assert!(status.success(), "{status:?}: {}", controller.log());
    assert_eq!(
        lease_holder(&env.api),
        None,
        "released:\n{}",
        controller.log()
    );
    println!(
        "SIGTERM to a leader whose watch never synced: exited, the Lease released, {:.1} s later",
        asked.elapsed().as_secs_f64()
    );
}
