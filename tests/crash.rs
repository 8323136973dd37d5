//! Exactly once, under crashes: reconciles are killed at random moments (the future is dropped
//! mid-flight, as kill -9 would stop the process: a request may or may not have reached the API
//! server or Proton), the controller restarts with nothing in memory, the spec is edited between
//! crashes, and Proton refuses a reused client token with other parameters (strict idempotency)
//! and lists new connections late (List lag). Afterwards every resource has exactly one
//! connection, and after deletion none is left.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use eac_controller::aws::budget::CallBudget;
use eac_controller::connection::api::TAG_UID;
use eac_controller::connection::decide::Settings;
use proton_emulator::{EmulatorConfig, Faults, Idempotency};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::{Env, eager_settings, spec};

const RESOURCES: usize = 16;
const LIVES: usize = 25;
/// List lag in Proton's (real) time: shorter than the settle window the controller assumes.
const LAG: Duration = Duration::from_secs(2);

fn name(i: usize) -> String {
    format!("env-{i:02}")
}

fn uid(i: usize) -> String {
    format!("7e57c4a5-0000-4000-8000-{i:012}")
}

/// One life of the controller: a few reconciles, each killed after a random delay.
async fn life(env: &Env, rng: &mut StdRng, deleting: bool) {
    for _ in 0..RESOURCES {
        let i = rng.random_range(0..RESOURCES);
        if env.api.get(&name(i)).is_none() {
            continue;
        }
        let budget = Duration::from_micros(rng.random_range(0..12_000));
        let _ = tokio::time::timeout(budget, env.resync(&name(i))).await;
        let gone_or_going = env
            .api
            .get(&name(i))
            .is_none_or(|o| o.metadata.deletion_timestamp.is_some());
        if deleting || gone_or_going {
            continue;
        }
        // Sometimes the spec changes between crashes.
        if rng.random_bool(0.15) {
            let role = format!("arn:aws:iam::444455556666:role/r{}", rng.random_range(0..3));
            let tier = format!("t{}", rng.random_range(0..3));
            env.api.edit(&name(i), |o| {
                o.spec.role_arn = Some(role);
                o.spec.tags.insert("tier".into(), tier);
            });
        }
    }
}

/// Reconciles every resource until `done` holds for all: each round resyncs those it does not
/// hold for, then lets 50 ms pass (List lag and the settle windows run in real time). Bounded in
/// time, not in rounds, so that how fast the machine runs rounds does not decide the verdict:
/// the longest the controller may wait on its own is twice the settle window (a deleted
/// resource's Create may still appear), so a minute means stuck.
async fn converge(env: &Env, what: &str, done: impl Fn(&Env, usize) -> bool) {
    const BOUND: Duration = Duration::from_secs(60);
    let started = tokio::time::Instant::now();
    let mut rounds = 0;
    loop {
        let pending: Vec<usize> = (0..RESOURCES).filter(|i| !done(env, *i)).collect();
        if pending.is_empty() {
            println!(
                "{what}: converged in {rounds} rounds, {:.1} s",
                started.elapsed().as_secs_f64()
            );
            return;
        }
        if started.elapsed() > BOUND {
            let names: Vec<String> = pending.into_iter().map(name).collect();
            panic!(
                "{what}: did not converge within {BOUND:?} ({rounds} rounds):\n{}",
                left_undone(env, &names, |_| false)
            );
        }
        for i in pending {
            if env.api.get(&name(i)).is_some() {
                let _ = env.resync(&name(i)).await;
            }
        }
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A controller's world at its worst: Proton refuses a reused client token with other parameters
/// (strict idempotency), lists new connections late, and acts on a request before it answers (a
/// process killed while it waits has changed Proton without knowing it); and the random choices
/// of the scenario, from EAC_CRASH_SEED when set (to repeat a run).
async fn chaos(settings: Settings, budget: CallBudget) -> (Env, u64, StdRng) {
    support::log_from_env();
    let emulator = EmulatorConfig {
        idempotency: Idempotency::Strict,
        list_lag: LAG,
        ..EmulatorConfig::default()
    };
    let env = Env::start_full(settings, budget, emulator).await;
    env.proton().set_faults(Faults {
        latency: Duration::from_millis(2),
        ..Faults::default()
    });
    let seed: u64 = std::env::var("EAC_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (EAC_CRASH_SEED={seed} repeats the choices)");
    (env, seed, StdRng::seed_from_u64(seed))
}

fn owners(env: &Env) -> BTreeMap<String, usize> {
    let mut owners = BTreeMap::new();
    for c in env.proton().connections() {
        let owner = c
            .tags
            .get(TAG_UID)
            .cloned()
            .unwrap_or_else(|| "(untagged)".into());
        *owners.entry(owner).or_default() += 1;
    }
    owners
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_random_moments_with_strict_idempotency_list_lag_and_spec_edits_every_resource_has_exactly_one_connection()
 {
    let settings = Settings {
        create_settle: Duration::from_secs(3),
        ..eager_settings()
    };
    let (mut env, seed, mut rng) = chaos(settings, CallBudget::unlimited()).await;
    for i in 0..RESOURCES {
        env.api.create(&name(i), &uid(i), spec(&name(i)));
    }

    // A quarter of the resources are deleted half-way, while their Creates may be in flight and
    // not listed yet.
    let doomed = |i: usize| i.is_multiple_of(4);
    for life_no in 0..LIVES {
        if life_no == LIVES / 2 {
            for i in (0..RESOURCES).filter(|i| doomed(*i)) {
                env.api.delete(&name(i));
            }
        }
        life(&env, &mut rng, false).await;
        env.restart();
    }
    converge(&env, "creation", |env, i| {
        if doomed(i) {
            return env.api.get(&name(i)).is_none();
        }
        env.api
            .get(&name(i))
            .is_some_and(|o| synced_at_its_generation(&o))
    })
    .await;

    let owners_now = owners(&env);
    for i in 0..RESOURCES {
        let expected = if doomed(i) { None } else { Some(1) };
        assert_eq!(
            owners_now.get(&uid(i)).copied(),
            expected,
            "{}: exactly one connection, none once deleted (seed {seed}); owners {owners_now:?}",
            name(i)
        );
    }
    let live = (0..RESOURCES).filter(|i| !doomed(*i)).count();
    assert_eq!(env.proton().connections().len(), live, "seed {seed}");
    for i in (0..RESOURCES).filter(|i| !doomed(*i)) {
        let status = env.api.get(&name(i)).unwrap().status.unwrap();
        let c = env
            .proton()
            .connections()
            .into_iter()
            .find(|c| c.tags.get(TAG_UID) == Some(&uid(i)))
            .unwrap();
        assert_eq!(status.id.as_deref(), Some(c.id.as_str()), "seed {seed}");
        let spec = env.api.get(&name(i)).unwrap().spec;
        assert_eq!(
            c.role_arn, spec.role_arn,
            "converged to the last spec (seed {seed})"
        );
        assert_eq!(c.tags.get("tier"), spec.tags.get("tier"), "seed {seed}");
    }

    let calls = env.proton().calls();
    println!(
        "created {live} connections with {} Create calls, {} Lists, {} Updates",
        calls.count("CreateEnvironmentAccountConnection"),
        calls.count("ListEnvironmentAccountConnections"),
        calls.count("UpdateEnvironmentAccountConnection"),
    );

    // Delete everything, crashing again.
    for i in (0..RESOURCES).filter(|i| !doomed(*i)) {
        env.api.delete(&name(i));
    }
    for _ in 0..LIVES / 2 {
        life(&env, &mut rng, true).await;
        env.restart();
    }
    converge(&env, "deletion", |env, i| env.api.get(&name(i)).is_none()).await;
    assert!(
        env.proton().connections().is_empty(),
        "no orphan after deletion (seed {seed}): {:?}",
        owners(&env)
    );
}

/// The budget of a fresh process (`--aws-rate-limit 5 --aws-burst 5`): smaller than what
/// twenty resources want at start-up.
const RATE: u32 = 5;
const BURST: u32 = 5;

fn small_budget() -> CallBudget {
    CallBudget::new(
        std::num::NonZeroU32::new(RATE).unwrap(),
        std::num::NonZeroU32::new(BURST).unwrap(),
        0.5,
    )
}

/// Each resource that `done` does not hold for, as the API server and Proton have it: what a
/// timed-out wait shows.
fn left_undone(
    env: &Env,
    names: &[String],
    done: impl Fn(&eac_controller::connection::api::EnvironmentAccountConnection) -> bool,
) -> String {
    let connections = env.proton().connections();
    let mut out = String::new();
    for name in names {
        let Some(o) = env.api.get(name) else {
            continue;
        };
        if done(&o) {
            continue;
        }
        let uid = o.metadata.uid.clone().unwrap_or_default();
        let in_proton: Vec<String> = connections
            .iter()
            .filter(|c| c.tags.get(TAG_UID) == Some(&uid))
            .map(|c| format!("{} {:?} role {:?}", c.id, c.status, c.role_arn))
            .collect();
        out.push_str(&format!(
            "{name}: generation {:?}, finalizers {:?}, deleting {}, status {:#?}; in Proton {in_proton:?}\n",
            o.metadata.generation,
            o.metadata.finalizers,
            o.metadata.deletion_timestamp.is_some(),
            o.status,
        ));
    }
    out
}

fn synced_at_its_generation(
    o: &eac_controller::connection::api::EnvironmentAccountConnection,
) -> bool {
    let generation = o.metadata.generation;
    o.status.as_ref().is_some_and(|s| {
        s.id.is_some()
            && s.conditions.iter().any(|c| {
                c.type_ == "Synced" && c.status == "True" && c.observed_generation == generation
            })
    })
}

/// Two pressures at once, as an incident brings them: the controller is killed again and again
/// while it starts (before, during and after its first Creates), under a call budget smaller
/// than the start-up wants, with strict idempotency, List lag and spec edits in between. The
/// last controller must settle every resource within the time the budget needs for its calls,
/// with exactly one connection each, and delete them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controllers_killed_at_start_up_under_a_small_budget_leave_every_resource_settled() {
    const N: usize = 20;
    const KILLS: usize = 5;
    // The most AWS calls one resource can need once its controller lives: a replayed Create,
    // a search for its connection, an Update, a Tag, an Untag, a Get and a ListTags, plus one
    // poll. STS is outside the budget.
    const CALLS_PER_RESOURCE: u32 = 8;
    let settings = Settings {
        resync: Duration::from_secs(2),
        pending_poll: Duration::from_secs(1),
        create_settle: Duration::from_secs(3),
        ..eager_settings()
    };
    let (mut env, seed, mut rng) = chaos(settings, small_budget()).await;
    let names: Vec<String> = (0..N).map(name).collect();
    for (i, name) in names.iter().enumerate() {
        env.api.create(name, &uid(i), spec(name));
    }

    for _ in 0..KILLS {
        env.restart_with_budget(small_budget());
        let running = env.run_controller(4);
        let lived = Duration::from_millis(rng.random_range(20..1_500));
        tokio::time::sleep(lived).await;
        running.abort();
        let _ = running.await;
        for name in &names {
            if rng.random_bool(0.1) {
                let role = format!("arn:aws:iam::444455556666:role/r{}", rng.random_range(0..3));
                env.api.edit(name, |o| o.spec.role_arn = Some(role));
            }
        }
    }
    let half_written = names
        .iter()
        .filter(|n| {
            env.api
                .get(n)
                .is_some_and(|o| !synced_at_its_generation(&o))
        })
        .count();

    env.restart_with_budget(small_budget());
    let started = tokio::time::Instant::now();
    let running = env.run_controller(4);
    let needed = f64::from(CALLS_PER_RESOURCE * N as u32 - BURST) / f64::from(RATE);
    // Plus the List lag a replayed Create may wait out, and the deferral timers.
    let bound = Duration::from_secs_f64(needed) + LAG + Duration::from_secs(5);
    env.api
        .wait_until_explained(
            &format!("all {N} resources Synced at their generation within {bound:?} (seed {seed})"),
            bound,
            |api| {
                names
                    .iter()
                    .all(|n| api.get(n).is_some_and(|o| synced_at_its_generation(&o)))
            },
            |_| left_undone(&env, &names, synced_at_its_generation),
        )
        .await;
    println!(
        "{half_written} of {N} unsettled after {KILLS} kills; all settled {:.1} s after the last start (bound {:.1} s, budget {RATE}/s burst {BURST})",
        started.elapsed().as_secs_f64(),
        bound.as_secs_f64()
    );
    let owners_now = owners(&env);
    for (i, name) in names.iter().enumerate() {
        assert_eq!(
            owners_now.get(&uid(i)).copied(),
            Some(1),
            "{name}: exactly one connection (seed {seed}); owners {owners_now:?}"
        );
        let status = env.api.get(name).unwrap().status.unwrap();
        let c = env
            .proton()
            .connections()
            .into_iter()
            .find(|c| c.tags.get(TAG_UID) == Some(&uid(i)))
            .unwrap();
        assert_eq!(status.id.as_deref(), Some(c.id.as_str()), "seed {seed}");
    }
    assert_eq!(env.proton().connections().len(), N, "seed {seed}");

    for name in &names {
        env.api.delete(name);
    }
    env.api
        .wait_until_explained(
            &format!("all {N} resources deleted within {bound:?} (seed {seed})"),
            bound,
            |api| names.iter().all(|n| api.get(n).is_none()),
            |_| left_undone(&env, &names, |_| false),
        )
        .await;
    running.abort();
    let _ = running.await;
    assert!(
        env.proton().connections().is_empty(),
        "no orphan after deletion (seed {seed}): {:?}",
        owners(&env)
    );
}
