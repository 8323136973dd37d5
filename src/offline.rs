//! What a unit test of a controller's context needs, and no cluster or AWS: a Kubernetes client
//! whose calls go nowhere, a Proton port at a closed local port, and production-like settings.

use std::time::Duration;

use kube::Client;

use crate::aws::budget::CallBudget;
use crate::aws::proton::{Proton, ProtonSettings};
use crate::connection::api::EnvironmentAccountConnection;
use crate::connection::decide::Settings;
use crate::metrics::Metrics;

/// A client whose requests are never answered (the mock's handle is dropped: they fail).
pub fn client() -> Client {
    let (service, _handle) = tower_test::mock::pair::<
        http::Request<kube::client::Body>,
        http::Response<kube::client::Body>,
    >();
    Client::new(service, "default")
}

/// A Proton port at a port nothing listens on, counting into `metrics`.
pub fn proton(metrics: &Metrics) -> Proton {
    Proton::with_static_credentials(
        ProtonSettings {
            default_region: "us-east-1".into(),
            endpoint: Some("http://127.0.0.1:9".into()),
            sts_endpoint: None,
            timeout: Duration::from_secs(1),
        },
        CallBudget::unlimited(),
        metrics.clone(),
    )
}

/// The defaults' shape: a 10-minute resync, a 30 s poll, us-east-1.
pub fn settings() -> Settings {
    Settings {
        resync: Duration::from_secs(600),
        pending_poll: Duration::from_secs(30),
        default_region: "us-east-1".into(),
        allowed_regions: vec![],
        adoption: crate::connection::decide::AdoptionPolicy::default(),
        create_settle: Duration::from_secs(60),
    }
}

/// A resource as the watch would bring it: namespaced, with a uid and a generation.
pub fn eac(uid: &str) -> EnvironmentAccountConnection {
    let mut o = EnvironmentAccountConnection::new(uid, Default::default());
    o.metadata.namespace = Some("ns".into());
    o.metadata.uid = Some(uid.into());
    o.metadata.generation = Some(1);
    o
}
