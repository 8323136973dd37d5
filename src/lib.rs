//! eac-controller: keeps AWS Proton environment account connections in step with
//! `EnvironmentAccountConnection` resources, and ships a Proton emulator to test against.

pub mod api;
pub mod conditions;
pub mod controller;
pub mod decide;
pub mod emulator;
pub mod proton;
pub mod budget;
pub mod metrics;
pub mod config;
pub mod http;
pub mod telemetry;
pub mod runner;
