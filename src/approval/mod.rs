//! Change management: tickets, holds, approvals and break-glass reviews ([`model`]), the
//! durable store that keeps them, and the typed event stream ([`events`]) every part of
//! pgwarden emits through.

pub mod cover;
pub mod events;
pub mod model;

pub use cover::{cover, Presented, Uncovered};
