//! The EnvironmentAccountConnection kind: its resource and CRD ([`api`]), the pure decision and
//! the status it renders ([`decide`]), the controller that runs it ([`controller`]), and the
//! poller that makes its fast PENDING polls from one list ([`polls`]).

pub mod api;
pub mod controller;
pub mod decide;
pub mod polls;
