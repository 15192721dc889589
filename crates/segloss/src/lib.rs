pub fn x() {}
pub mod metrics;
