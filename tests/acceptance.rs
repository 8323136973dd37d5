//! Management-side scenarios: ConnectionAcceptancePolicies reconciled for real against the
//! in-memory API server (tower-test) and the Proton emulator over HTTP on 127.0.0.1.
//!
//! Two identities, as in AWS: connection requests are created by an *environment account* SDK
//! client (access key `AKIDENV`, mapped by the emulator to account `444455556666`); the
//! controller lists, accepts and rejects them with its own credentials, as the *management
//! account* (the emulator's `--account-id`, `111122223333`). Only the management account may
//! Accept or Reject, as in Proton.

// Every operation of aws-sdk-proton is deprecated (the service closed to new customers).
#![allow(deprecated)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_proton::config::{BehaviorVersion, Credentials, Region};
use eac_controller::aws::budget::CallBudget;
use eac_controller::aws::proton::{Proton, ProtonSettings};
use eac_controller::connection::api::PAUSED_ANNOTATION;
use eac_controller::connection::decide::Settings;
use eac_controller::http::Readiness;
use eac_controller::metrics::Metrics;
use eac_controller::policy::api::{
    ConnectionAcceptancePolicy, ConnectionAcceptancePolicySpec as Spec,
    ConnectionAcceptancePolicyStatus as Status, UnmatchedRequests,
};
use eac_controller::policy::controller::{self, Context};
use kube::ResourceExt;
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::watcher;
use proton_emulator::{EmulatorConfig, RunningEmulator};
use support::{FakeApi, NS, eager_settings};

const MGMT: &str = "111122223333";
/// An environment account no request comes from.
const STRANGER: &str = "999900001111";
const REGION: &str = "us-east-1";
const ACCEPT: &str = "AcceptEnvironmentAccountConnection";
const REJECT: &str = "RejectEnvironmentAccountConnection";
const LIST: &str = "ListEnvironmentAccountConnections";
const GET: &str = "GetEnvironmentAccountConnection";
const POLICY: &str = "accept-prod";

/// The emulator as the management account's Proton, with the environment account's key mapped
/// to an account of its own.
fn emulator_config() -> EmulatorConfig {
    EmulatorConfig {
        account_id: MGMT.into(),
        region: REGION.into(),
        accounts: [("AKIDENV".to_string(), "444455556666".to_string())].into(),
        ..EmulatorConfig::default()
    }
}

/// A management-side controller, an API server and an environment account.
struct Mgmt {
    api: FakeApi,
    emulator: RunningEmulator,
    ctx: Arc<Context>,
    settings: Settings,
    /// The environment account's Proton client.
    env: aws_sdk_proton::Client,
    /// The policies the controller sees, refreshed from the API server before each reconcile
    /// (its watch cache).
    store: Store<ConnectionAcceptancePolicy>,
    writer: Mutex<Writer<ConnectionAcceptancePolicy>>,
    budget: CallBudget,
}

/// A controller [`Mgmt::run`] started.
struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Shuts it down, as on SIGTERM, and waits for it to stop.
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the controller stops on shutdown")
            .unwrap();
    }
}

impl Mgmt {
    async fn start() -> Mgmt {
        Mgmt::start_with(eager_settings()).await
    }

    /// Polls an hour apart: what happens sooner is the watch's doing.
    async fn start_polling_hourly() -> Mgmt {
        Mgmt::start_with(Settings {
            pending_poll: Duration::from_secs(3600),
            resync: Duration::from_secs(3600),
            ..eager_settings()
        })
        .await
    }

    async fn start_with(settings: Settings) -> Mgmt {
        Mgmt::start_full(settings, CallBudget::unlimited()).await
    }

    async fn start_full(settings: Settings, budget: CallBudget) -> Mgmt {
        let emulator = RunningEmulator::start(([127, 0, 0, 1], 0).into(), emulator_config())
            .await
            .unwrap();
        let env = aws_sdk_proton::Client::from_conf(
            aws_sdk_proton::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new(REGION))
                .endpoint_url(emulator.url())
                .credentials_provider(Credentials::new("AKIDENV", "secret", None, None, "test"))
                .build(),
        );
        let api = FakeApi::default();
        let (store, writer) = reflector::store();
        let ctx = context(&api, &emulator, &settings, &budget);
        ctx.use_store(Some(store.clone()));
        Mgmt {
            api,
            emulator,
            ctx,
            settings,
            env,
            store,
            writer: Mutex::new(writer),
            budget,
        }
    }

    /// The controller process dies and a new one starts: nothing kept in memory survives.
    fn restart(&mut self) {
        self.ctx = context(&self.api, &self.emulator, &self.settings, &self.budget);
        self.ctx.use_store(Some(self.store.clone()));
    }

    /// The environment account requests a connection for `environment`: (id, the environment
    /// account it came from).
    async fn request(&self, environment: &str) -> (String, String) {
        let out = self
            .env
            .create_environment_account_connection()
            .environment_name(environment)
            .management_account_id(MGMT)
            .client_token(format!("token-{environment}"))
            .send()
            .await
            .expect("the environment account requests a connection");
        let c = out.environment_account_connection().unwrap();
        (c.id().to_string(), c.environment_account_id().to_string())
    }

    fn state_of(&self, id: &str) -> String {
        self.emulator
            .state()
            .connections()
            .into_iter()
            .find(|c| c.id == id)
            .map(|c| c.status)
            .unwrap_or_else(|| "GONE".into())
    }

    fn apply(&self, namespace: &str, name: &str, spec: Spec) {
        let uid = format!("uid-{namespace}-{name}");
        self.api.create_object(
            namespace,
            name,
            &uid,
            ConnectionAcceptancePolicy::new(name, spec),
        );
    }

    fn get(&self, namespace: &str, name: &str) -> ConnectionAcceptancePolicy {
        self.api
            .get_object(namespace, name)
            .expect("the policy exists")
    }

    fn status(&self, namespace: &str, name: &str) -> Status {
        self.get(namespace, name).status.unwrap_or_default()
    }

    /// The watch cache catches up with the API server.
    fn sync_store(&self) {
        let mut writer = self.writer.lock().unwrap();
        writer.apply_watcher_event(&watcher::Event::Init);
        for policy in self.api.objects::<ConnectionAcceptancePolicy>() {
            writer.apply_watcher_event(&watcher::Event::InitApply(policy));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
    }

    /// One reconcile of the stored policy, as the controller would run it when it is due.
    async fn reconcile(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<kube::runtime::controller::Action, controller::Error> {
        self.sync_store();
        self.ctx.expire_checkpoints();
        let obj = self.get(namespace, name);
        controller::reconcile(Arc::new(obj), self.ctx.clone()).await
    }

    /// Reconciles as the controller would until a reconcile is not deferred by the call budget
    /// (after a ThrottlingException every caller pauses for a second), waiting each requeue out.
    async fn reconcile_through_deferrals(&self, namespace: &str, name: &str) {
        for _ in 0..10 {
            let before = self.emulator.state().calls().total();
            let action = self.reconcile(namespace, name).await.expect("reconciled");
            if self.emulator.state().calls().total() > before {
                return;
            }
            tokio::time::sleep(support::requeue_of(&action).min(Duration::from_secs(2))).await;
        }
        panic!("{namespace}/{name} was deferred ten times in a row");
    }

    fn calls(&self, op: &str) -> u64 {
        self.emulator.state().calls().count(op)
    }

    /// The management side's controller with its real watch loop, until [`Running::stop`].
    fn run(&self) -> Running {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(controller::run(
            self.ctx.clone(),
            None,
            2,
            async {
                let _ = stopped.await;
            },
            Readiness::default(),
        ));
        Running { stop, task }
    }

    /// Status writes to policies so far.
    fn status_writes(&self) -> usize {
        self.status_write_codes().len()
    }

    /// What each status write of a policy was answered, in order.
    fn status_write_codes(&self) -> Vec<u16> {
        self.api
            .requests_to::<ConnectionAcceptancePolicy>()
            .iter()
            .filter(|r| r.method == http::Method::PATCH && r.path.ends_with("/status"))
            .map(|r| r.code)
            .collect()
    }

    /// (reason, type) of the Events about policies, in order.
    fn events(&self) -> Vec<(String, String)> {
        self.api
            .events()
            .iter()
            .filter(|e| e["regarding"]["kind"] == "ConnectionAcceptancePolicy")
            .map(|e| {
                (
                    e["reason"].as_str().unwrap_or_default().to_string(),
                    e["type"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    fn metric(&self, decision: &str) -> String {
        let text = self.ctx.metrics.encode();
        let series = format!("eac_acceptance_decisions_total{{decision=\"{decision}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .unwrap_or("missing")
            .to_string()
    }
}

fn context(
    api: &FakeApi,
    emulator: &RunningEmulator,
    settings: &Settings,
    budget: &CallBudget,
) -> Arc<Context> {
    Arc::new(plain_context(api, emulator, settings, budget.clone()))
}

fn plain_context(
    api: &FakeApi,
    emulator: &RunningEmulator,
    settings: &Settings,
    budget: CallBudget,
) -> Context {
    let metrics = Metrics::new();
    // The controller's own credentials: not the environment account's key.
    let proton = Proton::with_static_credentials(
        ProtonSettings {
            default_region: REGION.into(),
            endpoint: Some(emulator.url()),
            sts_endpoint: None,
            timeout: Duration::from_secs(10),
        },
        budget,
        metrics.clone(),
    );
    Context::new(
        api.client(),
        proton,
        settings.clone(),
        metrics,
        kube::runtime::events::Reporter {
            controller: "eac-controller".into(),
            instance: Some("test".into()),
        },
    )
}

fn policy(accounts: &[&str], names: Option<&[&str]>, unmatched: UnmatchedRequests) -> Spec {
    Spec {
        management_account_id: MGMT.into(),
        region: None,
        environment_account_ids: accounts.iter().map(|a| a.to_string()).collect(),
        environment_names: names.map(|n| n.iter().map(|s| s.to_string()).collect()),
        unmatched,
    }
}

fn condition(status: &Status, type_: &str) -> (String, String) {
    let c = status
        .condition(type_)
        .unwrap_or_else(|| panic!("no {type_} in {status:#?}"));
    (c.status.clone(), c.reason.clone())
}

fn ids<T>(list: &[T], id: impl Fn(&T) -> &str) -> Vec<String> {
    let mut out: Vec<String> = list.iter().map(|x| id(x).to_string()).collect();
    out.sort();
    out
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test]
async fn a_policy_accepts_exactly_the_matching_requests_and_reports_the_rest() {
    let m = Mgmt::start().await;
    let (prod_eu, account) = m.request("prod-eu").await;
    let (prod_us, _) = m.request("prod-us").await;
    let (dev, _) = m.request("dev").await;
    m.apply(
        NS,
        POLICY,
        policy(
            &[&account, STRANGER],
            Some(&["prod-*"]),
            UnmatchedRequests::Leave,
        ),
    );

    m.reconcile(NS, POLICY).await.unwrap();

    assert_eq!(m.state_of(&prod_eu), "CONNECTED");
    assert_eq!(m.state_of(&prod_us), "CONNECTED");
    assert_eq!(m.state_of(&dev), "PENDING", "left for someone to decide");
    assert_eq!(m.calls(ACCEPT), 2);
    assert_eq!(m.calls(REJECT), 0);
    let status = m.status(NS, POLICY);
    assert_eq!(status.accepted_count, 2);
    assert_eq!(
        ids(&status.accepted, |d| &d.id),
        sorted(vec![prod_eu.clone(), prod_us.clone()])
    );
    assert!(
        status
            .accepted
            .iter()
            .all(|d| d.environment_account_id == account)
    );
    assert!(status.accepted.iter().all(|d| d.decided_at.ends_with('Z')));
    assert_eq!(status.left_pending_count, 1);
    assert_eq!(status.left_pending[0].id, dev);
    assert_eq!(status.left_pending[0].environment_name, "dev");
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.region.as_deref(), Some(REGION));
    assert_eq!(
        condition(&status, "Ready"),
        ("True".into(), "Applied".into())
    );
    assert_eq!(condition(&status, "Synced").0, "True");
    assert_eq!(condition(&status, "Stalled").0, "False");
    assert_eq!(
        m.events(),
        [
            ("Accepted".into(), "Normal".into()),
            ("Accepted".into(), "Normal".into()),
            ("LeftPending".into(), "Warning".into()),
        ]
    );
    assert_eq!(m.metric("accepted"), "2");
    assert_eq!(m.metric("rejected"), "0");
    assert_eq!(m.metric("left_pending"), "1");
}

#[tokio::test]
async fn unmatched_requests_are_rejected_only_when_the_policy_says_so() {
    let m = Mgmt::start().await;
    let (prod, account) = m.request("prod-eu").await;
    let (dev, _) = m.request("dev").await;
    m.apply(
        NS,
        POLICY,
        policy(&[&account], Some(&["prod-*"]), UnmatchedRequests::Reject),
    );

    m.reconcile(NS, POLICY).await.unwrap();

    assert_eq!(m.state_of(&prod), "CONNECTED");
    assert_eq!(m.state_of(&dev), "REJECTED");
    assert_eq!(m.calls(GET), 1, "re-read before rejecting");
    assert_eq!(m.calls(REJECT), 1);
    let status = m.status(NS, POLICY);
    assert_eq!(status.rejected_count, 1);
    assert_eq!(status.rejected[0].id, dev);
    assert_eq!(status.left_pending_count, 0);
    assert_eq!(
        m.events(),
        [
            ("Accepted".into(), "Normal".into()),
            ("Rejected".into(), "Normal".into())
        ]
    );
    assert_eq!(m.metric("rejected"), "1");
}

/// A budget of 5 calls a second with no burst (`--aws-calls-per-second 5 --aws-burst 1`): each
/// call after another comes back 200 ms later. A Reject is made right after re-reading the
/// request, and the re-read is made again whenever the Reject comes back. It used to take the
/// slot booked for the Reject each time, so the Reject was deferred again, and never went.
#[tokio::test]
async fn a_reject_gets_through_a_budget_with_room_for_one_call_at_a_time() {
    let budget = CallBudget::new(
        std::num::NonZeroU32::new(5).unwrap(),
        std::num::NonZeroU32::new(1).unwrap(),
        0.5,
    );
    let m = Mgmt::start_full(eager_settings(), budget).await;
    let (dev, account) = m.request("dev").await;
    m.apply(
        NS,
        POLICY,
        policy(&[&account], Some(&["prod-*"]), UnmatchedRequests::Reject),
    );

    let m = &m;
    support::reconcile_until(
        10,
        || m.state_of(&dev) != "PENDING",
        || {
            format!(
                "still PENDING: {} Lists, {} Gets, {} Rejects",
                m.calls(LIST),
                m.calls(GET),
                m.calls(REJECT)
            )
        },
        || async {
            let action = m.reconcile(NS, POLICY).await.unwrap();
            support::requeue_of(&action).min(Duration::from_secs(2))
        },
    )
    .await;
    assert_eq!(m.state_of(&dev), "REJECTED");
    assert_eq!(m.calls(REJECT), 1);
    assert!(
        m.calls(GET) <= 2,
        "the re-read at most once per attempt at the Reject: {} Gets",
        m.calls(GET)
    );
}

#[tokio::test]
async fn connections_no_longer_pending_are_never_touched() {
    let m = Mgmt::start().await;
    let (accepted, account) = m.request("prod-a").await;
    let (rejected, _) = m.request("prod-b").await;
    m.emulator.state().accept(&accepted).unwrap();
    m.emulator.state().reject(&rejected).unwrap();
    // A policy that would accept them, and one that would reject anything else.
    m.apply(
        NS,
        POLICY,
        policy(&[&account], None, UnmatchedRequests::Leave),
    );
    m.apply(
        NS,
        "reject-rest",
        policy(&[STRANGER], None, UnmatchedRequests::Reject),
    );
    m.emulator.state().reset_calls();

    m.reconcile(NS, POLICY).await.unwrap();
    m.reconcile(NS, "reject-rest").await.unwrap();

    assert_eq!(m.calls(ACCEPT) + m.calls(REJECT) + m.calls(GET), 0);
    assert_eq!(m.calls(LIST), 2);
    assert_eq!(m.state_of(&accepted), "CONNECTED");
    assert_eq!(m.state_of(&rejected), "REJECTED");
    assert_eq!(m.status(NS, POLICY).accepted_count, 0);
}

#[tokio::test]
async fn a_request_matched_by_any_policy_is_not_rejected_by_another() {
    let m = Mgmt::start().await;
    let (dev, account) = m.request("dev").await;
    let (stray, _) = m.request("stray").await;
    // The payments team's policy accepts dev, but is paused: it still protects dev from the
    // platform policy, which rejects what no policy matches.
    m.apply(
        "payments",
        "accept-dev",
        policy(&[&account], Some(&["dev"]), UnmatchedRequests::Leave),
    );
    m.api
        .edit_object::<ConnectionAcceptancePolicy>("payments", "accept-dev", |p| {
            p.annotations_mut()
                .insert(PAUSED_ANNOTATION.into(), "true".into());
        });
    m.apply(
        NS,
        POLICY,
        policy(&[&account], Some(&["prod-*"]), UnmatchedRequests::Reject),
    );

    m.reconcile(NS, POLICY).await.unwrap();

    assert_eq!(
        m.state_of(&dev),
        "PENDING",
        "matched by the payments policy"
    );
    assert_eq!(m.state_of(&stray), "REJECTED", "matched by no policy");
    // Resumed, the payments policy accepts it.
    m.api
        .edit_object::<ConnectionAcceptancePolicy>("payments", "accept-dev", |p| {
            p.annotations_mut().remove(PAUSED_ANNOTATION);
        });
    m.reconcile("payments", "accept-dev").await.unwrap();
    assert_eq!(m.state_of(&dev), "CONNECTED");
    assert_eq!(m.status("payments", "accept-dev").accepted[0].id, dev);
}

#[tokio::test]
async fn a_paused_policy_makes_no_call() {
    let m = Mgmt::start().await;
    let (prod, account) = m.request("prod-eu").await;
    m.apply(
        NS,
        POLICY,
        policy(&[&account], None, UnmatchedRequests::Reject),
    );
    m.api
        .edit_object::<ConnectionAcceptancePolicy>(NS, POLICY, |p| {
            p.annotations_mut()
                .insert(PAUSED_ANNOTATION.into(), "true".into());
        });
    m.emulator.state().reset_calls();

    m.reconcile(NS, POLICY).await.unwrap();

    assert_eq!(m.emulator.state().calls().total(), 0);
    assert_eq!(m.state_of(&prod), "PENDING");
    let status = m.status(NS, POLICY);
    assert_eq!(
        condition(&status, "Synced"),
        ("False".into(), "Paused".into())
    );
    assert_eq!(m.events(), [("Paused".into(), "Normal".into())]);
}

#[tokio::test]
async fn accepting_is_idempotent_across_restarts_and_an_idle_policy_writes_nothing() {
    let mut m = Mgmt::start().await;
    let (prod, account) = m.request("prod-eu").await;
    let (dev, _) = m.request("dev").await;
    m.apply(
        NS,
        POLICY,
        policy(&[&account], Some(&["prod-*"]), UnmatchedRequests::Leave),
    );
    m.reconcile(NS, POLICY).await.unwrap();
    assert_eq!(m.state_of(&prod), "CONNECTED");
    let written = m.status(NS, POLICY);
    let writes = m.status_writes();
    let events = m.events().len();
    assert_eq!(writes, 1);

    // Idle: one List per interval, no write, no Event.
    m.emulator.state().reset_calls();
    for _ in 0..3 {
        m.reconcile(NS, POLICY).await.unwrap();
    }
    let calls = m.emulator.state().calls();
    assert_eq!(calls.count(LIST), 3);
    assert_eq!(
        calls.count(ACCEPT) + calls.count(REJECT) + calls.count(GET),
        0
    );
    assert_eq!(m.status_writes(), writes, "an idle policy writes nothing");
    assert_eq!(
        m.events().len(),
        events,
        "dev is announced once, not at every poll"
    );

    // A new process: nothing remembered, still nothing to do and nothing to say.
    m.restart();
    m.reconcile(NS, POLICY).await.unwrap();
    assert_eq!(m.emulator.state().calls().count(ACCEPT), 0);
    assert_eq!(m.status_writes(), writes);
    assert_eq!(m.events().len(), events);
    assert_eq!(m.status(NS, POLICY), written);
    assert_eq!(m.state_of(&dev), "PENDING");
}

#[tokio::test]
async fn a_new_request_is_accepted_at_the_next_poll() {
    let m = Mgmt::start().await;
    let (_, account) = m.request("prod-1").await;
    m.apply(
        NS,
        POLICY,
        policy(&[&account], None, UnmatchedRequests::Leave),
    );
    m.reconcile(NS, POLICY).await.unwrap();
    let (second, _) = m.request("prod-2").await;
    m.reconcile(NS, POLICY).await.unwrap();
    assert_eq!(m.state_of(&second), "CONNECTED");
    let status = m.status(NS, POLICY);
    assert_eq!(status.accepted_count, 2);
    assert_eq!(status.accepted[0].id, second, "newest first");
}

#[tokio::test]
async fn a_throttled_accept_is_reported_and_retried() {
    let m = Mgmt::start().await;
    let (prod, account) = m.request("prod-eu").await;
    m.apply(
        NS,
        POLICY,
        policy(&[&account], None, UnmatchedRequests::Leave),
    );
    m.emulator
        .state()
        .fail_next(ACCEPT, "ThrottlingException", 1);

    m.reconcile(NS, POLICY).await.unwrap();

    assert_eq!(m.state_of(&prod), "PENDING");
    let status = m.status(NS, POLICY);
    assert_eq!(
        condition(&status, "Synced"),
        ("False".into(), "Throttled".into())
    );
    assert_eq!(
        condition(&status, "Stalled").0,
        "False",
        "retrying will fix it"
    );
    assert!(status.condition("Synced").unwrap().message.contains(ACCEPT));
    assert_eq!(m.events(), [("Throttled".into(), "Warning".into())]);

    m.reconcile_through_deferrals(NS, POLICY).await;
    assert_eq!(m.state_of(&prod), "CONNECTED");
    let status = m.status(NS, POLICY);
    assert_eq!(condition(&status, "Synced").0, "True");
    assert_eq!(status.accepted_count, 1);
}

#[tokio::test]
async fn a_denied_accept_holds_up_no_other_request_and_stalls_the_policy_with_the_aws_message() {
    let m = Mgmt::start().await;
    let (prod, account) = m.request("prod-eu").await;
    let (staging, _) = m.request("staging-eu").await;
    m.apply(
        NS,
        POLICY,
        policy(&[&account], None, UnmatchedRequests::Leave),
    );
    m.emulator
        .state()
        .fail_next(ACCEPT, "AccessDeniedException", 1);

    let action = m.reconcile(NS, POLICY).await.unwrap();

    // The first Accept was refused; the other request is accepted all the same.
    let states = [m.state_of(&prod), m.state_of(&staging)];
    let refused = match states.each_ref().map(String::as_str) {
        ["PENDING", "CONNECTED"] => &prod,
        ["CONNECTED", "PENDING"] => &staging,
        other => panic!("one accepted, one refused: {other:?}"),
    };
    let status = m.status(NS, POLICY);
    assert_eq!(status.accepted_count, 1);
    assert_eq!(
        condition(&status, "Stalled"),
        ("True".into(), "AccessDenied".into())
    );
    assert_eq!(
        condition(&status, "Ready"),
        ("False".into(), "AccessDenied".into())
    );
    let message = &status.condition("Ready").unwrap().message;
    assert!(
        message.contains(refused.as_str()) && message.contains("Access denied"),
        "names the request and shows AWS's answer: {message}"
    );
    assert_eq!(
        m.events(),
        [
            ("Accepted".into(), "Normal".into()),
            ("AccessDenied".into(), "Warning".into())
        ]
    );
    assert!(
        support::requeue_of(&action) <= Duration::from_secs(3),
        "the policy keeps polling for new requests: {action:?}"
    );

    // IAM is fixed elsewhere: the refused request waits for its own retry, 30 s on.
    m.reconcile(NS, POLICY).await.unwrap();
    assert_eq!(
        m.calls(ACCEPT),
        2,
        "no Accept before the refused request's retry"
    );
    assert_eq!(m.state_of(refused), "PENDING");
    assert_eq!(m.events().len(), 2, "announced once");
}

#[tokio::test]
async fn credentials_of_another_account_decide_nothing() {
    let m = Mgmt::start().await;
    let (prod, account) = m.request("prod-eu").await;
    m.apply(
        NS,
        POLICY,
        Spec {
            management_account_id: "121212121212".into(),
            ..policy(&[&account], None, UnmatchedRequests::Reject)
        },
    );

    m.reconcile(NS, POLICY).await.unwrap();

    assert_eq!(m.calls(LIST), 0);
    assert_eq!(m.state_of(&prod), "PENDING");
    let status = m.status(NS, POLICY);
    assert_eq!(
        condition(&status, "Stalled"),
        ("True".into(), "AccountMismatch".into())
    );
}

#[tokio::test]
async fn a_failed_status_write_loses_no_decision() {
    let m = Mgmt::start().await;
    let (prod, account) = m.request("prod-eu").await;
    m.apply(
        NS,
        POLICY,
        policy(&[&account], None, UnmatchedRequests::Leave),
    );
    m.api.fail_status_writes(1);

    assert!(m.reconcile(NS, POLICY).await.is_err(), "the write failed");
    assert_eq!(m.state_of(&prod), "CONNECTED");
    assert_eq!(m.events(), [("Accepted".into(), "Normal".into())]);

    m.reconcile(NS, POLICY).await.unwrap();
    let status = m.status(NS, POLICY);
    assert_eq!(status.accepted_count, 1, "recorded from the failed write");
    assert_eq!(status.accepted[0].id, prod);
    assert_eq!(m.calls(ACCEPT), 1);
}

/// RBAC without the policies' status subresource: every reconcile decides, then fails to write.
/// Each retry waits longer than the one before (as a connection's does), so the policy does not
/// List every second or two for as long as RBAC stays wrong.
#[tokio::test]
async fn a_persistent_403_on_a_policys_status_backs_off_exponentially() {
    let m = Mgmt::start().await;
    let (_prod, account) = m.request("prod-eu").await;
    m.apply(
        NS,
        POLICY,
        policy(&[&account], None, UnmatchedRequests::Leave),
    );
    m.api.deny(
        Some(http::Method::PATCH),
        &format!("/connectionacceptancepolicies/{POLICY}/status"),
    );
    let mut waits = Vec::new();
    for _ in 0..6 {
        let err = m
            .reconcile(NS, POLICY)
            .await
            .expect_err("the status write is forbidden");
        let action = controller::error_policy(Arc::new(m.get(NS, POLICY)), &err, m.ctx.clone());
        waits.push(support::requeue_of(&action));
    }
    for pair in waits.windows(2) {
        assert!(
            pair[1] >= pair[0].mul_f64(1.2),
            "each wait grows (jitter included): {waits:?}"
        );
    }
    assert_eq!(m.calls(ACCEPT), 1, "accepted once, remembered after");
    m.api.allow_all();
    m.reconcile(NS, POLICY)
        .await
        .expect("written once RBAC allows");
    assert_eq!(m.status(NS, POLICY).accepted_count, 1);
}

#[tokio::test]
async fn the_controller_reacts_to_a_new_policy_and_stops_on_shutdown() {
    // The real watch loop against the fake API server: a policy applied while it runs is
    // reconciled at once (the poll interval is an hour here).
    let m = Mgmt::start_polling_hourly().await;
    let (prod, account) = m.request("prod-eu").await;
    let running = m.run();
    m.apply(
        NS,
        POLICY,
        policy(&[&account], None, UnmatchedRequests::Leave),
    );
    m.api
        .wait_until(
            "the policy accepted the request",
            Duration::from_secs(10),
            |api| {
                api.get_object::<ConnectionAcceptancePolicy>(NS, POLICY)
                    .and_then(|p| p.status)
                    .is_some_and(|s| s.accepted_count == 1)
            },
        )
        .await;
    assert_eq!(m.state_of(&prod), "CONNECTED");
    running.stop().await;
    assert_eq!(m.status_writes(), 1, "its own status write woke nothing");
}

/// A policy deleted while its reconcile runs (here while its List is answered, 1 s late) is
/// forgotten for good: its reconcile decides nothing more, its status write finds it gone, and
/// nothing is kept of it (before, a failed reconcile made its entry up again to back off, and
/// held it until the next relist).
#[tokio::test]
async fn a_policy_deleted_while_it_is_reconciled_is_not_kept() {
    let m = Mgmt::start_polling_hourly().await;
    let (prod, account) = m.request("prod-eu").await;
    m.emulator.state().set_faults(proton_emulator::Faults {
        latency: Duration::from_secs(1),
        ..Default::default()
    });
    let running = m.run();
    m.apply(
        NS,
        POLICY,
        policy(&[&account], None, UnmatchedRequests::Leave),
    );
    support::poll_until(
        "the policy's List sent",
        Duration::from_secs(10),
        || m.calls("ListEnvironmentAccountConnections") as f64,
        1.0,
    )
    .await;
    assert_eq!(m.ctx.tracked_policies(), 1, "kept while it runs");
    m.api
        .delete_object::<ConnectionAcceptancePolicy>(NS, POLICY);
    // Reconciles ended, by result.
    let ended = || -> Vec<(String, f64)> {
        m.ctx
            .metrics
            .encode()
            .lines()
            .filter_map(|l| l.strip_prefix("eac_acceptance_reconcile_total{result=\""))
            .filter_map(|l| l.split_once("\"} "))
            .map(|(result, n)| (result.to_string(), n.parse().unwrap_or(0.0)))
            .collect()
    };
    support::poll_until(
        "the reconcile of the deleted policy ended",
        Duration::from_secs(10),
        || ended().iter().map(|(_, n)| n).sum(),
        1.0,
    )
    .await;
    assert_eq!(ended(), [("gone".to_string(), 1.0)]);
    assert_eq!(m.ctx.tracked_policies(), 0, "nothing kept of it");
    assert_eq!(
        m.status_write_codes(),
        [404],
        "its status write found it gone"
    );
    assert!(m.events().is_empty(), "no Event on what is gone");
    assert_eq!(
        m.state_of(&prod),
        "PENDING",
        "nothing accepted once it went"
    );
    running.stop().await;
}

/// A policy deleted and applied again under its name while a reconcile of the old one ran: the
/// old one's status write, guarded by its uid, is refused (422), and the reconcile ends as for a
/// policy gone (nothing kept of it, no error to back off on); the new one has nothing of it.
#[tokio::test]
async fn a_policy_applied_again_under_its_name_while_reconciled_gets_nothing_of_the_old_one() {
    let m = Mgmt::start().await;
    let (_, account) = m.request("prod-eu").await;
    let spec = policy(&[&account], None, UnmatchedRequests::Leave);
    m.apply(NS, POLICY, spec.clone());
    let old = m.get(NS, POLICY);
    m.api
        .delete_object::<ConnectionAcceptancePolicy>(NS, POLICY);
    m.api.create_object(
        NS,
        POLICY,
        "uid-successor",
        ConnectionAcceptancePolicy::new(POLICY, spec),
    );
    m.sync_store();
    m.ctx.expire_checkpoints();

    let ended = controller::reconcile(Arc::new(old), m.ctx.clone()).await;
    assert!(ended.is_ok(), "ended as for a policy gone: {ended:?}");
    assert_eq!(
        m.status_write_codes(),
        [422],
        "the old one's status write, refused"
    );
    let successor = m.get(NS, POLICY);
    assert_eq!(successor.uid().as_deref(), Some("uid-successor"));
    assert_eq!(successor.status, None, "nothing of the old one's");
    assert_eq!(m.ctx.tracked_policies(), 0, "nothing kept of the old one");
}

/// The account of the README's demo: the emulator's default, playing both sides.
const DEMO_ACCOUNT: &str = "444455556666";

/// The demo's policy, accepting `demo-*` requests from and to the demo account.
fn demo_policy(api: &FakeApi) {
    api.create_object(
        NS,
        "demo",
        "uid-demo",
        ConnectionAcceptancePolicy::new(
            "demo",
            Spec {
                management_account_id: DEMO_ACCOUNT.into(),
                ..policy(&[DEMO_ACCOUNT], Some(&["demo-*"]), UnmatchedRequests::Leave)
            },
        ),
    );
}

/// The demo's connection request.
fn demo_connection() -> eac_controller::connection::api::EnvironmentAccountConnectionSpec {
    eac_controller::connection::api::EnvironmentAccountConnectionSpec {
        environment_name: "demo-eu".into(),
        management_account_id: DEMO_ACCOUNT.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn both_sides_in_one_process_a_requested_connection_is_accepted_and_becomes_connected() {
    // README's demo: one controller (the emulator's default account plays both sides), an
    // EnvironmentAccountConnection and a policy that accepts it; no manual AWS call.
    let env = support::Env::start().await;
    env.api.create(
        "demo-eu",
        "0b9c6f1e-7d2a-4c55-9f0e-1a2b3c4d5e6f",
        demo_connection(),
    );
    env.reconcile("demo-eu").await.unwrap();
    let requested = env.api.get("demo-eu").unwrap().status.unwrap();
    assert_eq!(
        requested.status,
        Some(eac_controller::connection::api::ConnectionState::Pending)
    );

    let ctx = context(
        &env.api,
        &env.emulator,
        &eager_settings(),
        &CallBudget::unlimited(),
    );
    demo_policy(&env.api);
    let obj = env
        .api
        .get_object::<ConnectionAcceptancePolicy>(NS, "demo")
        .unwrap();
    controller::reconcile(Arc::new(obj), ctx).await.unwrap();

    env.resync("demo-eu").await.unwrap();
    let connected = env.api.get("demo-eu").unwrap();
    assert_eq!(
        connected.status.as_ref().unwrap().status,
        Some(eac_controller::connection::api::ConnectionState::Connected)
    );
    assert_eq!(support::condition(&connected, "Ready").unwrap().0, "True");
    let policy = env
        .api
        .get_object::<ConnectionAcceptancePolicy>(NS, "demo")
        .unwrap();
    assert_eq!(policy.status.unwrap().accepted[0].id, requested.id.unwrap());
}

/// Issue "seconds, not minutes", item 1: both sides in one process, with the production
/// intervals (--pending-poll 30s, --resync-period 10m) and the policy already settled before the
/// request exists (its next poll is far away). The connection's Create nudges the policy that
/// decides for its management account, the policy's Accept nudges the connection: Ready within
/// 5 s, not after the next poll.
#[tokio::test]
async fn both_sides_in_one_process_are_ready_within_5_s_without_waiting_for_a_poll() {
    use eac_controller::reconciler::nudge::Nudge;
    let production = Settings {
        resync: Duration::from_secs(600),
        pending_poll: Duration::from_secs(30),
        ..eager_settings()
    };
    let mut env = support::Env::start_with(production.clone(), CallBudget::unlimited()).await;
    // A write shows in the watches 50 ms after it is answered, as on a real API server (5 to
    // 20 ms): the policy here accepts the request before the resource's status, naming the
    // connection, is in the watch cache, and the connection's reconcile is still under way.
    env.api.delay_watch_events(Duration::from_millis(50));
    let (connections, policies) = (Nudge::default(), Nudge::default());
    env.restart_with_nudges(connections.clone(), policies.clone());
    let policy_ctx = Arc::new(
        plain_context(
            &env.api,
            &env.emulator,
            &production,
            CallBudget::unlimited(),
        )
        .with_nudges(connections, policies),
    );

    // The policy first, settled long before anything is requested.
    demo_policy(&env.api);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let stopped = futures::FutureExt::shared(async move {
        let _ = stopped.await;
    });
    let connections_run = tokio::spawn(eac_controller::connection::controller::run(
        env.ctx.clone(),
        eac_controller::connection::controller::WatchScope::default(),
        4,
        stopped.clone(),
        Readiness::default(),
    ));
    let policies_run = tokio::spawn(controller::run(
        policy_ctx.clone(),
        None,
        4,
        stopped,
        Readiness::default(),
    ));
    env.api
        .wait_until("the policy settled", Duration::from_secs(10), |api| {
            api.get_object::<ConnectionAcceptancePolicy>(NS, "demo")
                .and_then(|p| p.status)
                .is_some_and(|s| s.observed_generation == Some(1))
        })
        .await;
    let lists = env.calls(LIST);

    let applied = tokio::time::Instant::now();
    env.api.create(
        "demo-eu",
        "0b9c6f1e-7d2a-4c55-9f0e-1a2b3c4d5e6f",
        demo_connection(),
    );
    env.api
        .wait_for(
            "demo-eu",
            // Within 1.5 s: without the nudges it would take the policy's next List (2 s after
            // it settled, at best) and the connection's next poll (2 s after its Create); the
            // half second over a second leaves room for a loaded machine.
            "Ready within 1.5 s of the apply (the aim is 5 s)",
            Duration::from_millis(1500),
            |o| o.is_some_and(|o| support::condition(o, "Ready").is_some_and(|c| c.0 == "True")),
        )
        .await;
    let took = applied.elapsed();
    println!(
        "both sides in one process: Ready {:.2} s after the apply ({} List(s) after the request)",
        took.as_secs_f64(),
        env.calls(LIST) - lists
    );
    assert_eq!(env.calls(ACCEPT), 1);
    assert_eq!(
        env.calls(LIST) - lists,
        1,
        "one List, asked by the request: not a poll loop"
    );
    let _ = stop.send(());
    connections_run.await.unwrap();
    policies_run.await.unwrap();
}
