//! eac-controller: keeps AWS Proton environment account connections in step with
//! `EnvironmentAccountConnection` resources, and ships a Proton emulator to test against.

pub mod acceptance;
pub mod accounts;
pub mod api;
pub mod aws;
pub mod budget;
pub mod cli;
pub mod conditions;
pub mod config;
pub mod controller;
pub mod decide;
pub mod http;
pub mod identity;
pub mod leader;
pub mod metrics;
pub mod proton;
pub mod recorder;
pub mod runner;
pub mod telemetry;
