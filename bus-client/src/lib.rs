//! bus-client: connect to a shmbus daemon, publish and subscribe zero-copy.
//!
//! ```no_run
//! use bus_client::Bus;
//!
//! #[derive(rkyv::Archive, rkyv::Serialize)]
//! struct User { id: u64, name: String }
//!
//! let bus = Bus::connect()?;
//! let sub = bus.subscribe("api")?;
//! let mut publisher = bus.publisher().create()?;
//! publisher.send("api://users/123", &User { id: 123, name: "ada".into() })?;
//! let msg = sub.recv()?;
//! assert_eq!(msg.route(), "users/123");
//! let user = msg.body::<User>()?; // validated, read in place
//! assert_eq!(user.name, "ada");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod addr;
#[cfg(feature = "tokio")]
mod asynchronous;
mod body;
mod bus;
mod clock;
pub mod control;
mod error;
mod forward;
mod handler;
mod link;
mod pipeline;
pub mod protocol;
mod publisher;
mod request;
mod router;
mod service;
mod subscriber;

#[cfg(feature = "tokio")]
pub use asynchronous::{
    async_supported, AsyncHandler, AsyncMessage, AsyncReply, AsyncRouter, AsyncServeBuilder, AsyncService,
    AsyncSubscriber, HandlerFuture, MessageStream, Recv, Request, ASYNC_SPINS,
};
pub use body::{fingerprint, Body};
pub use bus::{Bus, BusBuilder, DEFAULT_POLL_PAUSE, DEFAULT_SPINS};
pub use bus_core::{Path, PathError, PATH_CAPACITY};
pub use error::{BatchError, BodyError, ConnectError, RecvError, RequestError, SendError};
pub use forward::{Envelope, ReplyHandle};
pub use handler::{Context, HandlerError};
pub use pipeline::{Pending, Pipeline};
pub use publisher::{Backpressure, Loan, LoanSendError, LoanUninit, Publisher, PublisherBuilder};
pub use request::{Reply, ReplyError, Requester, Response, REPLY_SPINS};
pub use router::{Handler, RouteError, Router};
pub use service::{ServeBuilder, Service, ServiceStats, MAX_WORKER_BATCH};
pub use subscriber::{Message, Subscriber, SubscriptionBuilder};
