//! The `eac-controller` binary as a process against the fake API server served over HTTP: its
//! log kept as it comes, waits that name what they wait for, and its `/readyz`.

use std::io::{BufRead, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{FakeApi, NS};

/// `eac-controller run` against `proton_url` in us-east-1, watching the fake's namespace, its
/// operations endpoint on a free port, with `extra` after.
pub fn run_args(proton_url: &str, extra: &[&str]) -> Vec<String> {
    [
        "run",
        "--proton-endpoint",
        proton_url,
        "--region",
        "us-east-1",
        "--namespace",
        NS,
        "--metrics-addr",
        "127.0.0.1:0",
    ]
    .iter()
    .chain(extra)
    .map(|a| a.to_string())
    .collect()
}

/// [`run_args`] with leader election, its Lease in the fake's namespace, and otherwise the
/// defaults (the AWS budget, the Lease timings, the resync).
pub fn leader_elected_args(proton_url: &str) -> Vec<String> {
    run_args(
        proton_url,
        &["--leader-election", "--leader-election-namespace", NS],
    )
}

/// The API server's process stops for `length` ([`FakeApi::stop`]: connections cut and refused;
/// the server must be served by [`FakeApi::serve_http_stoppable`]) under a leader-elected
/// `controller`, which must stop leading within the renew deadline (10 s); returns when the
/// server answers again.
pub async fn outage(
    api: &FakeApi,
    controller: &Controller,
    length: Duration,
) -> tokio::time::Instant {
    let down_at = tokio::time::Instant::now();
    api.stop();
    the_leader_stops(controller).await;
    tokio::time::sleep_until(down_at + length).await;
    api.up();
    tokio::time::Instant::now()
}

/// Waits for a leader-elected `controller`, cut off from the API server, to stop leading within
/// the renew deadline (10 s).
pub async fn the_leader_stops(controller: &Controller) {
    controller
        .until(
            "the leader to stop within the renew deadline (10 s)",
            Duration::from_secs(12),
            |c| c.logged("stopped reconciling") == 1,
        )
        .await;
}

/// The controller binary and its log lines, as they come.
pub struct Controller {
    child: std::process::Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Controller {
    /// Starts the binary with `args`, against the API server of `kubeconfig`, with static AWS
    /// credentials and the log as the flags set it (`--log-level`, `info` by default; `RUST_LOG` as
    /// `log`, if given).
    pub fn start(kubeconfig: &std::path::Path, args: &[String], log: Option<&str>) -> Controller {
        Controller::start_with_env(kubeconfig, args, log, &[])
    }

    /// [`Controller::start`] with the variables `env` set besides. `KUBERNETES_SERVICE_HOST` (the
    /// controller runs in a pod) is unset unless `env` sets it, wherever the tests run.
    pub fn start_with_env(
        kubeconfig: &std::path::Path,
        args: &[String],
        log: Option<&str>,
        env: &[(&str, &str)],
    ) -> Controller {
        // The benchmark's hook to run the binary under a tool, e.g. "heaptrack".
        let wrap: Vec<String> = std::env::var("EAC_BENCH_WRAP")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect();
        let binary = env!("CARGO_BIN_EXE_eac-controller").to_string();
        let (program, before) = match wrap.split_first() {
            Some((tool, tool_args)) => (tool.clone(), [tool_args.to_vec(), vec![binary]].concat()),
            None => (binary, vec![]),
        };
        let mut child = std::process::Command::new(program)
            .args(before)
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("AWS_ACCESS_KEY_ID", "AKIDBINARY")
            .env("AWS_SECRET_ACCESS_KEY", "binary")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("RUST_LOG", log.unwrap_or_default())
            .env("NO_COLOR", "1")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .envs(env.iter().copied())
            // The benchmark's hook for one more variable (e.g. MALLOC_ARENA_MAX=2).
            .envs(std::env::var("EAC_BENCH_CHILD_ENV").ok().and_then(|v| {
                v.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            }))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the controller binary starts");
        let kept_log = Arc::new(Mutex::new(Vec::new()));
        let lines = std::io::BufReader::new(child.stderr.take().expect("its stderr"));
        let kept = kept_log.clone();
        std::thread::spawn(move || {
            for line in lines.lines().map_while(Result::ok) {
                kept.lock().unwrap().push(line);
            }
        });
        Controller {
            child,
            log: kept_log,
        }
    }

    /// The process's id, for [`cpu_seconds`] and [`status_mib`].
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Ends the process as Kubernetes does (SIGTERM: it shuts down gracefully, and a wrapping
    /// tool writes its report), and waits for it.
    pub fn terminate(mut self) {
        self.sigterm();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM, as Kubernetes does to stop a pod, and returns at once.
    pub fn sigterm(&self) {
        // SAFETY: kill only sends a signal to the child this owns.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
    }

    /// Sends SIGTERM (as Kubernetes stops a pod) and waits up to `limit` for the process to exit;
    /// panics naming `what` if it does not.
    pub async fn stopped_by_sigterm(
        &mut self,
        what: &str,
        limit: Duration,
    ) -> std::process::ExitStatus {
        self.sigterm();
        self.exited(what, limit).await
    }

    /// Waits up to `limit` for the process to exit; panics naming `what` if it does not.
    pub async fn exited(&mut self, what: &str, limit: Duration) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {limit:?} waiting for {what}; the controller's log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the process is still running (it has not exited).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Every log line so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// How many log lines say `what`.
    pub fn logged(&self, what: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(what))
            .count()
    }

    /// The address of /readyz, waited for (up to `limit`) in the log line that says where it is
    /// served.
    pub async fn readyz_addr(&self, limit: Duration) -> String {
        self.until("the log line with /readyz's address", limit, |c| {
            c.metrics_addr().is_some()
        })
        .await;
        self.metrics_addr().unwrap_or_default()
    }

    /// The address of /readyz, from the log line that says where it is served.
    pub fn metrics_addr(&self) -> Option<String> {
        self.log.lock().unwrap().iter().find_map(|l| {
            l.contains("serving /metrics")
                .then(|| l.split("addr=").nth(1))
                .flatten()
                .map(|a| a.split_whitespace().next().unwrap_or_default().to_string())
        })
    }

    /// Waits until `done` holds, checking every 20 ms; panics after `limit` naming `what`, with
    /// the controller's log.
    pub async fn until(
        &self,
        what: &str,
        limit: Duration,
        mut done: impl FnMut(&Controller) -> bool,
    ) {
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
pub fn ready(addr: &str) -> bool {
    answers_ok(addr, "/readyz")
}

/// Whether `GET /healthz` at `addr` (the liveness probe's) answers 200.
pub fn alive(addr: &str) -> bool {
    answers_ok(addr, "/healthz")
}

fn answers_ok(addr: &str, path: &str) -> bool {
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200")
}
