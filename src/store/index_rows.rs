//! The search-index rows of a version (idx_* tables): cleared and written in the write's
//! transaction, from what resources::index extracts.

use diesel::prelude::*;

use super::fixed::{col, insert, Bind};
use super::schema::{idx_composite, idx_date, idx_number, idx_position, idx_reference, idx_string, idx_token, idx_uri};
use super::AnyConnection;
use crate::resources::{index, ResourceType};

pub(super) fn clear_index(c: &mut AnyConnection, rt: ResourceType, id: &str) -> Result<(), diesel::result::Error> {
    macro_rules! clear {
        ($table:ident) => {
            diesel::delete(
                $table::table
                    .filter($table::res_type.eq(rt.as_str()))
                    .filter($table::res_id.eq(id)),
            )
            .execute(c)?;
        };
    }
    clear!(idx_token);
    clear!(idx_string);
    clear!(idx_date);
    clear!(idx_reference);
    clear!(idx_uri);
    clear!(idx_number);
    clear!(idx_composite);
    clear!(idx_position);
    Ok(())
}

/// Index rows per INSERT statement: 9,000 bound values at most (9 columns).
const INDEX_CHUNK: usize = 1000;

pub(super) fn write_index(
    c: &mut AnyConnection,
    rt: ResourceType,
    id: &str,
    e: &index::Entries,
) -> Result<(), diesel::result::Error> {
    if let AnyConnection::Postgresql(pg) = c {
        return write_index_pg(pg, rt, id, e);
    }
    let t = rt.as_str();
    insert_rows!(
        c,
        idx_token::table,
        e.tokens
            .iter()
            .map(|v| {
                (
                    idx_token::res_type.eq(t),
                    idx_token::res_id.eq(id),
                    idx_token::param.eq(&v.param),
                    idx_token::system.eq(&v.system),
                    idx_token::code.eq(&v.code),
                    idx_token::display.eq(&v.display),
                )
            })
            .collect(),
        INDEX_CHUNK
    );
    insert_rows!(
        c,
        idx_string::table,
        e.strings
            .iter()
            .map(|v| {
                (
                    idx_string::res_type.eq(t),
                    idx_string::res_id.eq(id),
                    idx_string::param.eq(&v.param),
                    idx_string::norm.eq(&v.norm),
                    idx_string::norm_full.eq(&v.norm_full),
                    idx_string::exact.eq(&v.exact),
                )
            })
            .collect(),
        INDEX_CHUNK
    );
    insert_rows!(
        c,
        idx_date::table,
        e.dates
            .iter()
            .map(|v| {
                (
                    idx_date::res_type.eq(t),
                    idx_date::res_id.eq(id),
                    idx_date::param.eq(&v.param),
                    idx_date::low.eq(v.low),
                    idx_date::high.eq(v.high),
                )
            })
            .collect(),
        INDEX_CHUNK
    );
    let when = index::timeline(rt, e);
    insert_rows!(
        c,
        idx_reference::table,
        e.references
            .iter()
            .map(|v| {
                (
                    idx_reference::res_type.eq(t),
                    idx_reference::res_id.eq(id),
                    idx_reference::param.eq(&v.param),
                    idx_reference::target_type.eq(&v.target_type),
                    idx_reference::target_id.eq(&v.target_id),
                    idx_reference::url.eq(&v.url),
                    idx_reference::date_low.eq(when.map(|w| w.low)),
                    idx_reference::date_high.eq(when.map(|w| w.high)),
                    idx_reference::date_long.eq(when.map(|w| w.long)),
                )
            })
            .collect(),
        INDEX_CHUNK
    );
    insert_rows!(
        c,
        idx_uri::table,
        e.uris
            .iter()
            .map(|v| {
                (
                    idx_uri::res_type.eq(t),
                    idx_uri::res_id.eq(id),
                    idx_uri::param.eq(&v.param),
                    idx_uri::uri.eq(&v.uri),
                    idx_uri::uri_full.eq(&v.uri_full),
                )
            })
            .collect(),
        INDEX_CHUNK
    );
    insert_rows!(
        c,
        idx_number::table,
        e.numbers
            .iter()
            .map(|v| {
                (
                    idx_number::res_type.eq(t),
                    idx_number::res_id.eq(id),
                    idx_number::param.eq(&v.param),
                    idx_number::value.eq(v.value),
                    idx_number::system.eq(&v.system),
                    idx_number::code.eq(&v.code),
                )
            })
            .collect(),
        INDEX_CHUNK
    );
    insert_rows!(
        c,
        idx_composite::table,
        e.composites
            .iter()
            .map(|v| {
                (
                    idx_composite::res_type.eq(t),
                    idx_composite::res_id.eq(id),
                    idx_composite::param.eq(&v.param),
                    idx_composite::system1.eq(&v.system1),
                    idx_composite::code1.eq(&v.code1),
                    idx_composite::system2.eq(&v.system2),
                    idx_composite::code2.eq(&v.code2),
                )
            })
            .collect(),
        INDEX_CHUNK
    );
    insert_rows!(
        c,
        idx_position::table,
        e.positions
            .iter()
            .map(|v| {
                (
                    idx_position::res_type.eq(t),
                    idx_position::res_id.eq(id),
                    idx_position::param.eq(&v.param),
                    idx_position::latitude.eq(v.latitude),
                    idx_position::longitude.eq(v.longitude),
                    idx_position::x.eq(v.xyz[0]),
                    idx_position::y.eq(v.xyz[1]),
                    idx_position::z.eq(v.xyz[2]),
                )
            })
            .collect(),
        INDEX_CHUNK
    );
    Ok(())
}

/// PostgreSQL: each table's rows in one statement of a fixed text (see store::fixed), prepared
/// once per connection instead of parsed and planned again for every write.
fn write_index_pg(
    pg: &mut diesel::PgConnection,
    rt: ResourceType,
    id: &str,
    e: &index::Entries,
) -> Result<(), diesel::result::Error> {
    use Bind::{Float, Int, One, OptBool, OptInt, OptText, Text};
    let t = rt.as_str();
    let v = &e.tokens;
    insert(
        pg,
        v.len(),
        "INSERT INTO idx_token (res_type, res_id, param, system, code, display) \
         SELECT ?, ?, * FROM unnest(?, ?, ?, ?)",
        vec![
            One(t),
            One(id),
            Text(col(v, |x| x.param.as_str())),
            OptText(col(v, |x| x.system.as_deref())),
            OptText(col(v, |x| x.code.as_deref())),
            OptText(col(v, |x| x.display.as_deref())),
        ],
    )?;
    let v = &e.strings;
    insert(
        pg,
        v.len(),
        "INSERT INTO idx_string (res_type, res_id, param, norm, norm_full, exact) \
         SELECT ?, ?, * FROM unnest(?, ?, ?, ?)",
        vec![
            One(t),
            One(id),
            Text(col(v, |x| x.param.as_str())),
            Text(col(v, |x| x.norm.as_str())),
            OptText(col(v, |x| x.norm_full.as_deref())),
            Text(col(v, |x| x.exact.as_str())),
        ],
    )?;
    let v = &e.dates;
    insert(
        pg,
        v.len(),
        "INSERT INTO idx_date (res_type, res_id, param, low, high) SELECT ?, ?, * FROM unnest(?, ?, ?)",
        vec![
            One(t),
            One(id),
            Text(col(v, |x| x.param.as_str())),
            Int(col(v, |x| x.low)),
            Int(col(v, |x| x.high)),
        ],
    )?;
    let when = index::timeline(rt, e);
    let v = &e.references;
    insert(
        pg,
        v.len(),
        "INSERT INTO idx_reference (res_type, res_id, param, target_type, target_id, url, date_low, date_high, date_long) \
         SELECT ?, ?, * FROM unnest(?, ?, ?, ?, ?, ?, ?)",
        vec![
            One(t),
            One(id),
            Text(col(v, |x| x.param.as_str())),
            OptText(col(v, |x| x.target_type.as_deref())),
            OptText(col(v, |x| x.target_id.as_deref())),
            OptText(col(v, |x| x.url.as_deref())),
            OptInt(col(v, |_| when.map(|w| w.low))),
            OptInt(col(v, |_| when.map(|w| w.high))),
            OptBool(col(v, |_| when.map(|w| w.long))),
        ],
    )?;
    let v = &e.uris;
    insert(
        pg,
        v.len(),
        "INSERT INTO idx_uri (res_type, res_id, param, uri, uri_full) SELECT ?, ?, * FROM unnest(?, ?, ?)",
        vec![
            One(t),
            One(id),
            Text(col(v, |x| x.param.as_str())),
            Text(col(v, |x| x.uri.as_str())),
            OptText(col(v, |x| x.uri_full.as_deref())),
        ],
    )?;
    let v = &e.numbers;
    insert(
        pg,
        v.len(),
        "INSERT INTO idx_number (res_type, res_id, param, value, system, code) SELECT ?, ?, * FROM unnest(?, ?, ?, ?)",
        vec![
            One(t),
            One(id),
            Text(col(v, |x| x.param.as_str())),
            Float(col(v, |x| x.value)),
            OptText(col(v, |x| x.system.as_deref())),
            OptText(col(v, |x| x.code.as_deref())),
        ],
    )?;
    let v = &e.composites;
    insert(
        pg,
        v.len(),
        "INSERT INTO idx_composite (res_type, res_id, param, system1, code1, system2, code2) \
         SELECT ?, ?, * FROM unnest(?, ?, ?, ?, ?)",
        vec![
            One(t),
            One(id),
            Text(col(v, |x| x.param.as_str())),
            OptText(col(v, |x| x.system1.as_deref())),
            OptText(col(v, |x| x.code1.as_deref())),
            OptText(col(v, |x| x.system2.as_deref())),
            OptText(col(v, |x| x.code2.as_deref())),
        ],
    )?;
    let v = &e.positions;
    insert(
        pg,
        v.len(),
        "INSERT INTO idx_position (res_type, res_id, param, latitude, longitude, x, y, z) \
         SELECT ?, ?, * FROM unnest(?, ?, ?, ?, ?, ?)",
        vec![
            One(t),
            One(id),
            Text(col(v, |x| x.param.as_str())),
            Float(col(v, |x| x.latitude)),
            Float(col(v, |x| x.longitude)),
            Float(col(v, |x| x.xyz[0])),
            Float(col(v, |x| x.xyz[1])),
            Float(col(v, |x| x.xyz[2])),
        ],
    )?;
    Ok(())
}
