//! The library's tables and their migrations (`PRAGMA user_version` is the schema version).

use rusqlite::Connection;

/// The schema version this build writes.
pub const VERSION: i64 = 2;

/// Why a database could not be prepared.
pub enum SchemaError {
    /// SQLite failed.
    Sql(rusqlite::Error),
    /// The file has a newer schema than this build knows.
    Newer(i64),
}

impl From<rusqlite::Error> for SchemaError {
    fn from(e: rusqlite::Error) -> Self {
        SchemaError::Sql(e)
    }
}

/// Migration `i` takes a database from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1: the first schema.
    "CREATE TABLE photos(
        id INTEGER PRIMARY KEY,
        sha256 TEXT NOT NULL UNIQUE,
        width INTEGER,
        height INTEGER,
        size INTEGER,
        first_seen INTEGER NOT NULL,
        last_seen INTEGER NOT NULL
    );
    CREATE TABLE paths(
        path BLOB PRIMARY KEY,
        photo_id INTEGER NOT NULL REFERENCES photos(id) ON DELETE CASCADE,
        size INTEGER,
        mtime_ns INTEGER,
        seen_at INTEGER NOT NULL
    );
    CREATE INDEX paths_photo ON paths(photo_id);
    CREATE TABLE pipelines(
        id INTEGER PRIMARY KEY,
        key TEXT NOT NULL UNIQUE,
        model TEXT NOT NULL,
        detector TEXT NOT NULL,
        dim INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE analyses(
        photo_id INTEGER NOT NULL REFERENCES photos(id) ON DELETE CASCADE,
        pipeline_id INTEGER NOT NULL REFERENCES pipelines(id) ON DELETE CASCADE,
        faces INTEGER NOT NULL,
        central BLOB,
        analyzed_at INTEGER NOT NULL,
        PRIMARY KEY(photo_id, pipeline_id)
    ) WITHOUT ROWID;
    CREATE TABLE faces(
        id INTEGER PRIMARY KEY,
        photo_id INTEGER NOT NULL REFERENCES photos(id) ON DELETE CASCADE,
        pipeline_id INTEGER NOT NULL REFERENCES pipelines(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        x1 REAL NOT NULL, y1 REAL NOT NULL, x2 REAL NOT NULL, y2 REAL NOT NULL,
        score REAL NOT NULL,
        landmarks BLOB NOT NULL,
        UNIQUE(photo_id, pipeline_id, idx)
    );
    CREATE INDEX faces_pipeline ON faces(pipeline_id);
    CREATE TABLE embeddings(
        face_id INTEGER PRIMARY KEY REFERENCES faces(id) ON DELETE CASCADE,
        vector BLOB NOT NULL
    );
    CREATE TABLE people(
        id INTEGER PRIMARY KEY,
        name TEXT UNIQUE,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE assignments(
        face_id INTEGER PRIMARY KEY REFERENCES faces(id) ON DELETE CASCADE,
        person_id INTEGER NOT NULL REFERENCES people(id) ON DELETE CASCADE,
        source TEXT NOT NULL CHECK(source IN ('enrolled', 'confirmed', 'clustered')),
        assigned_at INTEGER NOT NULL
    );
    CREATE INDEX assignments_person ON assignments(person_id);
    CREATE TABLE imports(
        file TEXT PRIMARY KEY,
        pipeline_id INTEGER NOT NULL,
        photos INTEGER NOT NULL,
        imported_at INTEGER NOT NULL
    );",
    // 1 -> 2: a generation counter raised by every change of who is who (the gallery index
    // beside the database records the generation it was built from).
    "CREATE TABLE meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
    INSERT INTO meta(key, value) VALUES ('generation', 0);
    CREATE TRIGGER assignments_inserted AFTER INSERT ON assignments BEGIN
        UPDATE meta SET value = value + 1 WHERE key = 'generation'; END;
    CREATE TRIGGER assignments_updated AFTER UPDATE ON assignments BEGIN
        UPDATE meta SET value = value + 1 WHERE key = 'generation'; END;
    CREATE TRIGGER assignments_deleted AFTER DELETE ON assignments BEGIN
        UPDATE meta SET value = value + 1 WHERE key = 'generation'; END;",
];

/// Sets the connection up (WAL, foreign keys, busy timeout) and migrates the schema to
/// [`VERSION`], each step in its own transaction.
pub fn prepare(conn: &mut Connection) -> Result<(), SchemaError> {
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    // Every write transaction takes the write lock when it begins, so a second writer waits
    // (busy timeout) instead of failing on a stale snapshot.
    conn.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
    // WAL: readers never block on a writer; NORMAL sync: a killed process loses nothing
    // committed (a power cut may lose the last transactions, never consistency).
    let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")?;
    loop {
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > VERSION {
            return Err(SchemaError::Newer(version));
        }
        if version == VERSION {
            return Ok(());
        }
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // Another process may have migrated while we waited for the write lock.
        let now: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if now == version {
            tx.execute_batch(MIGRATIONS[version as usize])?;
            tx.execute_batch(&format!("PRAGMA user_version = {}", version + 1))?;
        }
        tx.commit()?;
    }
}
