//! The AWS side every kind shares: the Proton port ([`proton`]) and its error classes
//! ([`error`]), whose credentials a call is made with ([`credentials`]), the caller's account
//! (STS GetCallerIdentity, [`identity`]), role sessions (STS AssumeRole, [`session`]), the
//! call budget ([`budget`]) and the shared list that answers polls ([`pending`]).

pub mod budget;
pub mod credentials;
pub mod error;
pub mod identity;
pub mod pending;
pub mod proton;
pub mod session;
