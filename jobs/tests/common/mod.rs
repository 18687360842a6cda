//! What the store tests share: the rules every store keeps.
#![allow(dead_code, unreachable_pub)]

pub mod rules;
