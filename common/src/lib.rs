//! Shared by `replica-reader` and `replica-applier`.
//!
//! - [`event`]: the journal record model (one committed source transaction, self-describing rows)
//! - [`position`]: journal offsets, binlog positions, MariaDB GTIDs
//! - [`codec`]: the versioned bincode encoding of records in the journal
//! - [`proto`] and [`convert`]: the gRPC wire types and the one mapping to and from the domain
//! - [`config`], [`config_file`], [`logging`] and [`gelf`]: secrets, shared options, the TOML file, tracing setup,
//!   GELF to Graylog
//! - [`grpc_security`] and [`grpc_server`]: TLS and the bearer token for gRPC; the server setup (health,
//!   reflection) both binaries use
//! - [`lifecycle`]: shutdown signals and error reports for the binaries
//! - [`mariadb`]: MariaDB connection options and `information_schema` column reads, built one way
//! - [`metrics`]: the Prometheus endpoint
//! - [`chunk`]: the SELECT of a key range, selected values as journal values, the row checksum of verification
//! - [`sql_value`]: journal values as MariaDB driver parameters
//! - [`retry`]: the one retry policy (jittered exponential backoff, capped, reset after success)
//! - [`reference`]: the README configuration reference, generated from clap

pub mod chunk;
pub mod codec;
pub mod config;
pub mod config_file;
pub mod convert;
pub mod event;
pub mod gelf;
pub mod grpc_security;
pub mod grpc_server;
pub mod lifecycle;
pub mod logging;
pub mod mariadb;
pub mod metrics;
pub mod position;
pub mod proto;
pub mod reference;
pub mod retry;
pub mod sql_value;
