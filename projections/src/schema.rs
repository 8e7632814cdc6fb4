//! The read models' schemas, kept as SQL files beside the log's migrations
//! (`migrations/read_models/*.sql`) and bound to table names here.
//!
//! They are not sqlx migrations on purpose: a read model is disposable and versioned as a
//! whole. The same DDL creates the live tables and a rebuild's shadow tables (`{rm_rooms}`
//! becomes `rm_rooms` or `rm_rooms__shadow`), and a changed shape is a new projector
//! `version`, rebuilt from the log, never an `ALTER` of rows that may hold old tokens. Each
//! file holds `CREATE TABLE IF NOT EXISTS {base} (...)` and
//! `CREATE [UNIQUE] INDEX IF NOT EXISTS name ON {base} (columns)` statements, one dialect for
//! both databases (`BIGINT`, `TEXT`, and `{blob}` for bytes: `BLOB` or `BYTEA`).

use crate::Names;
use thiserror::Error;

/// The projector runtime's own tables (checkpoints, faults).
pub const RUNTIME: &str = include_str!("../../migrations/read_models/runtime.sql");

/// A statement of a schema file that is neither form this module binds.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("read-model schema: {0}")]
pub struct SchemaError(pub String);

/// One table: its base name and the statement that creates it (`{base}` still unbound).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// The base name (`rm_rooms`).
    pub base: &'static str,
    /// `CREATE TABLE IF NOT EXISTS {base} (...)`.
    pub ddl: &'static str,
}

/// A secondary index of a read-model table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    /// The index name for the live table; a shadow's index gets the shadow's suffix.
    pub name: &'static str,
    /// The base name of its table.
    pub table: &'static str,
    /// The indexed columns, comma-separated.
    pub columns: &'static str,
    /// A unique index: a key that a rebuild can leave until its rows are in
    /// ([`crate::ProjectorDef::rebuild_indexes`]), where an inline `PRIMARY KEY` is kept up
    /// to date on every insert.
    pub unique: bool,
}

/// A projector's tables and indexes, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schema {
    /// The tables.
    pub tables: Vec<Table>,
    /// The indexes.
    pub indexes: Vec<Index>,
}

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS ";
const CREATE_INDEX: &str = "CREATE INDEX IF NOT EXISTS ";
const CREATE_UNIQUE_INDEX: &str = "CREATE UNIQUE INDEX IF NOT EXISTS ";

impl Schema {
    /// Reads a schema file: `--` comments dropped, statements split on `;`.
    pub fn parse(sql: &'static str) -> Result<Self, SchemaError> {
        let mut schema = Schema::default();
        for statement in statements(sql) {
            if let Some(rest) = statement.strip_prefix(CREATE_TABLE) {
                let base = braced(rest)
                    .filter(|(_, after)| after.trim_start().starts_with('('))
                    .map(|(base, _)| base)
                    .ok_or_else(|| {
                        bad(
                            "a table's name must be {base} before its columns",
                            statement,
                        )
                    })?;
                schema.tables.push(Table {
                    base,
                    ddl: statement,
                });
            } else if let Some((rest, unique)) = statement
                .strip_prefix(CREATE_INDEX)
                .map(|rest| (rest, false))
                .or_else(|| {
                    statement
                        .strip_prefix(CREATE_UNIQUE_INDEX)
                        .map(|rest| (rest, true))
                })
            {
                let (name, on) = rest
                    .split_once(" ON ")
                    .ok_or_else(|| bad("an index needs ON {table} (columns)", statement))?;
                let (table, after) = braced(on.trim_start())
                    .ok_or_else(|| bad("an index's table must be {base}", statement))?;
                let columns = after
                    .trim()
                    .strip_prefix('(')
                    .and_then(|c| c.strip_suffix(')'))
                    .ok_or_else(|| bad("an index's columns must be in parentheses", statement))?;
                if !schema.tables.iter().any(|t| t.base == table) {
                    return Err(bad("an index must follow its table", statement));
                }
                schema.indexes.push(Index {
                    name: name.trim(),
                    table,
                    columns: columns.trim(),
                    unique,
                });
            } else {
                return Err(bad(
                    "only CREATE TABLE and CREATE [UNIQUE] INDEX IF NOT EXISTS",
                    statement,
                ));
            }
        }
        Ok(schema)
    }

    /// The base names of the tables.
    pub fn bases(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.tables.iter().map(|t| t.base)
    }

    /// `CREATE INDEX` statements for every index, bound with `names` (live or shadow).
    pub fn create_indexes(&self, names: &Names) -> Vec<String> {
        self.indexes.iter().map(|idx| idx.create(names)).collect()
    }

    /// `DROP TABLE` statements for every table, bound with `names`.
    pub fn drop_tables(&self, names: &Names) -> Vec<String> {
        self.bases()
            .map(|base| format!("DROP TABLE IF EXISTS {}", names.table(base)))
            .collect()
    }
}

impl Index {
    /// `CREATE [UNIQUE] INDEX IF NOT EXISTS`, bound with `names`.
    pub fn create(&self, names: &Names) -> String {
        format!(
            "{}{} ON {} ({})",
            if self.unique {
                CREATE_UNIQUE_INDEX
            } else {
                CREATE_INDEX
            },
            self.bound_name(names),
            names.table(self.table),
            self.columns
        )
    }

    /// The index's name with `names`' index suffix: a shadow table's index is named apart
    /// from the live one (index names are global in both databases).
    pub fn bound_name(&self, names: &Names) -> String {
        format!("{}{}", self.name, names.index_suffix())
    }

    /// True if `existing` is this index under any generation's name (see
    /// [`Names::generation`]): the live tables carry the names their rebuild built them with.
    pub fn is_named(&self, existing: &str) -> bool {
        existing
            .strip_prefix(self.name)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(crate::GENERATION))
    }
}

/// The statements of a file: each starts on its own line and ends with `;` at the end of
/// a line; `--` comment lines and blank lines between statements are skipped. (A comment
/// line inside a statement stays in it; the tests check the files have none.)
pub fn statements(sql: &'static str) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    let mut offset = 0;
    for line in sql.split_inclusive('\n') {
        let at = offset;
        offset += line.len();
        let trimmed = line.trim();
        if start.is_none() {
            if trimmed.is_empty() || trimmed.starts_with("--") {
                continue;
            }
            start = Some(at + line.len() - line.trim_start().len());
        }
        if trimmed.ends_with(';') {
            let end = at + line.trim_end().len() - 1;
            if let Some(begin) = start.take() {
                out.push(sql[begin..end].trim_end());
            }
        }
    }
    if let Some(begin) = start {
        out.push(sql[begin..].trim_end());
    }
    out
}

/// `{name}` at the start of `s`, and what follows it.
fn braced(s: &'static str) -> Option<(&'static str, &'static str)> {
    let rest = s.strip_prefix('{')?;
    let (name, after) = rest.split_once('}')?;
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    valid.then_some((name, after))
}

fn bad(why: &str, statement: &str) -> SchemaError {
    let head: String = statement.chars().take(60).collect();
    SchemaError(format!("{why}: {head:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_projector_schema_binds() {
        for def in crate::all() {
            let schema = def.schema().unwrap_or_else(|e| panic!("{}: {e}", def.name));
            assert!(!schema.tables.is_empty(), "{} has no table", def.name);
            for t in &schema.tables {
                assert!(t.base.starts_with("rm_"), "{}: {}", def.name, t.base);
                assert!(!t.ddl.contains("--"), "a comment inside {}", t.base);
            }
            for name in def.rebuild_indexes.unwrap_or_default() {
                assert!(
                    schema.indexes.iter().any(|idx| idx.name == *name),
                    "{}: rebuild index {name} is not in its schema",
                    def.name
                );
            }
        }
        assert!(
            statements(RUNTIME)
                .iter()
                .all(|s| s.starts_with(CREATE_TABLE))
        );
        assert_eq!(statements(RUNTIME).len(), 2);
    }

    /// FNV-1a over the statements with whitespace collapsed: comments and layout do not
    /// count, a column or an index does.
    fn fingerprint(sql: &'static str) -> u64 {
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        for statement in statements(sql) {
            for word in statement.split_whitespace() {
                for b in word.bytes().chain([b' ']) {
                    hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
                }
            }
        }
        hash
    }

    #[test]
    fn a_changed_schema_comes_with_a_new_version() {
        // When this fails after a schema file changed: raise the projector's `version` (its
        // tables are then rebuilt from the log at start) and record the new pair here.
        const KNOWN: [(&str, i64, u64); 5] = [
            ("users", 3, 0xae87b3a82854d9b),
            ("rooms", 5, 0xa855613e2ecfbd95),
            ("calls", 1, 0x42138e5dea3f7a8c),
            ("audit", 2, 0x738c72926178f2bf),
            ("images", 1, 0x668bd94ed07c16a4),
        ];
        let found: Vec<(&str, i64, u64)> = crate::all()
            .iter()
            .map(|d| (d.name, d.version, fingerprint(d.schema)))
            .collect();
        assert_eq!(found, KNOWN, "a schema changed without a new version");
    }

    #[test]
    fn types_follow_the_dialect() {
        let template = "CREATE TABLE IF NOT EXISTS {rm_a} (id {blob}, n {bigint})";
        let sqlite = Names::new("", crate::db::Dialect::Sqlite).render(template, &["rm_a"]);
        let pg = Names::new("__shadow", crate::db::Dialect::Postgres).render(template, &["rm_a"]);
        assert_eq!(
            &*sqlite,
            "CREATE TABLE IF NOT EXISTS rm_a (id BLOB, n BIGINT)"
        );
        assert_eq!(
            &*pg,
            "CREATE TABLE IF NOT EXISTS rm_a__shadow (id BYTEA, n BIGINT)"
        );
    }

    #[test]
    fn an_index_is_known_under_any_generations_name() {
        let idx = Index {
            name: "rm_a_by_n",
            table: "rm_a",
            columns: "n",
            unique: false,
        };
        let live = Names::new("", crate::db::Dialect::Sqlite);
        let shadow = Names::generation("__shadow", 0x1f, crate::db::Dialect::Sqlite);
        assert_eq!(idx.bound_name(&live), "rm_a_by_n");
        assert_eq!(idx.bound_name(&shadow), "rm_a_by_n__g1f");
        assert_eq!(
            idx.create(&shadow),
            "CREATE INDEX IF NOT EXISTS rm_a_by_n__g1f ON rm_a__shadow (n)"
        );
        for name in ["rm_a_by_n", "rm_a_by_n__g1f"] {
            assert!(idx.is_named(name), "{name}");
        }
        for name in ["rm_a_by_n2", "rm_a_by_n__shadow", "rm_a", "rm_a_by_n_g1"] {
            assert!(!idx.is_named(name), "{name}");
        }
    }

    #[test]
    fn tables_and_indexes_are_read_from_the_file() {
        let schema = Schema::parse(
            "-- a comment\nCREATE TABLE IF NOT EXISTS {rm_a} (id TEXT PRIMARY KEY,\n  n BIGINT);\n\n\
             -- its index; a comment may hold a semicolon\n\
             CREATE INDEX IF NOT EXISTS rm_a_by_n ON {rm_a} (n, id);\n\
             CREATE UNIQUE INDEX IF NOT EXISTS rm_a_key ON {rm_a} (id);\n",
        )
        .expect("parse");
        assert_eq!(
            schema.tables,
            [Table {
                base: "rm_a",
                ddl: "CREATE TABLE IF NOT EXISTS {rm_a} (id TEXT PRIMARY KEY,\n  n BIGINT)",
            }]
        );
        assert_eq!(
            schema.indexes,
            [
                Index {
                    name: "rm_a_by_n",
                    table: "rm_a",
                    columns: "n, id",
                    unique: false,
                },
                Index {
                    name: "rm_a_key",
                    table: "rm_a",
                    columns: "id",
                    unique: true,
                }
            ]
        );
        let live = Names::new("", crate::db::Dialect::Sqlite);
        assert_eq!(
            schema.create_indexes(&live),
            [
                "CREATE INDEX IF NOT EXISTS rm_a_by_n ON rm_a (n, id)",
                "CREATE UNIQUE INDEX IF NOT EXISTS rm_a_key ON rm_a (id)"
            ]
        );
    }

    #[test]
    fn anything_else_is_refused_with_the_statement() {
        for sql in [
            "DROP TABLE rm_a",
            "CREATE TABLE rm_a (id TEXT)",
            "CREATE TABLE IF NOT EXISTS rm_a (id TEXT)",
            "CREATE TABLE IF NOT EXISTS {rm-a} (id TEXT)",
            "CREATE INDEX IF NOT EXISTS i ON {rm_a} (id)",
            "CREATE TABLE IF NOT EXISTS {rm_a} (id TEXT);\nCREATE INDEX IF NOT EXISTS i ON rm_a (id)",
            "CREATE TABLE IF NOT EXISTS {rm_a} (id TEXT);\nCREATE INDEX IF NOT EXISTS i ON {rm_a} id",
        ] {
            let err = Schema::parse(sql).expect_err(sql);
            assert!(err.0.contains(": \""), "{err}");
        }
    }
}
