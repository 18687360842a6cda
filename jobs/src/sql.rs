//! The SQL the stores share: one text for each statement (`?1`-style parameters, upserts with
//! `ON CONFLICT`, integers as 64-bit), run through [`Tx`] on SQLite or PostgreSQL. The rules of
//! a job's life and the reads are written once against it, so both stores keep them alike.

use crate::store::StoreError;

/// A statement's parameter.
#[derive(Debug, Clone, Copy)]
pub(crate) enum P<'a> {
    /// An integer.
    I(i64),
    /// Text.
    T(&'a str),
    /// An integer or NULL.
    OI(Option<i64>),
    /// Text or NULL.
    OT(Option<&'a str>),
}

/// A value read back.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum V {
    Null,
    I(i64),
    T(String),
    B(bool),
}

impl V {
    pub(crate) fn i64(&self) -> Result<i64, StoreError> {
        match self {
            V::I(i) => Ok(*i),
            V::B(b) => Ok(i64::from(*b)),
            other => Err(StoreError::Corrupt(format!("{other:?} is not a number"))),
        }
    }

    pub(crate) fn opt_i64(&self) -> Result<Option<i64>, StoreError> {
        match self {
            V::Null => Ok(None),
            v => v.i64().map(Some),
        }
    }

    pub(crate) fn text(&self) -> Result<String, StoreError> {
        match self {
            V::T(s) => Ok(s.clone()),
            other => Err(StoreError::Corrupt(format!("{other:?} is not text"))),
        }
    }

    pub(crate) fn opt_text(&self) -> Result<Option<String>, StoreError> {
        match self {
            V::Null => Ok(None),
            v => v.text().map(Some),
        }
    }

    /// A flag: true for a non-zero number or true; false for zero, false or NULL.
    pub(crate) fn flag(&self) -> bool {
        matches!(self, V::I(i) if *i != 0) || matches!(self, V::B(true))
    }
}

/// Statements run inside one transaction (or, for reads, on a connection).
pub(crate) trait Tx {
    /// Run `sql`; the rows it changed.
    fn exec(&mut self, sql: &str, params: &[P<'_>]) -> Result<u64, StoreError>;
    /// Run `sql`; the rows it read.
    fn rows(&mut self, sql: &str, params: &[P<'_>]) -> Result<Vec<Vec<V>>, StoreError>;
    /// The first row `sql` reads.
    fn row(&mut self, sql: &str, params: &[P<'_>]) -> Result<Option<Vec<V>>, StoreError> {
        Ok(self.rows(sql, params)?.into_iter().next())
    }
}

fn lite(e: rusqlite::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

fn lite_params(params: &[P<'_>]) -> Vec<rusqlite::types::Value> {
    use rusqlite::types::Value;
    params
        .iter()
        .map(|p| match *p {
            P::I(i) | P::OI(Some(i)) => Value::Integer(i),
            P::T(s) | P::OT(Some(s)) => Value::Text(s.to_owned()),
            P::OI(None) | P::OT(None) => Value::Null,
        })
        .collect()
}

/// Row locks PostgreSQL takes for a read that is written after ([`LOCK`], [`SKIP_LOCKED`]);
/// SQLite has none to take (a write transaction holds the whole database) and leaves them out.
fn lite_sql(sql: &str) -> std::borrow::Cow<'_, str> {
    if sql.contains(" FOR UPDATE") {
        std::borrow::Cow::Owned(sql.replace(SKIP_LOCKED, "").replace(LOCK, ""))
    } else {
        std::borrow::Cow::Borrowed(sql)
    }
}

/// The clause that locks the rows a PostgreSQL read selects until its transaction ends (two
/// control planes changing one job take turns). Written last in a statement or subquery.
pub(crate) const LOCK: &str = " FOR UPDATE";

/// The clause that locks the rows a PostgreSQL read selects, passing over rows another
/// transaction holds (claims: two control planes never take the same jobs, nor wait).
pub(crate) const SKIP_LOCKED: &str = " FOR UPDATE SKIP LOCKED";

fn lite_exec(c: &rusqlite::Connection, sql: &str, params: &[P<'_>]) -> Result<u64, StoreError> {
    let n = c
        .prepare_cached(&lite_sql(sql))
        .map_err(lite)?
        .execute(rusqlite::params_from_iter(lite_params(params)))
        .map_err(lite)?;
    Ok(n as u64)
}

fn lite_rows(
    c: &rusqlite::Connection,
    sql: &str,
    params: &[P<'_>],
) -> Result<Vec<Vec<V>>, StoreError> {
    use rusqlite::types::ValueRef;
    let mut stmt = c.prepare_cached(&lite_sql(sql)).map_err(lite)?;
    let n = stmt.column_count();
    let mut rows = stmt
        .query(rusqlite::params_from_iter(lite_params(params)))
        .map_err(lite)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(lite)? {
        let mut row = Vec::with_capacity(n);
        for i in 0..n {
            row.push(match r.get_ref(i).map_err(lite)? {
                ValueRef::Null => V::Null,
                ValueRef::Integer(i) => V::I(i),
                ValueRef::Real(f) => V::I(f as i64),
                ValueRef::Text(t) | ValueRef::Blob(t) => {
                    V::T(String::from_utf8_lossy(t).into_owned())
                }
            });
        }
        out.push(row);
    }
    Ok(out)
}

impl Tx for rusqlite::Transaction<'_> {
    fn exec(&mut self, sql: &str, params: &[P<'_>]) -> Result<u64, StoreError> {
        lite_exec(self, sql, params)
    }
    fn rows(&mut self, sql: &str, params: &[P<'_>]) -> Result<Vec<Vec<V>>, StoreError> {
        lite_rows(self, sql, params)
    }
}

impl Tx for rusqlite::Connection {
    fn exec(&mut self, sql: &str, params: &[P<'_>]) -> Result<u64, StoreError> {
        lite_exec(self, sql, params)
    }
    fn rows(&mut self, sql: &str, params: &[P<'_>]) -> Result<Vec<Vec<V>>, StoreError> {
        lite_rows(self, sql, params)
    }
}

/// `?N` → `$N` (PostgreSQL's placeholders).
pub(crate) fn dollars(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

/// A PostgreSQL error as the store's: a deadlock or serialization failure is a
/// [`StoreError::Conflict`] (run the transaction again).
pub(crate) fn pg(e: postgres::Error) -> StoreError {
    use postgres::error::SqlState;
    match e.as_db_error() {
        Some(d)
            if [
                SqlState::T_R_DEADLOCK_DETECTED,
                SqlState::T_R_SERIALIZATION_FAILURE,
            ]
            .contains(d.code()) =>
        {
            StoreError::Conflict(d.message().to_owned())
        }
        Some(d) => StoreError::Database(format!("{} ({})", d.message(), d.code().code())),
        None => StoreError::Database(e.to_string()),
    }
}

type PgParam = Box<dyn postgres::types::ToSql + Sync>;

fn pg_params(params: &[P<'_>]) -> Vec<PgParam> {
    params
        .iter()
        .map(|p| -> PgParam {
            match *p {
                P::I(i) => Box::new(i),
                P::T(s) => Box::new(s.to_owned()),
                P::OI(o) => Box::new(o),
                P::OT(o) => Box::new(o.map(str::to_owned)),
            }
        })
        .collect()
}

fn pg_value(row: &postgres::Row, i: usize) -> Result<V, StoreError> {
    use postgres::types::Type;
    let t = row.columns()[i].type_().clone();
    let v = if t == Type::INT8 {
        row.try_get::<_, Option<i64>>(i)
            .map(|o| o.map_or(V::Null, V::I))
    } else if t == Type::INT4 {
        row.try_get::<_, Option<i32>>(i)
            .map(|o| o.map_or(V::Null, |x| V::I(i64::from(x))))
    } else if t == Type::INT2 {
        row.try_get::<_, Option<i16>>(i)
            .map(|o| o.map_or(V::Null, |x| V::I(i64::from(x))))
    } else if t == Type::BOOL {
        row.try_get::<_, Option<bool>>(i)
            .map(|o| o.map_or(V::Null, V::B))
    } else {
        row.try_get::<_, Option<String>>(i)
            .map(|o| o.map_or(V::Null, V::T))
    };
    v.map_err(pg)
}

/// Prepared statements of one PostgreSQL connection, by their SQL text (a statement is
/// parsed once per connection, not on every run).
pub(crate) type PgStatements = std::collections::HashMap<String, postgres::Statement>;

fn pg_run<C: postgres::GenericClient>(
    c: &mut C,
    cache: &mut PgStatements,
    sql: &str,
    params: &[P<'_>],
    read: bool,
) -> Result<(u64, Vec<Vec<V>>), StoreError> {
    let owned = pg_params(params);
    let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = owned.iter().map(|b| &**b).collect();
    let stmt = match cache.get(sql) {
        Some(s) => s.clone(),
        None => {
            let s = c.prepare(&dollars(sql)).map_err(pg)?;
            cache.insert(sql.to_owned(), s.clone());
            s
        }
    };
    if !read {
        return Ok((c.execute(&stmt, &refs).map_err(pg)?, Vec::new()));
    }
    let rows = c.query(&stmt, &refs).map_err(pg)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let mut row = Vec::with_capacity(r.len());
        for i in 0..r.len() {
            row.push(pg_value(r, i)?);
        }
        out.push(row);
    }
    Ok((0, out))
}

/// A PostgreSQL transaction or client with its connection's prepared statements.
pub(crate) struct Pg<'a, C> {
    pub(crate) client: &'a mut C,
    pub(crate) statements: &'a mut PgStatements,
}

impl<C: postgres::GenericClient> Tx for Pg<'_, C> {
    fn exec(&mut self, sql: &str, params: &[P<'_>]) -> Result<u64, StoreError> {
        pg_run(self.client, self.statements, sql, params, false).map(|(n, _)| n)
    }
    fn rows(&mut self, sql: &str, params: &[P<'_>]) -> Result<Vec<Vec<V>>, StoreError> {
        pg_run(self.client, self.statements, sql, params, true).map(|(_, r)| r)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn placeholders_become_dollars() {
        assert_eq!(
            super::dollars("UPDATE t SET a = ?2 WHERE id = ?1 AND b = '?'"),
            "UPDATE t SET a = $2 WHERE id = $1 AND b = '?'"
        );
    }
}
