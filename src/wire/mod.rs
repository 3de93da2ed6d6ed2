//! The wire protocol, sans I/O: cutting byte streams into frames ([`frame`]), reading the
//! startup-phase packets ([`startup`]), the few messages pgwarden reads
//! ([`read`]), the messages pgwarden writes itself ([`messages`]) and SQLSTATE codes
//! ([`sqlstate`]). Nothing here touches a socket, so all of it is unit-tested and fuzzed.

pub mod frame;
pub mod messages;
pub mod read;
pub mod sqlstate;
pub mod startup;
