//! tandem: a FHIR R4 clinical-records service for clinics that run individual therapy and support
//! groups side by side. The library holds the whole service; `main.rs` only parses the command line.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod api;
pub mod audit;
pub mod auth;
pub mod config;
pub mod error;
pub mod export;
pub mod fhir;
pub mod measures;
pub mod metrics;
pub mod notifier;
pub mod resources;
pub mod scheduling;
pub mod search;
pub mod startup;
pub mod store;
pub mod subscriptions;
pub mod telemetry;
pub mod worker;

pub use config::Config;
pub use startup::Application;
