//! End-to-end tests: the real proxy (in-process on port 0, or the binary for signal tests),
//! real PostgreSQL (the machine's server on 127.0.0.1:5432, or a private cluster started by
//! `support::cluster`), and real clients (tokio-postgres, psql, raw sockets).

mod support;

mod alerts;
mod audit;
mod audit_report;
mod auth;
mod bypass_session;
mod catalog;
mod check_ticket;
mod clients;
mod corpus;
mod enforce;
mod holds;
mod hostile;
mod lifecycle;
mod observe;
mod pack_attack;
mod pack_bypass;
mod protocol;
mod reload;
mod scaleout;
mod session_attack;
mod session_facts;
mod tickets;
mod tls;
mod transparency;
