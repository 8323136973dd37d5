//! The management-account side: `ConnectionAcceptancePolicy` resources say which environment
//! account connection requests the management account accepts; the controller lists the
//! requests made to it, accepts the matching PENDING ones and leaves (or rejects) the rest.
//!
//! - `api`: the resource and its CRD;
//! - `matching`: which requests a policy matches (accounts, names and patterns);
//! - `decide`: the pure reconcile of one policy (which calls to make, the status, the Events);
//! - `controller`: the kube-runtime wiring (watch, store of all policies, status writes, Events).
//!
//! It runs in the same process as the connection side, under the same leader election, with the
//! same Proton port (endpoint, credentials, call budget).

pub mod api;
pub mod controller;
pub mod decide;
pub mod matching;

pub use api::{
    ConnectionAcceptancePolicy, ConnectionAcceptancePolicySpec, ConnectionAcceptancePolicyStatus,
    Decision, PendingRequest, UnmatchedRequests,
};
