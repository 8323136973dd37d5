//! Many environment accounts from one controller: which credentials a resource acts with.
//!
//! A cluster admin maps namespaces (by label) to IAM roles with [`api::AccountMapping`]. A
//! resource in a mapped namespace is reconciled with that role's temporary credentials
//! ([`crate::aws::session::RoleSession`]); one in an unmapped namespace with the controller's
//! own. Which mapping applies is decided in [`decide`], purely, from the namespace's labels and
//! the mappings; the answer fails closed: a namespace matched by two mappings, or any mapping
//! whose selector cannot be read, gets no credentials at all rather than a guess. [`status`]
//! renders each mapping's status, and [`controller`] follows mappings and namespaces and writes
//! those statuses. [`shared`] hands the followed mappings to the management side.

pub mod api;
pub mod controller;
pub mod decide;
pub mod shared;
pub mod status;

pub use crate::aws::credentials::{AwsIdentity, RoleIdentity, role_account};
pub use api::{AccountMapping, AccountMappingSpec};
pub use decide::{Accounts, MappingError, Resolved, UnmappedNamespaces, resolve};
pub use shared::SharedAccounts;
