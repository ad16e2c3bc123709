//! Turning database values into the store's types, and back, for both SQL stores: the
//! one place they build a [`ChatMessage`] read back, and the errors a value that cannot
//! be stored or read back becomes.

use simpletextim_proto::{ChatMessage, Recipient, UserId};

use super::StoreError;

/// A message as read back from the database.
pub(super) fn chat(
    user_id: UserId,
    message: String,
    to: Recipient,
    id: u64,
    ts: u64,
) -> ChatMessage {
    ChatMessage {
        r#ref: None,
        user_id,
        message,
        to,
        id,
        ts,
    }
}

/// What the database holds cannot be a value of ours.
pub(super) fn corrupt(what: String) -> StoreError {
    StoreError::Backend(format!("corrupt database: {what}"))
}

/// A user id read back from the database.
pub(super) fn parse_user_id(s: &str) -> Result<UserId, StoreError> {
    UserId::new(s).map_err(|e| corrupt(format!("user id {s:?}: {}", e.reason)))
}

/// A number to store in a signed 64-bit column.
pub(super) fn to_i64(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Backend(format!("{v} is too large to store")))
}

/// A number read back from a signed 64-bit column.
pub(super) fn to_u64(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| corrupt(format!("negative value {v}")))
}
