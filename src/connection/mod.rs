//! The EnvironmentAccountConnection kind: its resource and CRD ([`api`]), the pure decision and
//! the status it renders ([`decide`]), and the controller that runs it ([`controller`]).

pub mod api;
pub mod controller;
pub mod decide;
