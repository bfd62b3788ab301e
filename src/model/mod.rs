//! The model: the normalised reading, its clinical codes, the time model that dates it and the public
//! payloads it is published as (`vitalsd.reading.v1` and FHIR). Pure data and pure functions; no I/O, no clock reads.

pub mod clocks;
pub mod codes;
pub mod fhir;
pub mod fhir_codes;
pub mod measurement_time;
pub mod payload;
pub mod reading;
