mod support;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use std::time::Duration;
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe() {
    let api = support::FakeApi::default();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.serve_http(dir.path()).await;
    let file = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let leases: Api<Lease> = Api::namespaced(client, "platform");
    println!(
        "up: {:?}",
        tokio::time::timeout(Duration::from_secs(2), leases.get_opt("x"))
            .await
            .map(|r| r.map(|o| o.is_some()))
    );
    api.down();
    let t = std::time::Instant::now();
    println!(
        "down: {:?} after {:?}",
        tokio::time::timeout(Duration::from_secs(3), leases.get_opt("x"))
            .await
            .map(|r| r.map(|o| o.is_some())),
        t.elapsed()
    );
}
