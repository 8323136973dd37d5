//! What every kind's controller shares, written once: what is kept per object between
//! reconciles and when it is due ([`tracked`]), the backoff after a failure and the problem it
//! reports ([`retry`]), the Events a decision names ([`note`]), the status write ([`status`]) and
//! the watch that feeds a kube-runtime controller ([`watch`]). A kind supplies its types, its
//! pure decision and the calls it makes.

pub mod note;
pub mod retry;
pub mod status;
pub mod tracked;
pub mod watch;
