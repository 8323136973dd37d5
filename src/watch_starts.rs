//! The watch of the resources, told to `/readyz` whenever the API server starts it (or answers
//! its list).
//!
//! A watch that resumes after an outage shows no event until something changes, yet the API
//! server answered it: without this, an outage longer than `--watch-failure-timeout` left
//! `/readyz` answering 503 after the API server's return, until some resource changed. (A leader
//! does not need it: its Lease calls answer every 2 s.) Only the watch whose failures `/readyz`
//! counts (the resources') counts: another kind's watch starting says nothing of it.

use std::time::Duration;

use kube::Resource;
use tracing::{debug, info};

use crate::connection::api::EnvironmentAccountConnection;
use crate::http::Readiness;
use crate::observed::Observe;

/// Tells `readiness` that the API server answered whenever it starts a watch of the resources, or
/// answers its list (a watch request, or a page of a list, of their collection answered 2xx).
/// None: tells nobody.
#[derive(Clone)]
pub struct WatchStarts(pub Option<Readiness>);

impl Observe for WatchStarts {
    type Sent = Readiness;

    fn sent<B>(&self, request: &axum::http::Request<B>) -> Option<Readiness> {
        self.0.clone().filter(|_| {
            request.method() == axum::http::Method::GET && is_resource_watch(request.uri())
        })
    }

    fn answered(&self, readiness: Readiness, status: Option<axum::http::StatusCode>) {
        if status.is_some_and(|s| s.is_success())
            && let Some(failed_for) = readiness.succeeded()
        {
            // A watch that failed once and started again at once (a relist, a connection
            // reset) is no news.
            if failed_for >= RETURN_WORTH_TELLING {
                info!(
                    failed_for_secs = failed_for.as_secs(),
                    "the Kubernetes API server starts watches again"
                );
            } else {
                debug!(
                    failed_for_ms = failed_for.as_millis() as u64,
                    "the resources' watch started again"
                );
            }
        }
    }
}

/// The failures a return is logged at info after: shorter ones are a watch's ordinary restart.
const RETURN_WORTH_TELLING: Duration = Duration::from_secs(1);

/// Whether a request reads the collection of EnvironmentAccountConnections (in one namespace or
/// all) for their watch: the watch itself, or its list (where it lists instead of streaming,
/// which it does after an API server's start, see `reconciler::watch::streamed_or_listed`: the
/// list is then the API server's first answer, and the watch follows it at once).
fn is_resource_watch(uri: &axum::http::Uri) -> bool {
    let plural = EnvironmentAccountConnection::plural(&());
    uri.path()
        .rsplit('/')
        .next()
        .is_some_and(|last| last == plural)
        && (is_watch(uri.query()) || is_list(uri.query()))
}

/// Whether a request's query asks for a page of a list (the watch's lists are paged).
fn is_list(query: Option<&str>) -> bool {
    query.is_some_and(|q| q.split('&').any(|p| p.starts_with("limit=")))
}

/// Whether a request's query asks for a watch.
pub(crate) fn is_watch(query: Option<&str>) -> bool {
    query.is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_is_a_request_whose_query_asks_for_one() {
        assert!(is_watch(Some("watch=true&resourceVersion=12")));
        assert!(is_watch(Some("labelSelector=a&watch=1")));
        assert!(!is_watch(Some("limit=500")));
        assert!(!is_watch(Some("watch=false")));
        assert!(!is_watch(Some("allowWatchBookmarks=true")));
        assert!(!is_watch(None));
    }

    #[test]
    fn only_a_watch_of_the_resources_counts() {
        let uri = |s: &str| s.parse::<axum::http::Uri>().unwrap();
        let group = "/apis/proton.eac.dev/v1alpha1";
        assert!(is_resource_watch(&uri(&format!(
            "{group}/namespaces/platform/environmentaccountconnections?watch=true&resourceVersion=5"
        ))));
        assert!(is_resource_watch(&uri(&format!(
            "{group}/environmentaccountconnections?watch=1"
        ))));
        assert!(is_resource_watch(&uri(&format!(
            "{group}/environmentaccountconnections?limit=500"
        ))));
        assert!(!is_resource_watch(&uri(&format!(
            "{group}/accountmappings?watch=true"
        ))));
        assert!(!is_resource_watch(&uri("/api/v1/namespaces?watch=true")));
        assert!(!is_resource_watch(&uri(&format!(
            "{group}/namespaces/platform/environmentaccountconnections/prod?watch=true"
        ))));
    }
}
