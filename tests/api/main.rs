//! The one integration-test binary: real Postgres, the emulator, the real binary.

mod audit_log;
mod check;
mod client;
mod config;
mod costs;
mod daemon;
mod demo;
mod emulator;
mod harness;
mod helpers;
mod history;
mod migrations;
mod reconcile;
mod requests;
mod roles;
mod sync;
