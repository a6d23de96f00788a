//! The bundled example shop: a deterministic dataset of six resources and the
//! paginated HTTP API that serves it.

mod data;
mod server;

pub use data::{Dataset, Resource};
pub use server::{Fault, ShopConfig, ShopServer};
