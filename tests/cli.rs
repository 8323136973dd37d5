//! The binaries as a user runs them: `crd`, and `run`'s refusals that must come before anything
//! touches a cluster or AWS.

use std::process::Command;

fn controller() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_eac-controller"));
    for var in [
        "EAC_PROTON_ENDPOINT",
        "AWS_ENDPOINT_URL_PROTON",
        "KUBECONFIG",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

#[test]
fn crd_prints_the_generated_definitions_all_or_one() {
    let out = controller()
        .args(["crd", "environmentaccountconnections"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let eac = String::from_utf8(out.stdout).unwrap();
    assert_eq!(eac, eac_controller::connection::api::crd_yaml().unwrap());
    assert!(eac.contains("name: environmentaccountconnections.proton.eac.dev"));

    let out = controller()
        .args(["crd", "accountmappings"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let mapping = String::from_utf8(out.stdout).unwrap();
    assert_eq!(mapping, eac_controller::mapping::api::crd_yaml().unwrap());
    assert!(mapping.contains("scope: Cluster"), "{mapping}");

    let out = controller().arg("crd").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!(
            "{eac}---\n{mapping}---\n{}",
            eac_controller::policy::api::crd_yaml().unwrap()
        ),
        "every CRD, as one stream `kubectl apply -f -` takes"
    );

    let out = controller().args(["crd", "widgets"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("accountmappings"));
}

#[test]
fn run_without_a_cluster_exits_at_once_naming_the_kubeconfig_it_tried() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-kubeconfig");
    let out = controller()
        .args([
            "run",
            "--proton-endpoint",
            "http://127.0.0.1:9",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .env("KUBECONFIG", &missing)
        .env("HOME", dir.path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
    assert!(stderr.contains("Kubernetes"), "{stderr}");
}

#[test]
fn run_without_a_reachable_api_server_names_the_server_and_the_kubeconfig() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on: bind, note it, release it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kubeconfig = dir.path().join("config");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:{port}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user:\n    token: t\n"
        ),
    )
    .unwrap();
    let out = controller()
        .args([
            "run",
            "--proton-endpoint",
            "http://127.0.0.1:9",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .env("KUBECONFIG", &kubeconfig)
        // Outside a pod: in one, `run` waits for the API server instead (tests/outage.rs).
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot reach the Kubernetes API server"),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(
        stderr.contains(&kubeconfig.display().to_string()),
        "{stderr}"
    );
}

#[test]
fn a_malformed_endpoint_is_refused_before_anything_starts() {
    let out = controller()
        .args(["run", "--proton-endpoint", "localhost:4599"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid Proton endpoint \"localhost:4599\""),
        "{stderr}"
    );

    let out = controller()
        .arg("run")
        .env("AWS_ENDPOINT_URL_PROTON", "not a url")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("AWS_ENDPOINT_URL_PROTON"));
}

#[test]
fn embedded_mode_cannot_come_from_the_environment() {
    let out = controller()
        .arg("run")
        .env("EAC_PROTON_ENDPOINT", "embedded")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("must be given on the command line"),
        "{stderr}"
    );
}

#[test]
fn bad_durations_are_refused_with_the_flag_name() {
    let out = controller()
        .args(["run", "--resync-period", "ten minutes"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--resync-period"));
}

#[test]
fn nonsense_flag_values_are_refused_at_start_naming_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (&["--resync-period", "0s"], "--resync-period"),
        (&["--resync-period", "3y"], "--resync-period"),
        (&["--pending-poll", "0s"], "--pending-poll"),
        (&["--aws-timeout", "0s"], "--aws-timeout"),
        (&["--aws-list-lag", "1h"], "--aws-list-lag"),
        (&["--aws-rate-limit", "0"], "--aws-rate-limit"),
        (&["--aws-burst", "1000000"], "--aws-burst"),
        (&["--concurrency", "0"], "--concurrency"),
        (&["--lease-duration", "1s"], "--lease-duration"),
        (&["--lease-renew-deadline", "0s"], "--lease-renew-deadline"),
        (
            &["--watch-failure-timeout", "0s"],
            "--watch-failure-timeout",
        ),
        (&["--allowed-regions", "moon-base"], "--allowed-regions"),
        (&["--adoption", "sometimes"], "--adoption"),
        // Relations between flags.
        (
            &["--pending-poll", "20m", "--resync-period", "10m"],
            "--pending-poll",
        ),
        (
            &["--lease-renew-deadline", "15s", "--lease-duration", "15s"],
            "--lease-renew-deadline",
        ),
        (&["--sts-endpoint", "sts.local"], "--sts-endpoint"),
        (
            &[
                "--unmapped-namespaces",
                "refuse",
                "--account-mappings",
                "false",
            ],
            "--unmapped-namespaces",
        ),
        (
            &["--unmapped-namespaces", "sometimes"],
            "--unmapped-namespaces",
        ),
    ];
    for (args, flag) in cases {
        let out = controller()
            .arg("run")
            .args(*args)
            .env("KUBECONFIG", "/nonexistent")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?} must name {flag}: {stderr}");
        assert!(
            !stderr.contains("Kubernetes"),
            "{args:?} is refused before anything connects: {stderr}"
        );
    }
}

#[test]
fn the_same_bounds_apply_to_values_from_the_environment() {
    let out = controller()
        .arg("run")
        .env("EAC_RESYNC_PERIOD", "0s")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--resync-period"), "{stderr}");
    assert!(stderr.contains("between 1s and 1day"), "{stderr}");
}

#[test]
fn completions_are_printed_for_bash_zsh_and_fish() {
    for shell in ["bash", "zsh", "fish"] {
        let out = controller().args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = String::from_utf8(out.stdout).unwrap();
        for word in [
            "eac-controller",
            "run",
            "crd",
            "resync-period",
            "proton-endpoint",
        ] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    let out = controller().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "an unknown shell is refused");
}
