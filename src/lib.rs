//! tandem: a FHIR R4 clinical-records service.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod error;
pub mod fhir;
pub mod resources;
pub mod store;
