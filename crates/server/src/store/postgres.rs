//! The PostgreSQL [`Store`]: accounts, offline mailboxes and history in a database that
//! several server processes (the cluster to come) and the administration commands share.
//!
//! **Connection.** [`DatabaseUrl`] parses a `postgres://user:password@host:port/dbname` URL
//! or a `key=value` connection string (as libpq does; a unix socket is a host that is a
//! path). Plain TCP or a unix socket only for now: TLS to PostgreSQL comes later, so use a
//! unix socket or a trusted network. The password is never shown: [`DatabaseUrl`]'s
//! `Display` and `Debug` print the user, hosts, ports and database name only.
//!
//! **Schema** (version [`PG_SCHEMA_VERSION`], one row per applied migration in
//! `schema_version`), the same model as the SQLite store:
//! - `accounts(key PRIMARY KEY, user_id, password_hash, created_ms, mailbox_len)`: `key`
//!   the case-folded id, `mailbox_len` the number of its mailbox rows, kept by the
//!   statements that insert and delete them (the increment is also the cap check);
//! - `mailbox(id PRIMARY KEY, recipient, sender, message, to_user, ts)`, indexed by
//!   `(recipient, id)`;
//! - `meta(name PRIMARY KEY, value)`: `max_message_id` (the message-id high-water mark) and
//!   `history_len` (the row count of `history`, for pruning by count);
//! - `revocations(id IDENTITY PRIMARY KEY, key, at_ms, kind)`, indexed by `at_ms`;
//! - `history(id PRIMARY KEY, conversation, sender, recipient, message, ts)`, indexed by
//!   `(conversation, id)` and by `ts`.
//!
//! Keys and conversations use the `"C"` collation (byte order): comparisons are cheap and
//! the range of an account's conversations (`alice/` up to `alice0`) is a range of the
//! index whatever the database's locale.
//!
//! **Migrations.** [`PostgresStore::migrate`] (`simpletextim-server migrate --database
//! URL`) applies the missing migrations in one transaction that first takes a
//! transaction-scoped advisory lock ([`MIGRATION_LOCK`]): two nodes migrating at once run
//! one after the other, and the second finds nothing to do. A server does not migrate on
//! its own: [`PostgresStore::connect`] refuses a database whose schema is older (or newer)
//! than this build's, with a message naming `migrate`, so that upgrading a shared database
//! stays an operator's decision.
//!
//! **Ordering.** One dispatcher task takes the requests in the order the [`Store`] methods
//! were called (each method puts its request into the dispatcher's queue, under one lock,
//! before it returns: the channel, or the overflow list of *Backpressure*) and runs them over a pool of [`PgOptions::pool_size`] connections, as a
//! readers–writer queue in call order:
//! - consecutive reads run concurrently, each on a pooled connection;
//! - a write waits until every read before it has finished, then it and every write queued
//!   right behind it run in one transaction, each in its own savepoint (one request's error
//!   rolls back that request alone, as in the SQLite store), and are answered after the
//!   commit (one commit for a burst: group commit);
//! - nothing after a write starts before that write has committed.
//!
//! So every operation sees exactly the operations called before it (the [`Store`] ordering
//! contract) within one `PostgresStore` (two stores, even in one process, are two
//! clients of the database). Between processes (an administration command,
//! another node) PostgreSQL's transactions give what they give; the rules that matter there
//! are below.
//!
//! **Backpressure.** The channel holds at most [`PgOptions::queue`] requests. A call that
//! finds it full (or finds requests already waiting) puts its request at the end of an
//! ordered overflow list, which the dispatcher moves into the channel as it takes requests
//! out, before anything called later. So a full channel delays the callers, who wait for
//! their answers, and neither drops nor reorders a request, nor depends on its future being
//! polled. What waits there is bounded by the callers: a session awaits each store request
//! before it reads its next command (one per session), the history writer has at most two
//! writes unfinished, the retention and revocation tasks one each. As a last guard the list
//! holds at most [`OVERFLOW_CAP`] requests; a call past it fails at once with
//! [`StoreError::Backend`] (the sender gets a `fail`, nothing is dropped silently).
//!
//! **Message ids across nodes.** `meta.max_message_id` is raised with
//! `UPDATE … SET value = $1 WHERE value < $1` by every write that stores a message, in that
//! write's transaction: the row lock makes concurrent raises from several nodes serialize,
//! and the mark only ever grows, so it stays the highest id ever stored whatever the order
//! in which nodes commit. (A sequence would hand out ids, which the hub assigns itself, and
//! could not be raised past ids taken elsewhere.)
//!
//! **Revocations and `at_ms`.** A password change or deletion locks the account row (its
//! `UPDATE`/`DELETE`), then takes `LOCK TABLE revocations IN SHARE ROW EXCLUSIVE MODE`
//! (so revocations commit in id order and a poller reading `id > last` never skips one),
//! and only then reads the clock for [`Revocation::at_ms`]. An account lookup reads the row
//! `FOR SHARE`: under MVCC a plain read would not wait for the change and could see the old
//! row after `at_ms`; a share lock waits for the changing transaction and then reads the
//! committed row. So a lookup that saw the old account took its lock before the change did,
//! earlier than `at_ms`; one that starts after `at_ms` sees the change. This relies on the
//! clocks of the machines involved agreeing (NTP): a skew shifts the boundary by as much.
//!
//! **Bounds.** The pool has at most [`PgOptions::pool_size`] connections (a read waits for
//! one); every statement has a server-side `statement_timeout`
//! ([`PgOptions::statement_timeout`]); connecting is bounded by
//! [`PgOptions::connect_timeout`]; a write transaction takes at most [`MAX_BATCH`] requests.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures::future::{BoxFuture, FutureExt};
use simpletextim_proto::{ChatMessage, Recipient};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;
use tokio_postgres::config::Host;

use super::rows::{chat, corrupt, parse_user_id, to_i64, to_u64};
use super::{
    Account, AccountInfo, Conversation, HistoryPage, HistoryQuery, PageLimit, REVOCATION_KEEP,
    Retention, Revocation, RevocationKind, Store, StoreError,
};

/// The schema version this build reads and writes (rows of `schema_version`).
pub const PG_SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// The key of the transaction-scoped advisory lock [`PostgresStore::migrate`] takes, so
/// that migrations from several nodes run one at a time (`"STIM"` in ASCII).
pub const MIGRATION_LOCK: i64 = 0x5354_494d;

/// Most requests that wait for room in the dispatcher's channel; past it a call fails with
/// [`StoreError::Backend`] (module documentation, *Backpressure*).
pub const OVERFLOW_CAP: usize = 1 << 20;

/// Most requests run in one write transaction.
pub const MAX_BATCH: usize = 1024;

/// Schema migrations: entry `i` takes a database from version `i` to `i + 1`. Never edit a
/// released entry; append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: the whole model of SQLite's schema version 4.
    r#"CREATE TABLE accounts (
         key           text COLLATE "C" PRIMARY KEY,
         user_id       text NOT NULL,
         password_hash text NOT NULL,
         created_ms    bigint NOT NULL,
         mailbox_len   bigint NOT NULL DEFAULT 0
     );
     CREATE TABLE mailbox (
         id        bigint PRIMARY KEY,
         recipient text COLLATE "C" NOT NULL,
         sender    text NOT NULL,
         message   text NOT NULL,
         to_user   text NOT NULL,
         ts        bigint NOT NULL
     );
     CREATE INDEX mailbox_by_recipient ON mailbox (recipient, id);
     CREATE TABLE meta (
         name  text COLLATE "C" PRIMARY KEY,
         value bigint NOT NULL
     );
     INSERT INTO meta (name, value) VALUES ('max_message_id', 0), ('history_len', 0);
     CREATE TABLE revocations (
         id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
         key   text COLLATE "C" NOT NULL,
         at_ms bigint NOT NULL,
         kind  text NOT NULL CHECK (kind IN ('password', 'deleted'))
     );
     CREATE INDEX revocations_by_time ON revocations (at_ms);
     CREATE TABLE history (
         id           bigint PRIMARY KEY,
         conversation text COLLATE "C" NOT NULL,
         sender       text NOT NULL,
         recipient    text,
         message      text NOT NULL,
         ts           bigint NOT NULL
     );
     CREATE INDEX history_by_conversation ON history (conversation, id);
     CREATE INDEX history_by_time ON history (ts);"#,
];

/// Settings of a [`PostgresStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgOptions {
    /// Most private messages kept for one offline user.
    pub mailbox_cap: usize,
    /// Most connections open to the database.
    pub pool_size: usize,
    /// Most requests waiting in the dispatcher's channel.
    pub queue: usize,
    /// The server-side `statement_timeout` of every connection.
    pub statement_timeout: Duration,
    /// How long connecting (and waiting for a pooled connection) may take.
    pub connect_timeout: Duration,
}

impl PgOptions {
    /// The defaults with this mailbox cap: 16 connections, 4096 queued requests, statements
    /// of at most 30 s, connections within 10 s.
    pub fn new(mailbox_cap: usize) -> PgOptions {
        PgOptions {
            mailbox_cap,
            pool_size: 16,
            queue: 4096,
            statement_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// A PostgreSQL connection URL or `key=value` string, parsed. `Display` and `Debug` never
/// show the password.
#[derive(Clone)]
pub struct DatabaseUrl {
    config: tokio_postgres::Config,
}

impl DatabaseUrl {
    /// The parsed configuration (password included).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }
}

impl FromStr for DatabaseUrl {
    type Err = PgError;

    /// Parses `s`. The error never repeats `s` (it may hold a password).
    fn from_str(s: &str) -> Result<DatabaseUrl, PgError> {
        let config = s.parse::<tokio_postgres::Config>().map_err(|e| {
            // tokio-postgres's parse errors name options, never their values.
            PgError::Url(e.to_string())
        })?;
        Ok(DatabaseUrl { config })
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        f.write_str("postgres://")?;
        if let Some(user) = c.get_user() {
            write!(f, "{user}@")?;
        }
        for (i, host) in c.get_hosts().iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match host {
                Host::Tcp(h) => f.write_str(h)?,
                #[cfg(unix)]
                Host::Unix(p) => write!(f, "[{}]", p.display())?,
            }
            if let Some(port) = c.get_ports().get(i).or(c.get_ports().first()) {
                write!(f, ":{port}")?;
            }
        }
        f.write_str("/")?;
        if let Some(db) = c.get_dbname() {
            f.write_str(db)?;
        }
        Ok(())
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

/// Why connecting to or migrating the database failed. The `Display` form is one line and
/// never holds the password.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The URL or connection string does not parse.
    #[error("not a PostgreSQL URL or connection string: {0}")]
    Url(String),
    /// The database cannot be reached or refused a statement.
    #[error("database {url}: {message}")]
    Database {
        /// The database, without password.
        url: String,
        /// What PostgreSQL or the client said.
        message: String,
    },
    /// The schema is older than this build's.
    #[error(
        "database {url} has schema version {found}, this server needs {PG_SCHEMA_VERSION}; \
         run: simpletextim-server migrate --database URL"
    )]
    NotMigrated {
        /// The database, without password.
        url: String,
        /// Its version (0: never migrated).
        found: u32,
    },
    /// The schema was written by a newer server.
    #[error(
        "database {url} has schema version {found}, newer than this server's \
         {PG_SCHEMA_VERSION}; use a newer server"
    )]
    TooNew {
        /// The database, without password.
        url: String,
        /// Its version.
        found: u32,
    },
}

impl From<PgError> for StoreError {
    fn from(e: PgError) -> StoreError {
        StoreError::Backend(e.to_string())
    }
}

/// What [`PostgresStore::migrate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    /// The version found.
    pub from: u32,
    /// The version now ([`PG_SCHEMA_VERSION`]).
    pub to: u32,
}

/// The PostgreSQL-backed [`Store`]. See the module documentation for the schema, the
/// ordering design and what holds across nodes.
pub struct PostgresStore {
    url: DatabaseUrl,
    submitter: Arc<Submitter>,
    dispatcher: Mutex<Option<JoinHandle<()>>>,
    mailbox_cap: usize,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Connects one connection with the options' timeouts (migrations, version check).
async fn connect_one(
    url: &DatabaseUrl,
    options: &PgOptions,
) -> Result<tokio_postgres::Client, PgError> {
    let config = session_config(url, options);
    let (client, connection) = config.connect(NoTls).await.map_err(|e| db_err(url, &e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "database connection ended");
        }
    });
    Ok(client)
}

/// `url`'s configuration with the options' timeouts and an application name (the URL's
/// own `connect_timeout`, `application_name` and `options` win; the statement timeout is
/// added after its `options`, so a `statement_timeout` there is overridden).
fn session_config(url: &DatabaseUrl, options: &PgOptions) -> tokio_postgres::Config {
    let mut config = url.config.clone();
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(options.connect_timeout);
    }
    if config.get_application_name().is_none() {
        config.application_name("simpletextim-server");
    }
    let timeout = format!(
        "-c statement_timeout={}",
        options.statement_timeout.as_millis().max(1)
    );
    let all = match config.get_options() {
        Some(theirs) if !theirs.trim().is_empty() => format!("{theirs} {timeout}"),
        _ => timeout,
    };
    config.options(all);
    config
}

fn db_err(url: &DatabaseUrl, e: &tokio_postgres::Error) -> PgError {
    PgError::Database {
        url: url.to_string(),
        message: pg_message(e),
    }
}

/// `e` on one line: PostgreSQL's own message when the server sent one.
fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => {
            let mut s = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                let c = cause.to_string();
                if !s.ends_with(&c) {
                    s.push_str(": ");
                    s.push_str(&c);
                }
                source = cause.source();
            }
            s.replace('\n', " ")
        }
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> StoreError {
        StoreError::Backend(pg_message(&e))
    }
}

/// The schema version of the database at `url` that `client` is connected to (0: never
/// migrated).
async fn schema_version(
    url: &DatabaseUrl,
    client: &tokio_postgres::Client,
) -> Result<u32, PgError> {
    let err = |e: tokio_postgres::Error| db_err(url, &e);
    let exists: bool = client
        .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])
        .await
        .map_err(err)?
        .try_get(0)
        .map_err(err)?;
    if !exists {
        return Ok(0);
    }
    let v: i32 = client
        .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
        .await
        .map_err(err)?
        .try_get(0)
        .map_err(err)?;
    version_of(url, v)
}

/// A version read from `schema_version`, which this server only ever writes positive.
fn version_of(url: &DatabaseUrl, v: i32) -> Result<u32, PgError> {
    u32::try_from(v).map_err(|_| PgError::Database {
        url: url.to_string(),
        message: format!("schema_version holds version {v}, which no server writes"),
    })
}

impl PostgresStore {
    /// Creates or upgrades the schema of the database at `url` to [`PG_SCHEMA_VERSION`],
    /// in one transaction under the advisory lock [`MIGRATION_LOCK`]: idempotent, and safe
    /// when several nodes run it at once.
    ///
    /// # Errors
    /// [`PgError::TooNew`] when the schema is newer than this build's (nothing changes);
    /// [`PgError::Database`] when the database cannot be reached or a statement fails
    /// (nothing changes).
    pub async fn migrate(url: &DatabaseUrl, options: &PgOptions) -> Result<Migrated, PgError> {
        let mut client = connect_one(url, options).await?;
        let err = |e: tokio_postgres::Error| db_err(url, &e);
        let tx = client.transaction().await.map_err(err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(err)?;
        // Created under the lock: a concurrent first migration cannot race this.
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_version (
                 version    integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await
        .map_err(err)?;
        let found: i32 = tx
            .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
            .await
            .map_err(err)?
            .try_get(0)
            .map_err(err)?;
        let found = version_of(url, found)?;
        if found > PG_SCHEMA_VERSION {
            return Err(PgError::TooNew {
                url: url.to_string(),
                found,
            });
        }
        for (from, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            tx.batch_execute(sql).await.map_err(err)?;
            let version = i32::try_from(from + 1).expect("fewer than 2^31 migrations");
            tx.execute(
                "INSERT INTO schema_version (version) VALUES ($1)",
                &[&version],
            )
            .await
            .map_err(err)?;
        }
        tx.commit().await.map_err(err)?;
        if found < PG_SCHEMA_VERSION {
            tracing::info!(database = %url, from = found, to = PG_SCHEMA_VERSION, "database schema migrated");
        }
        Ok(Migrated {
            from: found,
            to: PG_SCHEMA_VERSION,
        })
    }

    /// Checks that the database at `url` has this build's schema, builds the pool and starts
    /// the dispatcher task (on the current tokio runtime).
    ///
    /// # Errors
    /// [`PgError::NotMigrated`] or [`PgError::TooNew`] when the schema is not
    /// [`PG_SCHEMA_VERSION`]; [`PgError::Database`] when the database cannot be reached.
    pub async fn connect(url: &DatabaseUrl, options: PgOptions) -> Result<PostgresStore, PgError> {
        let client = connect_one(url, &options).await?;
        let found = schema_version(url, &client).await?;
        drop(client);
        if found < PG_SCHEMA_VERSION {
            return Err(PgError::NotMigrated {
                url: url.to_string(),
                found,
            });
        }
        if found > PG_SCHEMA_VERSION {
            return Err(PgError::TooNew {
                url: url.to_string(),
                found,
            });
        }
        let pool_size = options.pool_size.max(1);
        let manager = Manager::from_config(
            session_config(url, &options),
            NoTls,
            ManagerConfig {
                // A closed connection is detected and replaced; no query per checkout.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.connect_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| PgError::Database {
                url: url.to_string(),
                message: e.to_string(),
            })?;
        let (tx, rx) = mpsc::channel(options.queue.max(1));
        let submitter = Arc::new(Submitter {
            state: Mutex::new(SubmitState {
                tx: Some(tx),
                overflow: VecDeque::new(),
            }),
        });
        let dispatcher = Dispatcher {
            submitter: Arc::clone(&submitter),
            pool,
            reads: Arc::new(Semaphore::new(pool_size)),
            pool_size: u32::try_from(pool_size).unwrap_or(u32::MAX),
            mailbox_cap: options.mailbox_cap,
        };
        let handle = tokio::spawn(dispatcher.run(rx));
        Ok(PostgresStore {
            url: url.clone(),
            submitter,
            dispatcher: Mutex::new(Some(handle)),
            mailbox_cap: options.mailbox_cap,
        })
    }

    /// The database, without password.
    pub fn url(&self) -> &DatabaseUrl {
        &self.url
    }

    /// The mailbox cap this store enforces.
    pub fn mailbox_cap(&self) -> usize {
        self.mailbox_cap
    }

    /// Every account, sorted by key, with its mailbox size.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the database fails.
    pub fn list_accounts(&self) -> BoxFuture<'static, Result<Vec<AccountInfo>, StoreError>> {
        self.read(|c| list_accounts(c).boxed())
    }

    /// Finishes every request already queued, then stops the dispatcher and closes the
    /// connections. Requests made afterwards fail with [`StoreError::Backend`]; calling it
    /// twice is harmless.
    pub async fn close(&self) {
        self.submitter.close();
        let handle = self
            .dispatcher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(handle) = handle
            && let Err(e) = handle.await
        {
            tracing::error!(error = %e, "the store dispatcher failed");
        }
    }

    fn read<T, F>(&self, f: F) -> BoxFuture<'static, Result<T, StoreError>>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&'a Conn) -> BoxFuture<'a, Result<T, StoreError>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job = Job::Read(Box::new(ReadCall { f, tx }));
        self.submit(job, rx)
    }

    fn write<T, F>(&self, f: F) -> BoxFuture<'static, Result<T, StoreError>>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(
                &'a deadpool_postgres::Transaction<'a>,
                usize,
            ) -> BoxFuture<'a, Result<T, StoreError>>
            + Send
            + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job = Job::Write(Box::new(WriteCall {
            f: Some(f),
            result: None,
            tx,
        }));
        self.submit(job, rx)
    }

    /// Queues `job` in call order (see the module documentation, *Backpressure*) and
    /// returns the future of its answer.
    fn submit<T: Send + 'static>(
        &self,
        job: Job,
        rx: oneshot::Receiver<Result<T, StoreError>>,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let queued = self.submitter.queue(job);
        async move {
            queued?;
            rx.await.unwrap_or_else(|_| Err(closed()))
        }
        .boxed()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // The dispatcher finishes what is queued and stops once the channel closes.
        self.submitter.close();
    }
}

fn closed() -> StoreError {
    StoreError::Backend("the store is closed".into())
}

/// The ordered entrance of the dispatcher's channel (module documentation,
/// *Backpressure*).
struct Submitter {
    state: Mutex<SubmitState>,
}

struct SubmitState {
    /// `None` once closed.
    tx: Option<mpsc::Sender<Job>>,
    /// Requests that found the channel full, in call order. Never empty unless the channel
    /// has room, or is about to after the dispatcher's [`Submitter::refill`].
    overflow: VecDeque<Job>,
}

impl Submitter {
    /// At call time: the request goes into the channel, or behind the requests waiting for
    /// room; either way in call order.
    fn queue(&self, job: Job) -> Result<(), StoreError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = state.tx.as_ref() else {
            return Err(closed());
        };
        if state.overflow.is_empty() {
            match tx.try_send(job) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(closed()),
                Err(mpsc::error::TrySendError::Full(job)) => state.overflow.push_back(job),
            }
        } else if state.overflow.len() >= OVERFLOW_CAP {
            return Err(StoreError::Backend(format!(
                "the store is overloaded: {OVERFLOW_CAP} requests wait for the database"
            )));
        } else {
            state.overflow.push_back(job);
        }
        Ok(())
    }

    /// Moves waiting requests into the channel while it has room (the dispatcher calls it
    /// after each request it takes).
    fn refill(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let SubmitState { tx, overflow } = &mut *state;
        let Some(tx) = tx.as_ref() else {
            return;
        };
        while let Some(job) = overflow.pop_front() {
            match tx.try_send(job) {
                Ok(()) => {}
                Err(
                    mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job),
                ) => {
                    overflow.push_front(job);
                    return;
                }
            }
        }
    }

    /// After close, once the channel is empty: the next waiting request.
    fn take_overflow(&self) -> Option<Job> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .overflow
            .pop_front()
    }

    fn close(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).tx = None;
    }
}

/// A request for the dispatcher.
enum Job {
    Read(Box<dyn ReadJob>),
    Write(Box<dyn WriteJob>),
}

trait ReadJob: Send {
    fn run(self: Box<Self>, client: Option<&Conn>) -> BoxFuture<'_, ()>;
}

struct ReadCall<T, F> {
    f: F,
    tx: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> ReadJob for ReadCall<T, F>
where
    T: Send + 'static,
    F: for<'a> FnOnce(&'a Conn) -> BoxFuture<'a, Result<T, StoreError>> + Send + 'static,
{
    /// Runs the read on `client` (`None`: no connection could be had) and answers.
    fn run(self: Box<Self>, client: Option<&Conn>) -> BoxFuture<'_, ()> {
        let ReadCall { f, tx } = *self;
        async move {
            let result = match client {
                Some(c) => f(c).await,
                None => Err(StoreError::Backend("no database connection".into())),
            };
            // The caller may have dropped its future.
            let _ = tx.send(result);
        }
        .boxed()
    }
}

trait WriteJob: Send {
    /// Runs the write inside the open transaction; whether it succeeded.
    fn run<'a>(
        &'a mut self,
        tx: &'a deadpool_postgres::Transaction<'a>,
        mailbox_cap: usize,
    ) -> BoxFuture<'a, bool>;
    /// Sends the result, or `batch_error` when the transaction was not committed.
    fn answer(self: Box<Self>, batch_error: Option<&str>);
}

struct WriteCall<T, F> {
    f: Option<F>,
    result: Option<Result<T, StoreError>>,
    tx: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> WriteJob for WriteCall<T, F>
where
    T: Send + 'static,
    F: for<'a> FnOnce(
            &'a deadpool_postgres::Transaction<'a>,
            usize,
        ) -> BoxFuture<'a, Result<T, StoreError>>
        + Send
        + 'static,
{
    fn run<'a>(
        &'a mut self,
        tx: &'a deadpool_postgres::Transaction<'a>,
        mailbox_cap: usize,
    ) -> BoxFuture<'a, bool> {
        async move {
            let Some(f) = self.f.take() else {
                return false;
            };
            let result = f(tx, mailbox_cap).await;
            let ok = result.is_ok();
            self.result = Some(result);
            ok
        }
        .boxed()
    }

    fn answer(self: Box<Self>, batch_error: Option<&str>) {
        let result = match (batch_error, self.result) {
            (Some(e), _) => Err(StoreError::Backend(e.to_owned())),
            (None, Some(r)) => r,
            (None, None) => Err(StoreError::Backend("request was not executed".into())),
        };
        let _ = self.tx.send(result);
    }
}

/// The task that runs the requests in call order (module documentation, *Ordering*).
struct Dispatcher {
    submitter: Arc<Submitter>,
    pool: Pool,
    /// One permit per read that may run at once; a write takes them all.
    reads: Arc<Semaphore>,
    pool_size: u32,
    mailbox_cap: usize,
}

impl Dispatcher {
    async fn run(self, mut rx: mpsc::Receiver<Job>) {
        let mut next: Option<Job> = None;
        loop {
            let job = match next.take() {
                Some(job) => job,
                None => match self.recv(&mut rx).await {
                    Some(job) => job,
                    None => break,
                },
            };
            match job {
                Job::Read(read) => {
                    let Ok(permit) = Arc::clone(&self.reads).acquire_owned().await else {
                        break;
                    };
                    let pool = self.pool.clone();
                    tokio::spawn(async move {
                        let _permit = permit;
                        match pool.get().await {
                            Ok(client) => read.run(Some(&client)).await,
                            Err(e) => {
                                tracing::warn!(error = %e, "no database connection for a read");
                                read.run(None).await;
                            }
                        }
                    });
                }
                Job::Write(first) => {
                    // Every read called before this write has finished once all permits
                    // are here; none called after it starts before they are given back.
                    let Ok(all) = self.reads.acquire_many(self.pool_size).await else {
                        break;
                    };
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match self.try_recv(&mut rx) {
                            Some(Job::Write(w)) => batch.push(w),
                            Some(read) => {
                                next = Some(read);
                                break;
                            }
                            None => break,
                        }
                    }
                    self.run_batch(batch).await;
                    drop(all);
                }
            }
        }
        // Closed: wait for the reads still running before the pool goes.
        let _ = self.reads.acquire_many(self.pool_size).await;
        self.pool.close();
    }

    /// The next request in call order: from the channel, then (once it is closed and
    /// empty) what still waited for room.
    async fn recv(&self, rx: &mut mpsc::Receiver<Job>) -> Option<Job> {
        match rx.recv().await {
            Some(job) => {
                self.submitter.refill();
                Some(job)
            }
            None => self.submitter.take_overflow(),
        }
    }

    /// [`Dispatcher::recv`] without waiting.
    fn try_recv(&self, rx: &mut mpsc::Receiver<Job>) -> Option<Job> {
        match rx.try_recv() {
            Ok(job) => {
                self.submitter.refill();
                Some(job)
            }
            Err(mpsc::error::TryRecvError::Disconnected) => self.submitter.take_overflow(),
            Err(mpsc::error::TryRecvError::Empty) => None,
        }
    }

    /// Runs `batch` in one transaction, each write in a savepoint, and answers after the
    /// commit.
    async fn run_batch(&self, mut batch: Vec<Box<dyn WriteJob>>) {
        let mut client = match self.pool.get().await {
            Ok(c) => c,
            Err(e) => {
                let reason = format!("no database connection: {e}");
                for w in batch {
                    w.answer(Some(&reason));
                }
                return;
            }
        };
        let tx = match client.transaction().await {
            Ok(tx) => tx,
            Err(e) => {
                let reason = format!("cannot start a transaction: {}", pg_message(&e));
                for w in batch {
                    w.answer(Some(&reason));
                }
                return;
            }
        };
        let mut broken: Option<String> = None;
        for w in &mut batch {
            if let Err(e) = tx.batch_execute("SAVEPOINT request").await {
                broken = Some(format!("cannot open a savepoint: {}", pg_message(&e)));
                break;
            }
            let ok = w.run(&tx, self.mailbox_cap).await;
            let end = if ok {
                tx.batch_execute("RELEASE SAVEPOINT request").await
            } else {
                tx.batch_execute("ROLLBACK TO SAVEPOINT request; RELEASE SAVEPOINT request")
                    .await
            };
            if let Err(e) = end {
                broken = Some(format!("cannot close a savepoint: {}", pg_message(&e)));
                break;
            }
        }
        let outcome = match broken {
            Some(reason) => {
                // Dropping the transaction rolls it back.
                drop(tx);
                Err(reason)
            }
            None => tx
                .commit()
                .await
                .map_err(|e| format!("commit failed: {}", pg_message(&e))),
        };
        match outcome {
            Ok(()) => {
                for w in batch {
                    w.answer(None);
                }
            }
            Err(reason) => {
                tracing::error!(requests = batch.len(), error = %reason, "write transaction failed");
                for w in batch {
                    w.answer(Some(&reason));
                }
            }
        }
    }
}

impl Store for PostgresStore {
    fn account(&self, key: String) -> BoxFuture<'static, Result<Option<Account>, StoreError>> {
        self.read(move |c| async move { account(c, &key).await }.boxed())
    }

    fn create_account(&self, account: Account) -> BoxFuture<'static, Result<(), StoreError>> {
        self.write(move |tx, _| async move { create_account(tx, &account).await }.boxed())
    }

    fn enqueue(
        &self,
        recipient_key: String,
        message: ChatMessage,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        self.write(move |tx, cap| {
            async move { enqueue(tx, cap, &recipient_key, &message).await }.boxed()
        })
    }

    fn pending(&self, key: String) -> BoxFuture<'static, Result<Vec<ChatMessage>, StoreError>> {
        self.read(move |c| async move { pending(c, &key).await }.boxed())
    }

    fn delete_delivered(
        &self,
        key: String,
        ids: Vec<u64>,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        self.write(move |tx, _| async move { delete_delivered(tx, &key, &ids).await }.boxed())
    }

    fn max_message_id(&self) -> BoxFuture<'static, Result<u64, StoreError>> {
        self.read(|c| async move { meta(c, "max_message_id").await }.boxed())
    }

    fn set_password_hash(
        &self,
        key: String,
        password_hash: String,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        self.write(move |tx, _| {
            async move { set_password_hash(tx, &key, &password_hash).await }.boxed()
        })
    }

    fn delete_account(&self, key: String) -> BoxFuture<'static, Result<u64, StoreError>> {
        self.write(move |tx, _| async move { delete_account(tx, &key).await }.boxed())
    }

    fn revocations_after(
        &self,
        after_id: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<Revocation>, StoreError>> {
        self.read(move |c| async move { revocations_after(c, after_id, limit).await }.boxed())
    }

    fn last_revocation_id(&self) -> BoxFuture<'static, Result<u64, StoreError>> {
        self.read(|c| {
            async move {
                let v: i64 = c
                    .query_one(
                        &c.prepare_cached("SELECT coalesce(max(id), 0) FROM revocations")
                            .await?,
                        &[],
                    )
                    .await?
                    .try_get(0)?;
                to_u64(v)
            }
            .boxed()
        })
    }

    fn append_history(
        &self,
        messages: Vec<ChatMessage>,
    ) -> BoxFuture<'static, Result<(), StoreError>> {
        self.write(move |tx, _| async move { append_history(tx, &messages).await }.boxed())
    }

    fn history(
        &self,
        conversation: Conversation,
        query: HistoryQuery,
        limit: PageLimit,
    ) -> BoxFuture<'static, Result<HistoryPage, StoreError>> {
        self.read(move |c| async move { history(c, &conversation, query, limit).await }.boxed())
    }

    fn prune_history(
        &self,
        retention: Retention,
        now_ms: u64,
        max_rows: u64,
    ) -> BoxFuture<'static, Result<u64, StoreError>> {
        self.write(move |tx, _| {
            async move { prune_history(tx, retention, now_ms, max_rows).await }.boxed()
        })
    }
}

type Tx<'a> = deadpool_postgres::Transaction<'a>;

/// A pooled connection, with its cache of prepared statements (each statement is parsed
/// once per connection, not on every call).
type Conn = deadpool_postgres::ClientWrapper;

async fn account(c: &Conn, key: &str) -> Result<Option<Account>, StoreError> {
    // FOR SHARE: waits for a password change or deletion in progress and then reads the
    // committed row (module documentation, *Revocations*).
    let row = c
        .query_opt(
            &c.prepare_cached(
                "SELECT user_id, password_hash, created_ms FROM accounts WHERE key = $1 FOR SHARE",
            )
            .await?,
            &[&key],
        )
        .await?;
    row.map(|r| {
        Ok(Account {
            user_id: parse_user_id(r.try_get(0)?)?,
            password_hash: r.try_get(1)?,
            created_ms: to_u64(r.try_get(2)?)?,
        })
    })
    .transpose()
}

async fn create_account(tx: &Tx<'_>, account: &Account) -> Result<(), StoreError> {
    let inserted = tx
        .execute(
            &tx.prepare_cached(
                "INSERT INTO accounts (key, user_id, password_hash, created_ms)
             VALUES ($1, $2, $3, $4) ON CONFLICT (key) DO NOTHING",
            )
            .await?,
            &[
                &account.user_id.key(),
                &account.user_id.as_str(),
                &account.password_hash,
                &to_i64(account.created_ms)?,
            ],
        )
        .await?;
    if inserted == 0 {
        return Err(StoreError::AccountExists(account.user_id.to_string()));
    }
    Ok(())
}

async fn enqueue(
    tx: &Tx<'_>,
    mailbox_cap: usize,
    recipient_key: &str,
    message: &ChatMessage,
) -> Result<(), StoreError> {
    let id = to_i64(message.id)?;
    let ts = to_i64(message.ts)?;
    let cap = i64::try_from(mailbox_cap).unwrap_or(i64::MAX);
    // The count and the cap check in one statement that locks the account row: concurrent
    // enqueues (other nodes too) for one recipient wait for each other here.
    let counted = tx
        .execute(
            &tx.prepare_cached(
                "UPDATE accounts SET mailbox_len = mailbox_len + 1
             WHERE key = $1 AND mailbox_len < $2",
            )
            .await?,
            &[&recipient_key, &cap],
        )
        .await?;
    if counted == 0 {
        let exists = tx
            .query_opt(
                &tx.prepare_cached("SELECT 1 FROM accounts WHERE key = $1")
                    .await?,
                &[&recipient_key],
            )
            .await?
            .is_some();
        return Err(if exists {
            StoreError::MailboxFull(recipient_key.to_owned())
        } else {
            StoreError::NoSuchUser(recipient_key.to_owned())
        });
    }
    tx.execute(
        &tx.prepare_cached(
            "INSERT INTO mailbox (id, recipient, sender, message, to_user, ts)
         VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .await?,
        &[
            &id,
            &recipient_key,
            &message.user_id.as_str(),
            &message.message,
            &message.to.as_str(),
            &ts,
        ],
    )
    .await?;
    insert_history(tx, std::slice::from_ref(message)).await
}

/// Inserts the history rows of `messages` whose ids have none, counts them in
/// `meta.history_len`, and raises the message-id high-water mark to their highest id.
async fn insert_history(tx: &Tx<'_>, messages: &[ChatMessage]) -> Result<(), StoreError> {
    let Some(max) = messages.iter().map(|m| m.id).max() else {
        return Ok(());
    };
    let mut ids = Vec::with_capacity(messages.len());
    let mut conversations = Vec::with_capacity(messages.len());
    let mut senders = Vec::with_capacity(messages.len());
    let mut recipients = Vec::with_capacity(messages.len());
    let mut texts = Vec::with_capacity(messages.len());
    let mut tss = Vec::with_capacity(messages.len());
    for m in messages {
        ids.push(to_i64(m.id)?);
        conversations.push(Conversation::of(&m.user_id, &m.to).key().to_owned());
        senders.push(m.user_id.as_str());
        recipients.push(match &m.to {
            Recipient::Everyone => None,
            Recipient::User(u) => Some(u.as_str()),
        });
        texts.push(m.message.as_str());
        tss.push(to_i64(m.ts)?);
    }
    let inserted = tx
        .execute(
            &tx.prepare_cached(
                "INSERT INTO history (id, conversation, sender, recipient, message, ts)
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[],
                                  $5::text[], $6::bigint[])
             ON CONFLICT (id) DO NOTHING",
            )
            .await?,
            &[&ids, &conversations, &senders, &recipients, &texts, &tss],
        )
        .await?;
    count_history(tx, i64::try_from(inserted).unwrap_or(i64::MAX)).await?;
    tx.execute(
        &tx.prepare_cached(
            "UPDATE meta SET value = $1 WHERE name = 'max_message_id' AND value < $1",
        )
        .await?,
        &[&to_i64(max)?],
    )
    .await?;
    Ok(())
}

/// Adds `delta` (negative: rows deleted) to `meta.history_len`.
async fn count_history(tx: &Tx<'_>, delta: i64) -> Result<(), StoreError> {
    if delta != 0 {
        tx.execute(
            &tx.prepare_cached("UPDATE meta SET value = value + $1 WHERE name = 'history_len'")
                .await?,
            &[&delta],
        )
        .await?;
    }
    Ok(())
}

async fn pending(c: &Conn, key: &str) -> Result<Vec<ChatMessage>, StoreError> {
    let rows = c
        .query(
            &c.prepare_cached(
                "SELECT sender, message, to_user, id, ts FROM mailbox
             WHERE recipient = $1 ORDER BY id",
            )
            .await?,
            &[&key],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let to: &str = r.try_get(2)?;
            let to = to
                .parse::<Recipient>()
                .map_err(|e| corrupt(format!("recipient {to:?}: {}", e.reason)))?;
            Ok(chat(
                parse_user_id(r.try_get(0)?)?,
                r.try_get(1)?,
                to,
                to_u64(r.try_get(3)?)?,
                to_u64(r.try_get(4)?)?,
            ))
        })
        .collect()
}

async fn delete_delivered(tx: &Tx<'_>, key: &str, ids: &[u64]) -> Result<(), StoreError> {
    // Ids above i64::MAX cannot have been stored.
    let ids: Vec<i64> = ids
        .iter()
        .filter_map(|&id| i64::try_from(id).ok())
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    let deleted = tx
        .execute(
            &tx.prepare_cached("DELETE FROM mailbox WHERE recipient = $1 AND id = ANY($2)")
                .await?,
            &[&key, &ids],
        )
        .await?;
    if deleted > 0 {
        tx.execute(
            &tx.prepare_cached("UPDATE accounts SET mailbox_len = mailbox_len - $2 WHERE key = $1")
                .await?,
            &[&key, &i64::try_from(deleted).unwrap_or(i64::MAX)],
        )
        .await?;
    }
    Ok(())
}

async fn meta(c: &Conn, name: &str) -> Result<u64, StoreError> {
    let v: Option<i64> = c
        .query_opt(
            &c.prepare_cached("SELECT value FROM meta WHERE name = $1")
                .await?,
            &[&name],
        )
        .await?
        .map(|r| r.try_get(0))
        .transpose()?;
    to_u64(v.unwrap_or(0))
}

async fn set_password_hash(tx: &Tx<'_>, key: &str, password_hash: &str) -> Result<(), StoreError> {
    let changed = tx
        .execute(
            &tx.prepare_cached("UPDATE accounts SET password_hash = $2 WHERE key = $1")
                .await?,
            &[&key, &password_hash],
        )
        .await?;
    if changed == 0 {
        return Err(StoreError::NoSuchUser(key.to_owned()));
    }
    record_revocation(tx, key, RevocationKind::PasswordChanged).await
}

async fn delete_account(tx: &Tx<'_>, key: &str) -> Result<u64, StoreError> {
    // The account row first: it locks it (lookups wait, see *Revocations*), and the
    // savepoint undoes everything if there is none.
    let removed = tx
        .execute(
            &tx.prepare_cached("DELETE FROM accounts WHERE key = $1")
                .await?,
            &[&key],
        )
        .await?;
    if removed == 0 {
        return Err(StoreError::NoSuchUser(key.to_owned()));
    }
    let messages = tx
        .execute(
            &tx.prepare_cached("DELETE FROM mailbox WHERE recipient = $1")
                .await?,
            &[&key],
        )
        .await?;
    // Its private conversations: where it is the first user, a range of the conversation
    // index ('0' follows '/'); where it is the second, a scan of the private rows (a rare
    // administrator's command pays for the index the live path does without).
    let first = tx
        .execute(
            &tx.prepare_cached(
                "DELETE FROM history
             WHERE conversation >= $1 || '/' AND conversation < $1 || '0'",
            )
            .await?,
            &[&key],
        )
        .await?;
    let second = tx
        .execute(
            &tx.prepare_cached(
                "DELETE FROM history WHERE recipient IS NOT NULL
             AND split_part(conversation, '/', 2) = $1",
            )
            .await?,
            &[&key],
        )
        .await?;
    count_history(
        tx,
        -i64::try_from(first.saturating_add(second)).unwrap_or(i64::MAX),
    )
    .await?;
    record_revocation(tx, key, RevocationKind::AccountDeleted).await?;
    Ok(messages)
}

/// Records that `key`'s sessions must end and prunes revocations older than
/// [`REVOCATION_KEEP`], in the change's transaction, after the change locked the account
/// row (module documentation, *Revocations*).
async fn record_revocation(tx: &Tx<'_>, key: &str, kind: RevocationKind) -> Result<(), StoreError> {
    // Revocations commit one at a time, in id order; reads are not blocked.
    tx.batch_execute("LOCK TABLE revocations IN SHARE ROW EXCLUSIVE MODE")
        .await?;
    let at_ms = to_i64(crate::now_ms())?;
    let kind = match kind {
        RevocationKind::PasswordChanged => "password",
        RevocationKind::AccountDeleted => "deleted",
    };
    tx.execute(
        &tx.prepare_cached("INSERT INTO revocations (key, at_ms, kind) VALUES ($1, $2, $3)")
            .await?,
        &[&key, &at_ms, &kind],
    )
    .await?;
    let keep = i64::try_from(REVOCATION_KEEP.as_millis()).unwrap_or(i64::MAX);
    tx.execute(
        &tx.prepare_cached("DELETE FROM revocations WHERE at_ms < $1")
            .await?,
        &[&at_ms.saturating_sub(keep)],
    )
    .await?;
    Ok(())
}

async fn revocations_after(
    c: &Conn,
    after_id: u64,
    limit: usize,
) -> Result<Vec<Revocation>, StoreError> {
    let Ok(after_id) = i64::try_from(after_id) else {
        return Ok(Vec::new());
    };
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = c
        .query(
            &c.prepare_cached(
                "SELECT id, key, at_ms, kind FROM revocations WHERE id > $1 ORDER BY id LIMIT $2",
            )
            .await?,
            &[&after_id, &limit],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let kind = match r.try_get::<_, &str>(3)? {
                "password" => RevocationKind::PasswordChanged,
                "deleted" => RevocationKind::AccountDeleted,
                other => return Err(corrupt(format!("revocation kind {other:?}"))),
            };
            Ok(Revocation {
                id: to_u64(r.try_get(0)?)?,
                key: r.try_get(1)?,
                at_ms: to_u64(r.try_get(2)?)?,
                kind,
            })
        })
        .collect()
}

async fn append_history(tx: &Tx<'_>, messages: &[ChatMessage]) -> Result<(), StoreError> {
    insert_history(tx, messages).await
}

async fn history(
    c: &Conn,
    conversation: &Conversation,
    query: HistoryQuery,
    limit: PageLimit,
) -> Result<HistoryPage, StoreError> {
    const COLUMNS: &str = "SELECT sender, recipient, message, id, ts FROM history";
    // One row more than the limit, in the direction asked: whether there is more.
    let fetch = i64::try_from(limit.get() + 1).unwrap_or(i64::MAX);
    let key = conversation.key();
    let (sql, anchor) = match query {
        HistoryQuery::Latest => (
            format!("{COLUMNS} WHERE conversation = $1 AND id <= $2 ORDER BY id DESC LIMIT $3"),
            i64::MAX,
        ),
        // An anchor above i64::MAX is above every stored id.
        HistoryQuery::Before(id) => (
            format!("{COLUMNS} WHERE conversation = $1 AND id < $2 ORDER BY id DESC LIMIT $3"),
            i64::try_from(id).unwrap_or(i64::MAX),
        ),
        HistoryQuery::After(id) => match i64::try_from(id) {
            Ok(id) => (
                format!("{COLUMNS} WHERE conversation = $1 AND id > $2 ORDER BY id LIMIT $3"),
                id,
            ),
            Err(_) => return Ok(HistoryPage::default()),
        },
    };
    let rows = c
        .query(&c.prepare_cached(&sql).await?, &[&key, &anchor, &fetch])
        .await?;
    let mut messages = Vec::with_capacity(rows.len());
    for r in &rows {
        let to = match r.try_get::<_, Option<&str>>(1)? {
            None => Recipient::Everyone,
            Some(u) => Recipient::User(parse_user_id(u)?),
        };
        messages.push(chat(
            parse_user_id(r.try_get(0)?)?,
            r.try_get(2)?,
            to,
            to_u64(r.try_get(3)?)?,
            to_u64(r.try_get(4)?)?,
        ));
    }
    let more = messages.len() > limit.get();
    messages.truncate(limit.get());
    if query.goes_back() {
        messages.reverse();
    }
    Ok(HistoryPage { messages, more })
}

async fn prune_history(
    tx: &Tx<'_>,
    retention: Retention,
    now_ms: u64,
    max_rows: u64,
) -> Result<u64, StoreError> {
    let budget = i64::try_from(max_rows).unwrap_or(i64::MAX);
    let mut deleted: i64 = 0;
    if let Some(max) = retention.max_messages {
        let kept: i64 = tx
            .query_opt(
                &tx.prepare_cached("SELECT value FROM meta WHERE name = 'history_len'")
                    .await?,
                &[],
            )
            .await?
            .map(|r| r.try_get(0))
            .transpose()?
            .unwrap_or(0);
        let over = kept
            .saturating_sub(i64::try_from(max).unwrap_or(i64::MAX))
            .clamp(0, budget);
        if over > 0 {
            let n = tx
                .execute(
                    &tx.prepare_cached(
                        "DELETE FROM history WHERE id IN
                     (SELECT id FROM history ORDER BY id LIMIT $1)",
                    )
                    .await?,
                    &[&over],
                )
                .await?;
            deleted += i64::try_from(n).unwrap_or(i64::MAX);
        }
    }
    if let Some(cutoff) = retention.cutoff_ms(now_ms)
        && deleted < budget
    {
        let n = tx
            .execute(
                &tx.prepare_cached(
                    "DELETE FROM history WHERE id IN
                 (SELECT id FROM history WHERE ts < $1 ORDER BY ts LIMIT $2)",
                )
                .await?,
                &[
                    &i64::try_from(cutoff).unwrap_or(i64::MAX),
                    &(budget - deleted),
                ],
            )
            .await?;
        deleted += i64::try_from(n).unwrap_or(i64::MAX);
    }
    count_history(tx, -deleted).await?;
    to_u64(deleted)
}

async fn list_accounts(c: &Conn) -> Result<Vec<AccountInfo>, StoreError> {
    let rows = c
        .query(
            &c.prepare_cached("SELECT user_id, created_ms, mailbox_len FROM accounts ORDER BY key")
                .await?,
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(AccountInfo {
                user_id: parse_user_id(r.try_get(0)?)?,
                created_ms: to_u64(r.try_get(1)?)?,
                pending: to_u64(r.try_get(2)?)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_is_shown_without_its_password() -> Result<(), PgError> {
        let url: DatabaseUrl = "postgres://alice:s3cret@db.example:6543/chat".parse()?;
        assert_eq!(url.to_string(), "postgres://alice@db.example:6543/chat");
        assert_eq!(
            format!("{url:?}"),
            "DatabaseUrl(postgres://alice@db.example:6543/chat)"
        );
        let kv: DatabaseUrl = "host=/run/pg user=bob password='p w' dbname=x".parse()?;
        assert_eq!(kv.to_string(), "postgres://bob@[/run/pg]/x");
        Ok(())
    }

    #[test]
    fn a_bad_url_is_refused_without_repeating_it() {
        let e = "postgres://alice:s3cret@db:notaport/chat"
            .parse::<DatabaseUrl>()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.starts_with("not a PostgreSQL URL"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
    }
}
