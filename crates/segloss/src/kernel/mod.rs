//! How the overlap statistics and their gradient are computed.
//!
//! [`composed`] builds them from Burn tensor operations: it runs on every backend, Burn's
//! autodiff differentiates it, and it is the reference the fused kernels are tested against.
pub mod composed;
