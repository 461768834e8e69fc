//! One file per verb of the command line (`cli`); `main` dispatches to them.

pub mod check;
pub mod data;
pub mod report;
pub mod status;
pub mod sweep;
