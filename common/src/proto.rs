//! Generated protobuf and gRPC code for `replica.v1` (never edited; see `proto/`).
#![allow(clippy::all, missing_docs)]

tonic::include_proto!("replica.v1");

/// Encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("replica_descriptor");
