//! Reading the primary: the replication connection and its resume rules ([`source`]), events turned into
//! committed transactions ([`assemble`]), row images decoded exactly ([`decode`]), logged statements
//! classified ([`statement`]), MariaDB-specific events ([`mariadb_events`]), which servers may be followed
//! ([`failover`]), the checks of the primary's settings before streaming ([`preflight`]) and damaged journal
//! records read again from the primary ([`repair`]).

pub mod assemble;
pub mod decode;
pub mod failover;
pub mod mariadb_events;
pub mod preflight;
pub mod repair;
pub mod source;
pub mod statement;
