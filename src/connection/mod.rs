//! The EnvironmentAccountConnection kind: its resource and CRD ([`api`]), the pure decision and
//! the status it renders ([`decide`]), the controller that runs it ([`controller`]), the
//! poller that makes its fast PENDING polls from one list ([`polls`]), and the index of the
//! connections a management account may still decide ([`undecided`]).

pub mod api;
pub mod controller;
pub mod decide;
pub mod polls;
pub mod undecided;
