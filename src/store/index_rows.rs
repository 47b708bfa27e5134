//! The search-index rows of a version (idx_* tables): cleared and written in the write's
//! transaction, from what resources::index extracts.

use diesel::prelude::*;

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
