//! The `eac-controller` binary with leader election on (as the chart runs it) through a 10 s
//! API-server outage, the pressures of an incident together: the leader cannot renew its Lease
//! and stops, every watch fails, and when the API server answers again the leader must take its
//! Lease back, list and watch again, and serve a resource applied right then. The fake API server
//! over HTTP on 127.0.0.1 (refusing every request while down), the Proton emulator over HTTP.

mod support;

use std::io::{BufRead, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eac_controller::aws::budget::CallBudget;
use eac_controller::connection::api::EnvironmentAccountConnection;
use proton_emulator::EmulatorConfig;
use support::{Env, NS, patient, spec};

const LIMIT: Duration = Duration::from_secs(60);
/// Resources the controller holds before the outage (within the default budget's burst).
const BEFORE: usize = 15;

/// The controller binary and its log lines, as they come.
struct Controller {
    child: std::process::Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Controller {
    fn start(kubeconfig: &std::path::Path, args: &[&str]) -> Controller {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_eac-controller"))
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("AWS_ACCESS_KEY_ID", "AKIDOUTAGE")
            .env("AWS_SECRET_ACCESS_KEY", "outage")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the controller binary starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = std::io::BufReader::new(child.stderr.take().expect("its stderr"));
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in lines.lines().map_while(Result::ok) {
                kept.lock().unwrap().push(line);
            }
        });
        Controller { child, log }
    }

    /// How many log lines say `what`.
    fn logged(&self, what: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(what))
            .count()
    }

    /// The address of /readyz, from the log line that says where it is served.
    fn metrics_addr(&self) -> Option<String> {
        self.log.lock().unwrap().iter().find_map(|l| {
            l.contains("serving /metrics")
                .then(|| l.split("addr=").nth(1))
                .flatten()
                .map(|a| a.split_whitespace().next().unwrap_or_default().to_string())
        })
    }

    /// Waits until `done` holds, checking every 20 ms; panics after `limit` naming `what`, with
    /// the controller's log.
    async fn until(&self, what: &str, limit: Duration, mut done: impl FnMut(&Controller) -> bool) {
        let deadline = tokio::time::Instant::now() + limit;
        while !done(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {limit:?} waiting for {what}; the controller's log:\n{}",
                self.log.lock().unwrap().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `GET /readyz` at `addr` answers 200.
fn ready(addr: &str) -> bool {
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /readyz HTTP/1.0\r\nHost: x\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200")
}

fn has_id(o: Option<&EnvironmentAccountConnection>) -> bool {
    o.and_then(|o| o.status.as_ref())
        .is_some_and(|s| s.id.is_some())
}

fn uid(i: usize) -> String {
    format!("0b9c6f1e-7d2a-4c55-9f0e-{i:012}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_leader_election_a_resource_applied_after_a_10_s_outage_is_served_within_5_s() {
    let env = Env::start_full(
        patient(),
        CallBudget::unlimited(),
        EmulatorConfig::default(),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = env.api.serve_http(dir.path()).await;
    let url = env.emulator.url();
    // Default flags otherwise: the default AWS budget, lease timings and resync.
    let controller = Controller::start(
        &kubeconfig,
        &[
            "run",
            "--proton-endpoint",
            &url,
            "--region",
            "us-east-1",
            "--namespace",
            NS,
            "--metrics-addr",
            "127.0.0.1:0",
            "--leader-election",
            "--leader-election-namespace",
            NS,
        ],
    );
    let names: Vec<String> = (0..BEFORE).map(|i| format!("before-{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        env.api.create(name, &uid(i), spec(name));
    }
    for name in &names {
        env.api
            .wait_for(name, "a connection before the outage", LIMIT, has_id)
            .await;
    }
    controller
        .until("the log line with /readyz's address", LIMIT, |c| {
            c.metrics_addr().is_some()
        })
        .await;
    let readyz = controller.metrics_addr().unwrap_or_default();
    controller
        .until("/readyz ready before the outage", LIMIT, |_| ready(&readyz))
        .await;

    env.api.down();
    let down_at = tokio::time::Instant::now();
    controller
        .until(
            "the leader to stop within the renew deadline (10 s)",
            Duration::from_secs(12),
            |c| c.logged("stopped reconciling") == 1,
        )
        .await;
    tokio::time::sleep_until(down_at + Duration::from_secs(10)).await;
    env.api.up();
    let back = tokio::time::Instant::now();
    env.api.create("after", &uid(BEFORE), spec("after"));
    env.api
        .wait_for(
            "after",
            "a connection within 5 s of the API server's return",
            Duration::from_secs(5),
            has_id,
        )
        .await;
    let served = back.elapsed();
    controller
        .until(
            "/readyz ready within 5 s of the API server's return",
            Duration::from_secs(5).saturating_sub(back.elapsed()),
            |_| ready(&readyz),
        )
        .await;
    let ready_at = back.elapsed();
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
