//! The SimpleTextIM server (work in progress: the store layer).

pub mod store;
