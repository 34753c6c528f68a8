//! The asynchronous API, for tokio (feature `tokio`): [`AsyncSubscriber`],
//! [`crate::Requester::request_async`], and services whose handlers are
//! `async` ([`AsyncRouter`], [`crate::Bus::serve_async`]).
//!
//! A task that waits parks on the queue's doorbell through an io_uring
//! futex wait ([`waiter`]), so nothing runs while nothing arrives, and
//! publishers ring it as they ring a blocked thread.

pub(crate) mod request;
pub(crate) mod service;
pub(crate) mod subscriber;
pub(crate) mod waiter;

pub use request::AsyncReply;
pub use service::{AsyncHandler, AsyncRouter, AsyncServeBuilder, AsyncService, HandlerFuture, Request};
pub use subscriber::{AsyncMessage, AsyncSubscriber, MessageStream, Recv, ASYNC_SPINS};
pub use waiter::async_supported;
