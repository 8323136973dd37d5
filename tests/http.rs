//! The operations endpoint over real HTTP on 127.0.0.1: /healthz, /readyz, /metrics.

use eac_controller::http::{Readiness, serve};
use eac_controller::metrics::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    get_accepting(addr, path, "*/*").await
}

async fn get_accepting(addr: std::net::SocketAddr, path: &str, accept: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let code = raw.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

#[tokio::test]
async fn health_readiness_and_metrics_are_served() {
    let metrics = Metrics::new();
    let readiness = Readiness::default();
    let (addr, _task) = serve(
        ([127, 0, 0, 1], 0).into(),
        metrics.clone(),
        readiness.clone(),
        std::future::pending(),
    )
    .await
    .unwrap();

    assert_eq!(get(addr, "/healthz").await.0, 200);
    let (code, body) = get(addr, "/readyz").await;
    assert_eq!(code, 503, "not ready while starting");
    assert!(body.contains("starting"), "{body}");
    readiness.leading();
    let (code, body) = get(addr, "/readyz").await;
    assert_eq!(
        code, 503,
        "a leader is not ready before its watch cache synced"
    );
    assert!(body.contains("not synced"), "{body}");
    readiness.synced();
    assert_eq!(get(addr, "/readyz").await.0, 200);
    readiness.standby();
    assert_eq!(
        get(addr, "/readyz").await.0,
        200,
        "a healthy standby is ready"
    );

    metrics.aws_call("CreateEnvironmentAccountConnection", "success");
    metrics.reconciled("settled", std::time::Duration::from_millis(20));
    metrics.set_leader(true);
    let (code, body) = get(addr, "/metrics").await;
    assert_eq!(code, 200);
    for series in [
        "eac_reconcile_total{result=\"settled\"} 1",
        "eac_reconcile_duration_seconds_count 1",
        "eac_aws_requests_total{operation=\"CreateEnvironmentAccountConnection\",outcome=\"success\"} 1",
        "eac_aws_throttled_total 0",
        "eac_leader 1",
    ] {
        assert!(body.contains(series), "missing {series} in:\n{body}");
    }
    assert_eq!(get(addr, "/nope").await.0, 404);
}

/// `promtool check metrics` (Prometheus's own linter: names, units, help texts, types) on what
/// /metrics serves once every family has a sample. promtool comes with Debian's `prometheus`
/// package; `.ci/run` installs it and sets EAC_REQUIRE_PROMTOOL=1, elsewhere the test skips
/// with a message when it is missing.
#[tokio::test]
async fn the_metrics_pass_promtool_check_metrics() {
    let Some(promtool) = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("promtool"))
        .find(|p| p.is_file())
    else {
        assert!(
            std::env::var("EAC_REQUIRE_PROMTOOL").as_deref() != Ok("1"),
            "promtool is required (apt-get install prometheus) and not on PATH"
        );
        eprintln!("skipped: promtool is not installed (apt-get install prometheus)");
        return;
    };
    use eac_controller::aws::budget::CallClass;
    use std::time::Duration;
    let metrics = Metrics::new();
    metrics.reconciled("settled", Duration::from_millis(12));
    metrics.reconciled("kube_error", Duration::from_millis(40));
    metrics.acceptance_reconciled("settled", Duration::from_millis(8));
    metrics.acceptance_decisions(2, 1, 3);
    metrics.aws_call("GetEnvironmentAccountConnection", "success");
    metrics.aws_call("CreateEnvironmentAccountConnection", "Throttled");
    metrics.aws_throttled();
    metrics.aws_class_call(CallClass::Work);
    metrics.budget_wait(CallClass::Poll, Duration::from_millis(50));
    metrics.budget_deferred(CallClass::Poll, Duration::from_secs(2));
    metrics.read_interval(CallClass::Poll, Duration::from_secs(31));
    metrics.connected_after(Duration::from_secs(90));
    metrics.set_leader(true);
    metrics.set_aws_unreachable("us-east-1", true);
    metrics.set_aws_unreachable("STS", false);
    let (addr, _task) = serve(
        ([127, 0, 0, 1], 0).into(),
        metrics.clone(),
        Readiness::default(),
        std::future::pending(),
    )
    .await
    .unwrap();
    // What Prometheus asks for: OpenMetrics.
    let (code, openmetrics) = get_accepting(
        addr,
        "/metrics",
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    )
    .await;
    assert_eq!(code, 200);
    assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
    assert!(openmetrics.contains("# TYPE eac_reconcile counter"));
    // Anyone else (curl, promtool): the classic text format, which promtool lints.
    let (code, body) = get(addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(!body.contains("# EOF"));
    assert!(body.contains("# TYPE eac_reconcile_total counter"));
    for family in [
        "eac_reconcile_total",
        "eac_acceptance_decisions_total",
        "eac_aws_requests_total",
        "eac_effective_poll_interval_seconds",
        "eac_time_to_connected_seconds_bucket",
        "eac_leader",
        "eac_aws_unreachable{region=\"us-east-1\"} 1",
    ] {
        assert!(body.contains(family), "{family} in {body}");
    }

    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(body.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics:\n{said}\n{body}"
    );
    assert!(said.trim().is_empty(), "promtool check metrics:\n{said}");
}
