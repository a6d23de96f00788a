#![doc = include_str!("../README.md")]

pub mod pace;

pub use pace::Pacer;
