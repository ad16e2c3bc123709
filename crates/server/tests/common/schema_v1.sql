-- The schema of version 1, exactly as the version-1 server wrote it (migration 1 of
-- src/store/sqlite.rs). Frozen: the upgrade tests open a database made with it.
CREATE TABLE accounts (
         key           TEXT PRIMARY KEY NOT NULL,
         user_id       TEXT NOT NULL,
         password_hash TEXT NOT NULL,
         created_ms    INTEGER NOT NULL,
         mailbox_len   INTEGER NOT NULL DEFAULT 0
     ) WITHOUT ROWID;
     CREATE TABLE mailbox (
         id        INTEGER PRIMARY KEY,
         recipient TEXT NOT NULL,
         sender    TEXT NOT NULL,
         message   TEXT NOT NULL,
         to_user   TEXT NOT NULL,
         ts        INTEGER NOT NULL
     );
     CREATE INDEX mailbox_by_recipient ON mailbox (recipient, id);
     -- Keeps accounts.mailbox_len equal to the recipient's row count whoever writes (even
     -- the sqlite3 shell), so the cap check is one row lookup, not a count of the mailbox.
     CREATE TRIGGER mailbox_insert AFTER INSERT ON mailbox BEGIN
         UPDATE accounts SET mailbox_len = mailbox_len + 1 WHERE key = NEW.recipient;
     END;
     CREATE TRIGGER mailbox_delete AFTER DELETE ON mailbox BEGIN
         UPDATE accounts SET mailbox_len = mailbox_len - 1 WHERE key = OLD.recipient;
     END;
     CREATE TABLE meta (
         name  TEXT PRIMARY KEY NOT NULL,
         value INTEGER NOT NULL
     ) WITHOUT ROWID;
     INSERT INTO meta (name, value) VALUES ('max_message_id', 0);
