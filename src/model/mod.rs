//! The model: the normalised reading, its clinical codes, the time model that dates it and the public
//! payload it is published as. Pure data and pure functions; no I/O, no clock reads.

pub mod clocks;
pub mod codes;
pub mod measurement_time;
pub mod payload;
pub mod reading;
