//! The EnvironmentAccountConnection kind: its resource and CRD ([`api`]), the pure decision and
//! the status it renders ([`decide`]), the controller that runs it ([`controller`]: one
//! reconcile is `facts` -> `execute` -> `writes`, in `reconcile`, over the shared `context`), the
//! poller that makes its fast PENDING polls from one list ([`polls`]), and the index of the
//! connections a management account may still decide ([`undecided`]).

pub mod api;
mod cached;
mod context;
pub mod controller;
pub mod decide;
mod error;
mod execute;
mod facts;
pub mod polls;
mod reconcile;
mod triggers;
pub mod undecided;
mod writes;
