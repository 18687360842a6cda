//! valkyrie-shm: frames between two local processes through shared memory.
//!
//! A [`ShmListener`] waits under a name (in the abstract Unix-socket namespace: nothing on the
//! file system); [`ShmStream::connect`] reaches it. The listener creates a segment — a sealed
//! memfd holding one single-producer single-consumer frame ring per direction — and passes it
//! over the socket (`SCM_RIGHTS`). From then on frames move through the rings only; the socket
//! stays open so that either side learns at once when the other's process dies.
//!
//! - **Zero or one copy.** [`ShmStream::try_claim`] / [`ShmStream::claim`] reserve space in
//!   the ring, the frame is written in place, [`Claim::commit`] publishes it (Aeron's
//!   `tryClaim`). [`ShmStream::recv`] returns a view into the ring, released when dropped.
//! - **Bounded, lossless.** A full ring is back-pressure: `send` waits, `try_send` returns
//!   [`ShmError::WouldBlock`]. Nothing is dropped.
//! - **Idle costs nothing.** [`WaitMode::Adaptive`] spins briefly then sleeps on a futex in the
//!   segment; [`WaitMode::BusyPoll`] never sleeps, for the lowest latency.
//! - **Crashes are seen.** A peer killed with `SIGKILL` is reported as [`ShmError::PeerDied`]
//!   within [`ShmConfig::liveness_interval`]; the memfd is freed when the last mapping goes.
//! - **Hostile peers are contained.** Every index and length read from the segment is checked
//!   before use; a violation is [`ShmError::Corrupt`] and closes the connection.
//!
//! ```
//! use valkyrie_shm::{ShmListener, ShmStream};
//!
//! let name = format!("doc-example-{}", std::process::id());
//! let listener = ShmListener::bind(&name)?;
//! let server = std::thread::spawn(move || -> Result<(), valkyrie_shm::ShmError> {
//!     let mut conn = listener.accept()?;
//!     let mut buf = Vec::new();
//!     conn.recv_into(&mut buf)?;
//!     conn.send(&buf)?; // echo
//!     Ok(())
//! });
//!
//! let mut client = ShmStream::connect(&name)?;
//! // Write in place: claim, fill, commit.
//! let mut claim = client.claim(5)?;
//! claim.copy_from_slice(b"hello");
//! claim.commit();
//! assert_eq!(&*client.recv()?, b"hello");
//! server.join().unwrap()?;
//! # Ok::<(), valkyrie_shm::ShmError>(())
//! ```
#![allow(unsafe_code)]

mod claim;
mod config;
mod error;
mod futex;
#[doc(hidden)]
pub mod fuzzing;
mod layout;
mod listener;
mod ring;
mod segment;
mod stream;

pub use claim::{Claim, Received};
pub use config::{ShmConfig, WaitMode};
pub use error::{Result, ShmError};
pub use layout::{MAX_CAPACITY, MIN_CAPACITY, max_frame_for};
pub use listener::ShmListener;
pub use stream::{FutexWord, ShmStream, abstract_name};
