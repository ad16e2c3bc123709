//! Accounts: login, open registration, and Argon2id password hashing on a bounded pool.
//!
//! Hashing costs tens of milliseconds of CPU and ~19 MiB of memory by design, so it never
//! runs on the async workers: it runs in `spawn_blocking`, at most `pool` hashes at a time,
//! so a login storm queues up instead of starving chat.

use std::sync::Arc;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use simpletextim_proto::{ErrorCode, Failure, Password, UserId};
use tokio::sync::Semaphore;

use crate::store::{Account, Store, StoreError};

/// The one reason given for every credential failure, so that a 401 does not tell whether
/// the user id exists.
pub const BAD_CREDENTIALS: &str = "invalid user id or password";

/// Who may create an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Registration {
    /// The first login of a free user id creates the account.
    #[default]
    Open,
    /// Only accounts made by an administrator can log in.
    Closed,
}

/// Argon2id parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashCost {
    /// The `argon2` crate's defaults (OWASP's recommendation: 19 MiB, 2 passes).
    Default,
    /// Minimal parameters (8 KiB, 1 pass): for benchmarks and tests only.
    InsecureFast,
}

impl HashCost {
    fn argon2(self) -> Argon2<'static> {
        match self {
            HashCost::Default => Argon2::default(),
            HashCost::InsecureFast => match Params::new(8, 1, 1, None) {
                Ok(p) => Argon2::new(Algorithm::Argon2id, Version::V0x13, p),
                Err(_) => Argon2::default(),
            },
        }
    }
}

/// Hashes `password` into a PHC string with a fresh random salt.
///
/// # Errors
/// Only if the hasher rejects its own parameters, which the fixed ones here never are.
pub fn hash_password(password: &str, cost: HashCost) -> Result<String, Failure> {
    let salt = SaltString::generate(&mut OsRng);
    cost.argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Failure::new(ErrorCode::Unavailable, format!("cannot hash password: {e}")))
}

/// Whether `password` matches the PHC string `phc` (whatever parameters it was made with).
pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(hash) => Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok(),
        Err(_) => false,
    }
}

/// Logs users in against the store, creating accounts when registration is open.
#[derive(Clone)]
pub struct Authenticator {
    store: Arc<dyn Store>,
    registration: Registration,
    cost: HashCost,
    pool: Arc<Semaphore>,
    /// Verified against when the user id is unknown, so both failures take as long.
    dummy_hash: Arc<str>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("registration", &self.registration)
            .field("cost", &self.cost)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator running at most `pool` hashes at once.
    pub fn new(
        store: Arc<dyn Store>,
        registration: Registration,
        cost: HashCost,
        pool: usize,
    ) -> Authenticator {
        let dummy_hash = hash_password("not a password", cost).unwrap_or_default();
        Authenticator {
            store,
            registration,
            cost,
            pool: Arc::new(Semaphore::new(pool.max(1))),
            dummy_hash: dummy_hash.into(),
        }
    }

    /// Runs a CPU-heavy closure on the blocking pool, at most `pool` at a time.
    async fn hashing<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Failure> {
        let unavailable = || Failure::new(ErrorCode::Unavailable, "server busy, try again");
        let _permit = self.pool.acquire().await.map_err(|_| unavailable())?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|_| unavailable())
    }

    /// Checks the credentials; creates the account on first use when registration is open.
    /// Returns the user id as spelled at registration.
    ///
    /// # Errors
    /// `401` with [`BAD_CREDENTIALS`] for an unknown user (registration closed) or a wrong
    /// password; `503` when the store fails.
    pub async fn login(&self, user_id: &UserId, password: &Password) -> Result<UserId, Failure> {
        let unauthorized = || Failure::new(ErrorCode::Unauthorized, BAD_CREDENTIALS);
        let key = user_id.key();
        let mut account = self.store.account(key.clone()).await.map_err(storage)?;
        if account.is_none() && self.registration == Registration::Open {
            let pw = password.expose().to_owned();
            let cost = self.cost;
            let phc = self.hashing(move || hash_password(&pw, cost)).await??;
            let created = Account {
                user_id: user_id.clone(),
                password_hash: phc,
                created_ms: crate::now_ms(),
            };
            match self.store.create_account(created).await {
                Ok(()) => {
                    tracing::info!(user = %user_id, "account created");
                    return Ok(user_id.clone());
                }
                // Lost a race with another first login of the same id: verify against it.
                Err(StoreError::AccountExists(_)) => {
                    account = self.store.account(key).await.map_err(storage)?;
                }
                Err(e) => return Err(storage(e)),
            }
        }
        let (phc, registered) = match account {
            Some(a) => (Arc::<str>::from(a.password_hash), Some(a.user_id)),
            None => (self.dummy_hash.clone(), None),
        };
        let pw = password.expose().to_owned();
        let ok = self.hashing(move || verify_password(&pw, &phc)).await?;
        match registered {
            Some(id) if ok => Ok(id),
            _ => Err(unauthorized()),
        }
    }
}

fn storage(e: StoreError) -> Failure {
    tracing::error!(error = %e, "store failure");
    Failure::new(
        ErrorCode::Unavailable,
        "storage unavailable, try again later",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let phc = hash_password("s3cret", HashCost::InsecureFast).unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify_password("s3cret", &phc));
        assert!(!verify_password("S3cret", &phc));
        assert!(!verify_password("s3cret", "not a phc string"));
    }
}
