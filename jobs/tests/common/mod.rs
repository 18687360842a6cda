//! What the store tests share: the rules every store keeps, and a PostgreSQL server started
//! for the test.
#![allow(dead_code, unreachable_pub)]

pub mod pg;
pub mod rules;
