//! The AWS side every kind shares: the Proton port ([`proton`]) and its error classes
//! ([`error`]), whose credentials a call is made with ([`credentials`]), the caller's account
//! (STS GetCallerIdentity, [`identity`]), role sessions (STS AssumeRole, [`session`]), one
//! question to STS at a time ([`asking`]), the
//! call budget ([`budget`]), the shared list that answers polls ([`pending`]) and whether Proton
//! answers in each region ([`reach`]).

pub mod asking;
pub mod budget;
pub mod credentials;
pub mod error;
pub mod identity;
pub mod pending;
pub mod proton;
pub mod reach;
pub mod session;
