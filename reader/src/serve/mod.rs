//! Serving the journal: the `replica.v1.Journal` gRPC service ([`service`]), the consistent snapshot reads for
//! appliers' initial copies ([`snapshot`]), and the health the service reports ([`health`]).

pub mod health;
pub mod service;
pub mod snapshot;
