//! The AWS side that every kind shares, below the Proton port: error classes.

pub mod error;
