#![doc = include_str!("../README.md")]

pub mod changes;
pub mod cma;
pub mod dbfixtures;
pub mod dbserver;
pub mod directus;
pub mod faults;
pub mod shop;
mod time;
pub mod tls;
pub mod zoo;
