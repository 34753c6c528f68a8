//! bus-cli: `shmbus`, the command line ([`cli::main`]), and the
//! cross-process benchmark harness behind `shmbus bench` and the criterion
//! benches ([`mod@bench`]). The daemon itself lives in `bus-daemon`.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod bench;
pub mod cli;
pub mod top;
