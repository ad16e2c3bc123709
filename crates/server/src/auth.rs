//! Accounts: login, open registration, and Argon2id password hashing on a bounded pool.
//!
//! Hashing costs tens of milliseconds of CPU and ~19 MiB of memory by design, so it never
//! runs on the async workers: it runs in `spawn_blocking`, at most `pool` hashes at a time,
//! so a login storm queues up instead of starving chat.
//!
//! The 19 MiB of Argon2 memory are reused from hash to hash (a small pool of buffers, one
//! per hash running at once) instead of allocated each time: glibc's malloc keeps freed
//! blocks of that size in its per-thread arenas, so allocating them per hash on the many
//! blocking threads would leave the memory of a login storm held long after it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, ParamsString, PasswordHash, Salt, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
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
            HashCost::InsecureFast => Argon2::new(
                Algorithm::Argon2id,
                Version::V0x13,
                Params::new(8, 1, 1, None)
                    .expect("8 KiB, 1 pass, 1 lane: Argon2's minimum parameters are valid"),
            ),
        }
    }
}

/// Argon2 memory buffers kept for the next hash; at most [`POOLED_BUFFERS`].
static BUFFERS: Mutex<Vec<Vec<Block>>> = Mutex::new(Vec::new());

/// More than the hashes that run at once (the login pool is the number of cores).
const POOLED_BUFFERS: usize = 8;

/// Argon2 of `password` and `salt` into `out_len` bytes, in a pooled memory buffer.
fn argon2_output(
    argon: &Argon2<'_>,
    params: &Params,
    password: &[u8],
    salt: Salt<'_>,
    out_len: usize,
) -> argon2::password_hash::Result<Output> {
    let mut salt_buf = [0u8; 64];
    let salt = salt.decode_b64(&mut salt_buf)?;
    let pooled = BUFFERS.lock().unwrap_or_else(PoisonError::into_inner).pop();
    // No pooled buffer (the first hashes, or every buffer in use) is no failure: start
    // from an empty one, sized just below.
    let mut blocks = pooled.unwrap_or_default();
    blocks.resize(params.block_count(), Block::default());
    let output = Output::init_with(out_len, |out| {
        Ok(argon.hash_password_into_with_memory(password, salt, out, &mut blocks[..])?)
    });
    let mut pool = BUFFERS.lock().unwrap_or_else(PoisonError::into_inner);
    if pool.len() < POOLED_BUFFERS {
        pool.push(blocks);
    }
    output
}

/// Hashes `password` into a PHC string with a fresh random salt.
///
/// # Errors
/// Only if the hasher rejects its own parameters, which the fixed ones here never are.
pub fn hash_password(password: &str, cost: HashCost) -> Result<String, Failure> {
    let fail = |e: argon2::password_hash::Error| {
        Failure::new(ErrorCode::Unavailable, format!("cannot hash password: {e}"))
    };
    let argon = cost.argon2();
    let params = argon.params().clone();
    let salt = SaltString::generate(&mut OsRng);
    let out_len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let output = argon2_output(
        &argon,
        &params,
        password.as_bytes(),
        salt.as_salt(),
        out_len,
    )
    .map_err(fail)?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(fail)?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the PHC string `phc` (whatever Argon2 variant, version and
/// parameters it was made with). The comparison is constant-time.
pub fn verify_password(password: &str, phc: &str) -> bool {
    let check = || -> argon2::password_hash::Result<bool> {
        let hash = PasswordHash::new(phc)?;
        let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else {
            return Ok(false);
        };
        let algorithm = Algorithm::try_from(hash.algorithm)?;
        // A PHC string without `v=` means version 0x13, as for the argon2 crate's own
        // verifier.
        let version = hash
            .version
            .map(Version::try_from)
            .transpose()?
            .unwrap_or(Version::V0x13);
        let params = Params::try_from(&hash)?;
        let argon = Argon2::new(algorithm, version, params.clone());
        let computed = argon2_output(&argon, &params, password.as_bytes(), salt, expected.len())?;
        // `Output`'s equality is constant-time.
        Ok(computed == expected)
    };
    check().unwrap_or_else(|e| {
        // A stored hash that cannot be read (corrupt, or an unsupported algorithm): the
        // login fails, and the operator should hear why.
        tracing::warn!(error = %e, "password hash cannot be verified");
        false
    })
}

/// Logs users in against the store, creating accounts when registration is open.
#[derive(Clone)]
pub struct Authenticator {
    store: Arc<dyn Store>,
    registration: Registration,
    cost: HashCost,
    pool: Arc<Semaphore>,
    /// Logins waiting for the pool or being checked, and how many may be.
    queued: Arc<AtomicUsize>,
    queue: usize,
    /// Accounts created by a first login, for the metrics.
    created: Arc<AtomicU64>,
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
    /// An authenticator running at most `pool` hashes at once, with at most `queue` logins
    /// waiting for them or being checked.
    ///
    /// Hashes a dummy password first (once, at startup), to verify unknown user ids against.
    ///
    /// # Panics
    /// If hashing fails, which it cannot with the fixed Argon2 parameters of [`HashCost`]:
    /// better than an empty dummy hash, which would make a login for an unknown user id
    /// answer faster than one for a known id and so tell which ids exist.
    pub fn new(
        store: Arc<dyn Store>,
        registration: Registration,
        cost: HashCost,
        pool: usize,
        queue: usize,
    ) -> Authenticator {
        let dummy_hash = hash_password("not a password", cost)
            .expect("hashing with the fixed Argon2 parameters of HashCost cannot fail");
        Authenticator {
            store,
            registration,
            cost,
            pool: Arc::new(Semaphore::new(pool.max(1))),
            queued: Arc::new(AtomicUsize::new(0)),
            queue: queue.max(1),
            created: Arc::new(AtomicU64::new(0)),
            dummy_hash: dummy_hash.into(),
        }
    }

    /// Logins in the queue now: waiting for their password check or being checked.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Accounts created by a first login since the start.
    pub fn accounts_created(&self) -> u64 {
        self.created.load(Ordering::Relaxed)
    }

    /// A place in the login queue, given back when dropped.
    ///
    /// # Errors
    /// `503` when the queue is full.
    fn queue_place(&self) -> Result<QueuePlace, Failure> {
        let queued = self.queued.fetch_add(1, Ordering::AcqRel);
        let place = QueuePlace(self.queued.clone());
        if queued >= self.queue {
            tracing::warn!(queued, "login queue full");
            return Err(Failure::new(ErrorCode::Unavailable, LOGIN_QUEUE_FULL));
        }
        Ok(place)
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

    /// Checks the credentials; creates the account on first use when registration is open
    /// and `new_account` allows it (asked before the password is hashed, so that a refused
    /// registration costs no hash). Returns the user id as spelled at registration.
    ///
    /// Dropping the future before it is done gives its place in the queue back; a hash
    /// already running finishes on its thread and is thrown away.
    ///
    /// # Errors
    /// `401` with [`BAD_CREDENTIALS`] for an unknown user (registration closed) or a wrong
    /// password; `503` when the login queue is full or the store fails; `new_account`'s
    /// failure when it refuses.
    pub async fn login(
        &self,
        user_id: &UserId,
        password: &Password,
        new_account: impl FnOnce() -> Result<(), Failure>,
    ) -> Result<UserId, Failure> {
        let _place = self.queue_place()?;
        let unauthorized = || Failure::new(ErrorCode::Unauthorized, BAD_CREDENTIALS);
        let key = user_id.key();
        let mut account = self.store.account(key.clone()).await.map_err(storage)?;
        if account.is_none() && self.registration == Registration::Open {
            new_account()?;
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
                    self.created.fetch_add(1, Ordering::Relaxed);
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

/// The reason of the `fail 503` a login gets when the login queue is full.
pub const LOGIN_QUEUE_FULL: &str = "server busy, try again";

/// A place in the login queue: the count goes down when it is dropped.
struct QueuePlace(Arc<AtomicUsize>);

impl Drop for QueuePlace {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
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
    fn our_hashes_and_the_argon2_crates_verify_each_other() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        // Small but not minimal parameters, with a non-default output length.
        let params = Params::new(64, 2, 1, Some(24)).unwrap();
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let salt = SaltString::generate(&mut OsRng);
        let theirs = argon.hash_password(b"pa55", &salt).unwrap().to_string();
        assert!(verify_password("pa55", &theirs));
        assert!(!verify_password("pa56", &theirs));

        let ours = hash_password("pa55", HashCost::InsecureFast).unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default().verify_password(b"pa55", &parsed).is_ok());
        assert!(Argon2::default().verify_password(b"pa56", &parsed).is_err());
        // Same PHC layout as the crate's own.
        assert!(ours.starts_with("$argon2id$v=19$m=8,t=1,p=1$"), "{ours}");
    }

    #[test]
    fn other_variants_verify_and_garbage_does_not() {
        use argon2::password_hash::PasswordHasher;
        let params = Params::new(32, 1, 1, None).unwrap();
        let salt = SaltString::generate(&mut OsRng);
        for algorithm in [Algorithm::Argon2i, Algorithm::Argon2d] {
            let phc = Argon2::new(algorithm, Version::V0x10, params.clone())
                .hash_password(b"x", &salt)
                .unwrap()
                .to_string();
            assert!(verify_password("x", &phc), "{phc}");
            assert!(!verify_password("y", &phc), "{phc}");
        }
        for bad in [
            "",
            "$argon2id$",
            "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ",
            "$md5$x$y",
        ] {
            assert!(!verify_password("x", bad), "{bad}");
        }
    }

    #[test]
    fn the_dummy_hash_is_a_real_one() {
        let store = Arc::new(crate::store::MemoryStore::new(10));
        let auth = Authenticator::new(store, Registration::Open, HashCost::InsecureFast, 1, 1);
        assert!(auth.dummy_hash.starts_with("$argon2id$v=19$m=8,t=1,p=1$"));
        assert!(verify_password("not a password", &auth.dummy_hash));
    }

    #[test]
    fn the_login_queue_is_bounded_and_places_are_given_back() {
        let store: Arc<dyn Store> = Arc::new(crate::MemoryStore::new(10));
        let auth = Authenticator::new(store, Registration::Open, HashCost::InsecureFast, 1, 2);
        let first = auth.queue_place().map_err(|f| f.reason).expect("room");
        let second = auth.queue_place().map_err(|f| f.reason).expect("room");
        let full = auth.queue_place().err().expect("the queue is full");
        assert_eq!(
            full,
            Failure::new(ErrorCode::Unavailable, "server busy, try again")
        );
        drop(first);
        let third = auth
            .queue_place()
            .map_err(|f| f.reason)
            .expect("a place was given back");
        drop((second, third));
        assert_eq!(auth.queued.load(Ordering::Acquire), 0);
    }

    #[test]
    fn hash_and_verify() {
        let phc = hash_password("s3cret", HashCost::InsecureFast).unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify_password("s3cret", &phc));
        assert!(!verify_password("S3cret", &phc));
        assert!(!verify_password("s3cret", "not a phc string"));
    }
}
