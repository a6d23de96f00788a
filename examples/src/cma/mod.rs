//! An emulator of the Contentful Management API (the subset Sluicegate and
//! `cute` use), served on 127.0.0.1: spaces, environments, locales, content
//! types, entries with the query language, versions, publishing, bulk publish
//! actions, deletes, error bodies shaped like the real API's, rate limiting with
//! the real headers, and fault injection.

mod model;
mod query;
mod server;

pub use model::ApiError;
pub use server::{CmaConfig, CmaCounts, CmaFault, CmaServer};
