//! Unit tests of the state updates.
