//! Shared types of the shmbus examples.
