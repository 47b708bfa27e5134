//! Integration tests through HTTP, as an EHR would call the service. Every test runs twice: against
//! SQLite and against PostgreSQL (TANDEM_TEST_DATABASE_URL, default the local server at
//! 127.0.0.1:5432). A PostgreSQL that cannot be reached fails the tests; nothing is skipped.

mod helpers;

mod audit;
mod audit_complete;
mod audit_hardening;
mod auth_scopes;
mod auth_tokens;
mod booking_rules;
mod bundles;
mod calendar;
mod care;
mod concurrency;
mod conditional;
mod cors_smart;
mod crud;
mod errors;
mod examples;
mod export;
mod first_hour;
mod formats;
mod fuzz;
mod generated;
mod history;
mod hostile;
mod input_limits;
mod invariants;
mod leaks;
mod long_values;
mod measures;
mod metadata;
mod openapi;
mod operations;
mod own_definitions;
mod platform;
mod reserved_time;
mod restart;
mod scheduling;
mod scheduling_processes;
mod search;
mod search_paging;
mod search_params;
mod search_plan;
mod subscriptions;
mod write_path;
