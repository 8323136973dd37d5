//! eac-controller: keeps AWS Proton environment account connections in step with
//! `EnvironmentAccountConnection` resources.
//!
//! One module per kind, each with the same shape (`api`: types and CRD; `decide`: the pure
//! decision and the status it renders; `controller`: the kube-runtime wiring):
//! [`connection`] (EnvironmentAccountConnection), [`policy`] (ConnectionAcceptancePolicy, the
//! management side) and [`mapping`] (AccountMapping, many accounts). Under them: the AWS side
//! ([`aws`]), and what every kind shares (conditions, Events, metrics, leader election, the
//! operations endpoint). Dependencies point one way, from `main` down to the types.

pub mod api_answers;
pub mod aws;
pub mod check;
pub mod cli;
pub mod compact_id;
pub mod conditions;
pub mod config;
pub mod connection;
pub mod http;
pub mod interned;
pub mod kube_transport;
pub mod leader;
pub mod managed_fields;
pub mod mapping;
pub mod metrics;
pub mod observed;
#[cfg(test)]
mod offline;
pub mod policy;
pub mod reconciler;
pub mod recorder;
pub mod repeated;
pub mod runner;
pub mod telemetry;
pub mod watch_starts;
