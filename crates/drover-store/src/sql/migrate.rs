//! The schema and how it gets there: the ordered migrations, applied once each and recorded in
//! `schema_migrations`, and SQLite's table rebuild (its 12-step procedure) for changes `ALTER
//! TABLE` cannot make, such as migration 5's `AUTOINCREMENT`.

use sqlx::{AssertSqlSafe, Row};

use super::{Dialect, SqlStore, now_ms};
use crate::{StoreError, StoreResult};

/// `experiments` as migration 1 creates it, named `name`, with identity column `pk`. Migration 5
/// rebuilds SQLite's table from this very text, so never edit it: a change is a new migration.
fn experiments_table(name: &str, pk: &str, blob: &str) -> String {
    format!(
        "CREATE TABLE {name} (
                id {pk},
                name TEXT NOT NULL,
                description TEXT,
                state TEXT NOT NULL,
                config TEXT NOT NULL,
                config_yaml TEXT NOT NULL,
                context {blob},
                searcher_snapshot TEXT,
                created_at BIGINT NOT NULL,
                ended_at BIGINT
            );"
    )
}

/// `trials` as migration 1 creates it; see [`experiments_table`].
fn trials_table(name: &str, pk: &str) -> String {
    format!(
        "CREATE TABLE {name} (
                id {pk},
                experiment_id BIGINT NOT NULL REFERENCES experiments(id) ON DELETE CASCADE,
                request_id BIGINT NOT NULL,
                state TEXT NOT NULL,
                hparams TEXT NOT NULL,
                seed BIGINT NOT NULL,
                restarts BIGINT NOT NULL DEFAULT 0,
                stop_requested BIGINT NOT NULL DEFAULT 0,
                latest_checkpoint TEXT,
                created_at BIGINT NOT NULL,
                ended_at BIGINT,
                UNIQUE (experiment_id, request_id)
            );"
    )
}

/// What one migration does.
enum Migration {
    /// Statements run in one transaction.
    Sql(String),
    /// SQLite only: each table replaced by one created from a new definition, every row kept
    /// (see [`SqlStore::sqlite_rebuild`]).
    SqliteRebuild(Vec<Rebuild>),
    /// Nothing to do on this database; recorded as applied all the same.
    Nothing,
}

/// One table of a [`Migration::SqliteRebuild`]: `create` makes `new` with exactly the columns,
/// constraints and indexes of `table` (checked before any row moves); `new` then takes its name.
struct Rebuild {
    table: &'static str,
    new: &'static str,
    create: String,
}

/// SQLite's identity column that never hands out an id again, even the largest one after its
/// row is deleted (a plain `INTEGER PRIMARY KEY` takes the largest id in use plus one).
const SQLITE_NEVER_REUSED_PK: &str = "INTEGER PRIMARY KEY AUTOINCREMENT";

/// Ordered migrations; each runs once, in a transaction, and is recorded in `schema_migrations`.
fn migrations(d: Dialect) -> Vec<(i64, Migration)> {
    let (pk, blob, f64_, clustered) = (d.ident_pk(), d.blob(), d.double(), d.clustered());
    let (experiments, trials) = (experiments_table("experiments", pk, blob), trials_table("trials", pk));
    vec![
        (
            1,
            format!(
                "{experiments}
            {trials}
            CREATE TABLE allocations (
                id TEXT PRIMARY KEY,
                trial_id BIGINT NOT NULL REFERENCES trials(id) ON DELETE CASCADE,
                token TEXT NOT NULL,
                state TEXT NOT NULL,
                agent_id TEXT,
                slot_ids TEXT NOT NULL,
                exit_code BIGINT,
                error TEXT,
                created_at BIGINT NOT NULL,
                ended_at BIGINT
            );
            CREATE INDEX allocations_trial ON allocations (trial_id);
            CREATE TABLE metrics (
                trial_id BIGINT NOT NULL REFERENCES trials(id) ON DELETE CASCADE,
                grp TEXT NOT NULL,
                name TEXT NOT NULL,
                step BIGINT NOT NULL,
                value {f64_} NOT NULL,
                ts_ms BIGINT NOT NULL,
                PRIMARY KEY (trial_id, grp, name, step)
            ){clustered};
            CREATE TABLE metric_summaries (
                trial_id BIGINT NOT NULL REFERENCES trials(id) ON DELETE CASCADE,
                grp TEXT NOT NULL,
                name TEXT NOT NULL,
                count BIGINT NOT NULL,
                last {f64_} NOT NULL,
                last_step BIGINT NOT NULL,
                min {f64_} NOT NULL,
                max {f64_} NOT NULL,
                PRIMARY KEY (trial_id, grp, name)
            ){clustered};
            CREATE TABLE task_logs (
                id {pk},
                trial_id BIGINT NOT NULL REFERENCES trials(id) ON DELETE CASCADE,
                allocation_id TEXT NOT NULL,
                ts_ms BIGINT NOT NULL,
                stream TEXT NOT NULL,
                line TEXT NOT NULL
            );
            CREATE INDEX task_logs_trial ON task_logs (trial_id, id);
            CREATE TABLE checkpoints (
                uuid TEXT PRIMARY KEY,
                trial_id BIGINT NOT NULL REFERENCES trials(id) ON DELETE CASCADE,
                experiment_id BIGINT NOT NULL,
                step BIGINT NOT NULL,
                size BIGINT NOT NULL,
                resources TEXT NOT NULL,
                metadata TEXT NOT NULL,
                created_at BIGINT NOT NULL
            );
            CREATE INDEX checkpoints_trial ON checkpoints (trial_id, step);"
            ),
        ),
        (
            2,
            // Per-bucket extremes of every series at several step widths, kept at write time so
            // that a chart of a million points reads a thousand rows instead of scanning them all.
            format!(
                "CREATE TABLE metric_rollups (
                trial_id BIGINT NOT NULL REFERENCES trials(id) ON DELETE CASCADE,
                grp TEXT NOT NULL,
                name TEXT NOT NULL,
                level BIGINT NOT NULL,
                bucket BIGINT NOT NULL,
                count BIGINT NOT NULL,
                min_step BIGINT NOT NULL,
                min_value {f64_} NOT NULL,
                max_step BIGINT NOT NULL,
                max_value {f64_} NOT NULL,
                PRIMARY KEY (trial_id, grp, name, level, bucket)
            ){clustered};"
            ),
        ),
        (
            3,
            // The parameter database: immutable versions of named blobs (the bytes live in the
            // parameter storage under `storage_key`) and movable tags. A tag can only name a
            // version that exists.
            "CREATE TABLE param_versions (
                name TEXT NOT NULL,
                version BIGINT NOT NULL,
                created_at BIGINT NOT NULL,
                size BIGINT NOT NULL,
                sha256 TEXT NOT NULL,
                metadata TEXT NOT NULL,
                storage_key TEXT NOT NULL UNIQUE,
                PRIMARY KEY (name, version)
            );
            CREATE TABLE param_tags (
                name TEXT NOT NULL,
                tag TEXT NOT NULL,
                version BIGINT NOT NULL,
                updated_at BIGINT NOT NULL,
                PRIMARY KEY (name, tag),
                FOREIGN KEY (name, version) REFERENCES param_versions (name, version) ON DELETE CASCADE
            );
            CREATE INDEX param_tags_version ON param_tags (name, version);"
                .to_string(),
        ),
        (
            4,
            // A pinned checkpoint (a model being served, one a user keeps) survives every GC.
            "ALTER TABLE checkpoints ADD COLUMN pinned BIGINT NOT NULL DEFAULT 0;
         CREATE INDEX checkpoints_experiment ON checkpoints (experiment_id);"
                .to_string(),
        ),
    ]
    .into_iter()
    .map(|(version, sql)| (version, Migration::Sql(sql)))
    .chain([(
        5,
        // Ids of deleted experiments and trials stay dead. SQLite's `INTEGER PRIMARY KEY`
        // handed the newest ones out again (a deleted experiment's id, then its trials' ids, went
        // to the next experiment), so both tables get AUTOINCREMENT. PostgreSQL's identity
        // columns are sequences, which never go back.
        match d {
            Dialect::Sqlite => Migration::SqliteRebuild(vec![
                Rebuild {
                    table: "experiments",
                    new: "experiments_v5",
                    create: experiments_table("experiments_v5", SQLITE_NEVER_REUSED_PK, blob),
                },
                Rebuild { table: "trials", new: "trials_v5", create: trials_table("trials_v5", SQLITE_NEVER_REUSED_PK) },
            ]),
            Dialect::Postgres => Migration::Nothing,
        },
    )])
    .collect()
}

impl SqlStore {
    pub(super) async fn migrate(&self, last: i64) -> StoreResult<()> {
        let mut conn = self.pool.acquire().await?;
        // Two masters starting on one PostgreSQL database must not migrate at once: even
        // `CREATE TABLE IF NOT EXISTS` races there. SQLite serialises writers by itself.
        if self.dialect == Dialect::Postgres {
            sqlx::query("SELECT pg_advisory_lock(7252015)").execute(&mut *conn).await?;
        }
        let result = Self::migrate_on(&mut conn, self.dialect, last).await;
        if self.dialect == Dialect::Postgres {
            sqlx::query("SELECT pg_advisory_unlock(7252015)").execute(&mut *conn).await?;
        }
        if result.is_err() && self.dialect == Dialect::Sqlite {
            // A failed table rebuild may leave this connection with foreign keys off: it must
            // not go back to the pool.
            conn.close_on_drop();
        }
        result
    }

    async fn migrate_on(conn: &mut sqlx::AnyConnection, dialect: Dialect, last: i64) -> StoreResult<()> {
        sqlx::raw_sql("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)")
            .execute(&mut *conn)
            .await?;
        for (version, migration) in migrations(dialect) {
            if version > last {
                break;
            }
            if Self::applied(&mut *conn, version).await? {
                continue;
            }
            let sql = match migration {
                Migration::Sql(sql) => Some(sql),
                Migration::Nothing => None,
                Migration::SqliteRebuild(rebuilds) => {
                    Self::sqlite_rebuild(&mut *conn, version, &rebuilds).await?;
                    continue;
                }
            };
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            if let Some(sql) = sql {
                sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *tx).await?;
            }
            Self::record(&mut tx, version).await?;
            tx.commit().await?;
        }
        Ok(())
    }

    async fn applied(conn: &mut sqlx::AnyConnection, version: i64) -> StoreResult<bool> {
        let row = sqlx::query("SELECT version FROM schema_migrations WHERE version = $1").bind(version).fetch_optional(&mut *conn).await?;
        Ok(row.is_some())
    }

    async fn record(tx: &mut sqlx::Transaction<'_, sqlx::Any>, version: i64) -> StoreResult<()> {
        sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
            .bind(version)
            .bind(now_ms())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// SQLite's 12-step table rebuild (<https://www.sqlite.org/lang_altertable.html#otheralter>):
    /// foreign keys off on this connection, outside any transaction (the pragma does nothing
    /// inside one); in one transaction, for each table create the new one, copy every row, drop
    /// the old one and give the new one its name; check foreign keys; commit; foreign keys back
    /// on, whatever happened.
    ///
    /// With foreign keys on, `DROP TABLE` first deletes every row, and the deletes cascade to
    /// trials, allocations, metrics, logs and checkpoints: so nothing starts unless they are
    /// verifiably off.
    async fn sqlite_rebuild(conn: &mut sqlx::AnyConnection, version: i64, rebuilds: &[Rebuild]) -> StoreResult<()> {
        sqlx::raw_sql("PRAGMA foreign_keys = OFF").execute(&mut *conn).await?;
        let result = Self::sqlite_rebuild_tables(&mut *conn, version, rebuilds).await;
        // On an error the transaction was dropped, which rolls it back before this runs.
        let restored = sqlx::raw_sql("PRAGMA foreign_keys = ON").execute(&mut *conn).await;
        result?;
        restored?;
        if !sqlite_foreign_keys_on(&mut *conn).await? {
            return Err(StoreError::Conflict(format!("migration {version}: could not switch foreign keys back on")));
        }
        Ok(())
    }

    async fn sqlite_rebuild_tables(conn: &mut sqlx::AnyConnection, version: i64, rebuilds: &[Rebuild]) -> StoreResult<()> {
        if sqlite_foreign_keys_on(&mut *conn).await? {
            return Err(StoreError::Conflict(format!(
                "migration {version}: foreign keys are still on, so dropping a table would delete rows; nothing was changed"
            )));
        }
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        // Another process may have migrated since we looked.
        if Self::applied(&mut tx, version).await? {
            return Ok(());
        }
        let violations_before = sqlite_foreign_key_violations(&mut tx).await?;
        for Rebuild { table, new, create } in rebuilds {
            let old_shape = sqlite_table_shape(&mut tx, table).await?;
            sqlx::raw_sql(AssertSqlSafe(create.clone())).execute(&mut *tx).await?;
            let new_shape = sqlite_table_shape(&mut tx, new).await?;
            if old_shape != new_shape {
                return Err(StoreError::Corrupt(format!(
                    "migration {version}: table `{table}` is not as migration 1 made it, so rebuilding it could lose something; \
                     nothing was changed (found {old_shape:?}, expected {new_shape:?})"
                )));
            }
            // Same columns in the same order (checked above), so `*` copies each to its twin.
            let copied =
                sqlx::query(AssertSqlSafe(format!("INSERT INTO {new} SELECT * FROM {table}"))).execute(&mut *tx).await?.rows_affected();
            let count = |t: &str| format!("SELECT COUNT(*) FROM {t}");
            let (old_rows, new_rows): (i64, i64) = (
                sqlx::query_scalar(AssertSqlSafe(count(table))).fetch_one(&mut *tx).await?,
                sqlx::query_scalar(AssertSqlSafe(count(new))).fetch_one(&mut *tx).await?,
            );
            if old_rows != new_rows || copied != old_rows as u64 {
                return Err(StoreError::Corrupt(format!(
                    "migration {version}: copied {new_rows} of the {old_rows} rows of `{table}`; nothing was changed"
                )));
            }
            // Checked again right before the drop (the pragma cannot change inside a transaction).
            if sqlite_foreign_keys_on(&mut tx).await? {
                return Err(StoreError::Conflict(format!("migration {version}: foreign keys are on; not dropping `{table}`")));
            }
            sqlx::raw_sql(AssertSqlSafe(format!("DROP TABLE {table}; ALTER TABLE {new} RENAME TO {table};"))).execute(&mut *tx).await?;
        }
        let violations_after = sqlite_foreign_key_violations(&mut tx).await?;
        if violations_after != violations_before {
            return Err(StoreError::Corrupt(format!(
                "migration {version}: rows whose parent is missing went from {violations_before} to {violations_after} \
                 (`PRAGMA foreign_key_check`); nothing was changed"
            )));
        }
        Self::record(&mut tx, version).await?;
        tx.commit().await?;
        Ok(())
    }
}

async fn sqlite_foreign_keys_on(conn: &mut sqlx::AnyConnection) -> StoreResult<bool> {
    let on: i64 = sqlx::query_scalar("PRAGMA foreign_keys").fetch_one(&mut *conn).await?;
    Ok(on != 0)
}

/// How many rows `PRAGMA foreign_key_check` reports: rows whose parent row is missing.
async fn sqlite_foreign_key_violations(conn: &mut sqlx::AnyConnection) -> StoreResult<i64> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM pragma_foreign_key_check").fetch_one(&mut *conn).await?)
}

/// What a table rebuild must keep: columns `(name, type, not null, default, primary key
/// position)` in order, foreign keys `(parent, from, to, on update, on delete)`, indexes
/// `(unique, origin, partial, columns)` and the names of triggers. Rows that SQLite's pragmas
/// give for `table`; the table's and its indexes' own names are left out.
#[derive(Debug, PartialEq)]
struct TableShape {
    columns: Vec<(String, String, i64, Option<String>, i64)>,
    foreign_keys: Vec<(String, String, Option<String>, String, String)>,
    indexes: Vec<(i64, String, i64, Vec<Option<String>>)>,
    triggers: Vec<String>,
}

async fn sqlite_table_shape(conn: &mut sqlx::AnyConnection, table: &str) -> StoreResult<TableShape> {
    let columns = sqlx::query(r#"SELECT name, type, "notnull", dflt_value, pk FROM pragma_table_info($1) ORDER BY cid"#)
        .bind(table)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?, r.try_get(4)?)))
        .collect::<StoreResult<Vec<_>>>()?;
    let foreign_keys =
        sqlx::query(r#"SELECT "table", "from", "to", on_update, on_delete FROM pragma_foreign_key_list($1) ORDER BY id, seq"#)
            .bind(table)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?, r.try_get(4)?)))
            .collect::<StoreResult<Vec<_>>>()?;
    let index_columns = sqlx::query(
        r#"SELECT il.name, il."unique", il.origin, il.partial, ii.name
           FROM pragma_index_list($1) AS il JOIN pragma_index_info(il.name) AS ii
           ORDER BY il.name, ii.seqno"#,
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await?;
    let mut indexes = std::collections::BTreeMap::<String, (i64, String, i64, Vec<Option<String>>)>::new();
    for r in &index_columns {
        let index = indexes.entry(r.try_get(0)?).or_insert((r.try_get(1)?, r.try_get(2)?, r.try_get(3)?, Vec::new()));
        index.3.push(r.try_get(4)?);
    }
    let mut indexes: Vec<_> = indexes.into_values().collect();
    indexes.sort();
    let triggers = sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = $1 ORDER BY name")
        .bind(table)
        .fetch_all(&mut *conn)
        .await?;
    Ok(TableShape { columns, foreign_keys, indexes, triggers })
}
