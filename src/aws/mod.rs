//! The AWS side every kind shares: the Proton port ([`proton`]) and its error classes
//! ([`error`]), whose credentials a call is made with ([`credentials`]), the caller's account
//! (STS GetCallerIdentity, [`identity`]), role sessions (STS AssumeRole, [`session`]) and the
//! call budget ([`budget`]).

pub mod budget;
pub mod credentials;
pub mod error;
pub mod identity;
pub mod proton;
pub mod session;
