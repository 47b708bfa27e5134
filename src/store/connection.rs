//! The one connection type for both backends. It lives in its own module because the expansion of
//! `#[derive(MultiConnection)]` clashes with other items (such as a `metadata` function) in its module.

#[derive(diesel::MultiConnection)]
pub enum AnyConnection {
    Postgresql(diesel::PgConnection),
    Sqlite(diesel::SqliteConnection),
}
