//! The argument lists the end-to-end tests (`tests/e2e.rs`) start `eac-controller` and
//! `proton-emulator` with, checked without a cluster against the binaries' own parsers
//! (`eac_controller::cli`, `proton_emulator::cli`): each list parses (and passes
//! `RunArgs::check`), names no flag twice, and the parsed configuration holds what the list
//! says, the test's own flags first (a test asking for `--resync-period 10m` gets 10 minutes,
//! not the harness's 2 s).
//!
//! Why this covers *every* list the e2e tests use:
//! - the harness builds each list in one place (`ControllerOptions::args`,
//!   `EmulatorOptions::args`) from its defaults and a *preset*; the options carry no free-form
//!   flags, so a test can only choose a preset (and runtime values: URL, namespace, state file);
//! - the presets are declared by one macro that also makes their list `ALL`, which this file
//!   iterates: a new preset cannot be left out;
//! - the lists the refusal scenario gives the binary on purpose are `REFUSED_CONTROLLER_FLAGS`,
//!   checked here to be refused, with exit status 2 and a message naming the flag;
//! - README's demo test starts the controller with README's own command line and
//!   `DEMO_TEST_FLAGS` (`e2e_support::demo`), checked here to differ from README's configuration
//!   in those flags alone;
//! - and `tests/e2e.rs` itself is scanned: a flag literal (`"--...`) or a binary started by
//!   hand (`CARGO_BIN_EXE`, `Command::new`) fails this test, so nothing bypasses the presets.

// The harness calls aws-sdk-proton, whose every operation is deprecated.
#![allow(deprecated)]

// The whole harness, so the lists checked are built by the very code the e2e tests run; most
// of it (cluster, processes) is not used here.
#[allow(dead_code)]
mod e2e_support;

use std::path::Path;
use std::time::Duration;

use clap::ValueEnum;
use e2e_support::{
    ControllerOptions, ControllerPreset, EmulatorOptions, EmulatorPreset, Flags,
    REFUSED_CONTROLLER_FLAGS, parse_check_args, parse_controller_args, parse_emulator_args,
    refused_controller_args, repeated_flags, repo_path,
};
use eac_controller::config::RunArgs;
use proton_emulator::cli::Args as EmulatorArgs;

/// Stand-ins for the runtime values of an e2e run.
const PROTON_URL: &str = "http://127.0.0.1:45999";
const NAMESPACE: &str = "eac-e2e-0123456789";
const STATE_FILE: &str = "/tmp/eac-e2e-0123456789/proton-state.json";

/// Whether the parsed controller configuration holds `value` for `flag`; `Err` for a flag this
/// file cannot read back yet (add it: every flag a preset sets must be checked).
fn controller_holds(run: &RunArgs, flag: &str, value: Option<&str>) -> Result<bool, String> {
    let duration = |d: Duration| value.and_then(|v| humantime::parse_duration(v).ok()) == Some(d);
    let text = |s: String| value == Some(s.as_str());
    Ok(match flag {
        "--proton-endpoint" => run.proton_endpoint.as_deref() == value,
        "--namespace" => run.namespace.as_deref() == value,
        "--leader-election-namespace" => run.leader_election_namespace.as_deref() == value,
        "--region" => run.region.as_deref() == value,
        "--resync-period" => duration(run.resync_period),
        "--pending-poll" => duration(run.pending_poll),
        "--lease-duration" => duration(run.lease_duration),
        "--lease-renew-deadline" => duration(run.lease_renew_deadline),
        "--lease-name" => text(run.lease_name.clone()),
        "--leader-election" => value.is_none() && run.leader_election,
        "--metrics-addr" => text(run.metrics_addr.to_string()),
        "--log-format" => run
            .log_format
            .to_possible_value()
            .is_some_and(|v| Some(v.get_name()) == value),
        "--account-mappings" => text(run.account_mappings.to_string()),
        "--aws-rate-limit" => text(run.aws_rate_limit.to_string()),
        "--aws-burst" => text(run.aws_burst.to_string()),
        other => return Err(format!("{other}: no read-back in controller_holds")),
    })
}

/// The same for the emulator.
fn emulator_holds(args: &EmulatorArgs, flag: &str, value: Option<&str>) -> Result<bool, String> {
    let text = |s: String| value == Some(s.as_str());
    Ok(match flag {
        "--listen" => text(args.listen.to_string()),
        "--account-id" => text(args.account_id.clone()),
        "--account" => text(
            args.accounts
                .iter()
                .map(|m| format!("{}={}", m.access_key_id, m.account_id))
                .collect::<Vec<_>>()
                .join(","),
        ),
        "--state-file" => args.state_file.as_deref() == value.map(Path::new),
        "--idempotency" => text(args.idempotency.to_string()),
        "--list-lag-ms" => text(args.list_lag_ms.to_string()),
        other => return Err(format!("{other}: no read-back in emulator_holds")),
    })
}

/// The checks common to both binaries; the failures, one line each.
fn check_list<T>(
    what: &str,
    args: &[String],
    overrides: &Flags,
    all: &Flags,
    parsed: Result<T, e2e_support::Refusal>,
    holds: impl Fn(&T, &str, Option<&str>) -> Result<bool, String>,
) -> Vec<String> {
    let mut failures = Vec::new();
    let repeated = repeated_flags(args);
    if !repeated.is_empty() {
        failures.push(format!(
            "{what}: {repeated:?} given more than once in {args:?}"
        ));
    }
    for (flag, value) in overrides.iter() {
        if all.get(flag) != Some(value) {
            failures.push(format!(
                "{what}: the test's {flag} {value:?} is not what the list says ({:?})",
                all.get(flag)
            ));
        }
    }
    let parsed = match parsed {
        Ok(parsed) => parsed,
        Err(refusal) => {
            failures.push(format!("{what}: {args:?} is refused:\n{refusal}"));
            return failures;
        }
    };
    for (flag, value) in all.iter() {
        match holds(&parsed, flag, value) {
            Ok(true) => {}
            Ok(false) => failures.push(format!(
                "{what}: {flag} {value:?} is not what the parsed configuration holds"
            )),
            Err(e) => failures.push(format!("{what}: {e}")),
        }
    }
    failures
}

#[test]
fn every_controller_list_of_the_e2e_tests_parses_with_each_flag_once_and_the_tests_values() {
    let mut failures = Vec::new();
    for &preset in ControllerPreset::ALL {
        let options = ControllerOptions::preset(preset);
        let args = options.args(PROTON_URL, NAMESPACE);
        assert_eq!(args.first().map(String::as_str), Some("run"), "{args:?}");
        failures.extend(check_list(
            &format!("eac-controller {preset:?}"),
            &args,
            &options.overrides(),
            &options.flags(PROTON_URL, NAMESPACE),
            parse_controller_args(&args),
            controller_holds,
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_check_list_of_the_e2e_tests_parses_and_checks_what_run_would_get() {
    for &preset in ControllerPreset::ALL {
        let options = ControllerOptions::preset(preset);
        let args = options.check_args(PROTON_URL, NAMESPACE);
        let checked = parse_check_args(&args)
            .unwrap_or_else(|e| panic!("check {preset:?}: {args:?} is refused:\n{e}"));
        let run = parse_controller_args(&options.args(PROTON_URL, NAMESPACE))
            .unwrap_or_else(|e| panic!("run {preset:?} is refused:\n{e}"));
        assert_eq!(
            format!("{checked:?}"),
            format!("{run:?}"),
            "{preset:?}: check gets exactly the configuration run gets"
        );
    }
}

#[test]
fn every_emulator_list_of_the_e2e_tests_parses_with_each_flag_once_and_the_tests_values() {
    let mut failures = Vec::new();
    for &preset in EmulatorPreset::ALL {
        for options in [
            EmulatorOptions::preset(preset),
            EmulatorOptions::preset(preset).state_file(Path::new(STATE_FILE)),
        ] {
            let args = options.args();
            failures.extend(check_list(
                &format!("proton-emulator {preset:?} {:?}", options.state_file),
                &args,
                &options.overrides(),
                &options.flags(),
                parse_emulator_args(&args),
                emulator_holds,
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The four scenarios that never started (their flags followed the harness's instead of
/// replacing them, and clap refused the repeated flag) get the intervals they ask for.
#[test]
fn a_test_asking_for_other_intervals_gets_them_and_not_the_harness_defaults() {
    let minutes = |m: u64| Duration::from_secs(60 * m);
    let seconds = Duration::from_secs;
    for (preset, resync, pending_poll) in [
        (ControllerPreset::Harness, seconds(2), seconds(1)),
        (ControllerPreset::NoResync, minutes(10), seconds(1)),
        (ControllerPreset::PollEvery5s, minutes(10), seconds(5)),
        (ControllerPreset::ProductionPolls, minutes(10), seconds(30)),
        (ControllerPreset::Resync20s, seconds(20), seconds(1)),
        (ControllerPreset::Unlimited, minutes(10), seconds(30)),
    ] {
        let args = ControllerOptions::preset(preset).args(PROTON_URL, NAMESPACE);
        let run = parse_controller_args(&args)
            .unwrap_or_else(|e| panic!("{preset:?}: {args:?} is refused:\n{e}"));
        assert_eq!(
            (run.resync_period, run.pending_poll),
            (resync, pending_poll),
            "{preset:?}: {args:?}"
        );
    }
    let run = parse_controller_args(
        &ControllerOptions::preset(ControllerPreset::AccountMappings).args(PROTON_URL, NAMESPACE),
    )
    .unwrap();
    assert!(
        run.account_mappings,
        "--account-mappings=true replaces the harness's false"
    );
    let run = parse_controller_args(
        &ControllerOptions::preset(ControllerPreset::LeaderElection).args(PROTON_URL, NAMESPACE),
    )
    .unwrap();
    assert!(run.leader_election);
    assert_eq!(run.leader_election_namespace.as_deref(), Some(NAMESPACE));
}

#[test]
fn the_refusal_scenarios_lists_are_refused_with_status_2_naming_the_flag() {
    assert!(!REFUSED_CONTROLLER_FLAGS.is_empty());
    for &(flag, value) in REFUSED_CONTROLLER_FLAGS {
        let args = refused_controller_args(flag, value);
        match parse_controller_args(&args) {
            Ok(run) => panic!("{args:?} is accepted: {run:?}"),
            Err(refusal) => {
                assert_eq!(refusal.exit_code(), 2, "{args:?}: {refusal}");
                assert!(refusal.to_string().contains(flag), "{args:?}: {refusal}");
            }
        }
    }
}

/// The parsers the harness checks with are the binaries' own: a repeated flag is refused with
/// clap's message, as the binary refused it.
#[test]
fn a_repeated_flag_is_refused_by_the_check_as_by_the_binary() {
    let mut args = ControllerOptions::default().args(PROTON_URL, NAMESPACE);
    args.extend(["--resync-period".to_string(), "10m".to_string()]);
    assert_eq!(repeated_flags(&args), ["--resync-period"]);
    let refusal = parse_controller_args(&args).expect_err("a repeated flag");
    assert!(
        refusal.to_string().contains(
            "the argument '--resync-period <RESYNC_PERIOD>' cannot be used multiple times"
        ),
        "{refusal}"
    );
    let mut args = EmulatorOptions::default().args();
    args.push("--listen=127.0.0.1:1".into());
    assert!(parse_emulator_args(&args).is_err());
}

#[test]
fn flags_are_an_ordered_map_whose_later_values_replace_earlier_ones_in_place() {
    use clap::CommandFactory;
    let mut command = eac_controller::cli::Cli::command();
    command.build();
    let run = command.find_subcommand("run").unwrap();

    let flags = Flags::parse(
        &[
            "--region",
            "eu-west-1",
            "--resync-period=10m",
            "--leader-election",
            "--account-mappings",
            "true",
        ],
        run,
    );
    assert_eq!(
        flags.to_args(),
        [
            "--region=eu-west-1",
            "--resync-period=10m",
            "--leader-election",
            "--account-mappings=true"
        ]
    );
    let mut defaults = Flags::parse(&["--resync-period", "2s", "--pending-poll", "1s"], run);
    defaults.override_with(&flags);
    assert_eq!(
        defaults.to_args(),
        [
            "--resync-period=10m",
            "--pending-poll=1s",
            "--region=eu-west-1",
            "--leader-election",
            "--account-mappings=true"
        ]
    );
}

/// A preset naming a flag twice is a mistake in the preset, not a value to pick from.
#[test]
#[should_panic(expected = "--resync-period is given twice")]
fn a_flag_given_twice_in_one_list_is_refused() {
    use clap::CommandFactory;
    let mut command = eac_controller::cli::Cli::command();
    command.build();
    let run = command.find_subcommand("run").unwrap();
    Flags::parse(&["--resync-period", "2s", "--resync-period=10m"], run);
}

/// Nothing in `tests/e2e.rs` builds an argument list or starts a binary by hand: every list
/// comes from a preset (checked above).
#[test]
fn the_e2e_tests_write_no_flag_and_start_no_binary_outside_the_harness() {
    let path = repo_path("tests/e2e.rs");
    let source = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let offending: Vec<String> = source
        .lines()
        .enumerate()
        .filter(|(_, line)| {
            line.contains("\"--") || line.contains("CARGO_BIN_EXE") || line.contains("Command::new")
        })
        .map(|(i, line)| format!("tests/e2e.rs:{}: {}", i + 1, line.trim()))
        .collect();
    assert!(
        offending.is_empty(),
        "argument lists written outside the presets of tests/e2e_support (add a preset, or a \
         list like REFUSED_CONTROLLER_FLAGS, and check it here):\n{}",
        offending.join("\n")
    );
}

/// The management-side emulator maps the environment account's key the e2e tests sign with.
#[test]
fn the_management_side_emulator_maps_the_environment_key_to_the_environment_account() {
    let args = EmulatorOptions::preset(EmulatorPreset::ManagementAccount).args();
    let parsed = parse_emulator_args(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert_eq!(parsed.account_id, e2e_support::MANAGEMENT_ACCOUNT);
    assert_eq!(
        parsed
            .account_map()
            .unwrap()
            .get(e2e_support::ENVIRONMENT_ACCESS_KEY),
        Some(&e2e_support::ENVIRONMENT_ACCOUNT.to_string())
    );
}

/// The demo test starts the controller with README's step 2 as it stands, plus only
/// `DEMO_TEST_FLAGS` (a free port, JSON logs): the same configuration but for those two.
#[test]
fn the_demo_test_starts_the_controller_as_readme_says_but_for_a_free_port_and_json_logs() {
    use e2e_support::demo::{DEMO_TEST_FLAGS, demo_controller_args, readme_controller_args};
    let readme = readme_controller_args();
    assert_eq!(
        readme.first().map(String::as_str),
        Some("run"),
        "{readme:?}"
    );
    let readme_run = parse_controller_args(&readme)
        .unwrap_or_else(|e| panic!("README's {readme:?} is refused:\n{e}"));
    let args = demo_controller_args();
    assert!(repeated_flags(&args).is_empty(), "{args:?}");
    let mut demo_run =
        parse_controller_args(&args).unwrap_or_else(|e| panic!("{args:?} is refused:\n{e}"));
    let overrides = Flags::parse(DEMO_TEST_FLAGS, &e2e_support::controller_run_command());
    for (flag, value) in overrides.iter() {
        assert_eq!(
            controller_holds(&demo_run, flag, value),
            Ok(true),
            "{flag} {value:?}"
        );
    }
    assert!(demo_run.metrics_addr.ip().is_loopback() && demo_run.metrics_addr.port() == 0);
    demo_run.metrics_addr = readme_run.metrics_addr;
    demo_run.log_format = readme_run.log_format;
    assert_eq!(
        format!("{demo_run:?}"),
        format!("{readme_run:?}"),
        "the demo test changes nothing else of README's configuration"
    );
    // What README's command is about: the emulator inside, every namespace, both sides.
    assert_eq!(readme_run.proton_endpoint.as_deref(), Some("embedded"));
    assert_eq!(readme_run.namespace, None);
    assert!(readme_run.account_mappings && readme_run.acceptance_policies);
}

/// The demo test's guard removes what demo.yaml makes by deleting its namespaces and its
/// AccountMappings: every other document lives in one of those namespaces.
#[test]
fn everything_demo_yaml_makes_is_removed_by_deleting_its_namespaces_and_mappings() {
    use e2e_support::demo::{demo_documents, demo_names};
    let namespaces = demo_names("Namespace");
    assert!(!namespaces.is_empty());
    assert!(!demo_names("AccountMapping").is_empty());
    // The demo test follows the one connection and the one policy (`Demo::the_one`).
    for kind in ["EnvironmentAccountConnection", "ConnectionAcceptancePolicy"] {
        assert_eq!(demo_names(kind).len(), 1, "{kind}s in demo.yaml");
    }
    for document in demo_documents() {
        let kind = document["kind"].as_str().unwrap_or_default();
        if matches!(kind, "Namespace" | "AccountMapping") {
            continue;
        }
        let namespace = document["metadata"]["namespace"].as_str();
        assert!(
            namespace.is_some_and(|ns| namespaces.iter().any(|n| n == ns)),
            "{kind} {:?} is in none of the demo's namespaces {namespaces:?}: the guard would leave it",
            document["metadata"]["name"]
        );
    }
}
