//! Subscriptions in the store: the index of active ones, matching each write against them in its
//! own transaction (the outbox), and the notifications' delivery state (see crate::subscriptions).

use diesel::prelude::*;
use diesel::sql_types::BigInt;
use serde_json::Value;

use super::hooks::{Change, Written};
use super::reads::load_current_for_write;
use super::schema::{subscription_deliveries, subscription_index};
use super::search::{load, CountRow};
use super::write::{update_in, Tx, Via};
use super::{Abort, AnyConnection, Store, WriteAccess};
use crate::error::Error;
use crate::resources::ResourceType;
use crate::search::plan::{plan, see_everything, Sql};
use crate::search::Search;
use crate::subscriptions::spec_of;

/// A notification claimed for sending, with what its Subscription says about where and how.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: i64,
    pub sub_id: String,
    pub res_type: String,
    pub res_id: String,
    pub version_id: i64,
    /// This attempt's number (1 for the first).
    pub attempts: i32,
    pub endpoint: String,
    pub payload: Option<String>,
    pub headers: Vec<String>,
}

#[derive(QueryableByName)]
struct Claimed {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

/// Before a Subscription is stored: only the channels and endpoints this server may use.
/// Before a Subscription is stored: only channels and endpoints this server may use, and only on a
/// type whose every record the writer may search and read — a notification carries each match, so
/// a writer limited to a compartment or to assigned clients could otherwise watch everyone's (403).
pub(super) fn before_subscription(tx: &mut Tx, change: &Change, resource: &mut Value) -> Result<(), Abort> {
    crate::subscriptions::accept(resource, &tx.rules.subscription_hosts)?;
    if let (Some(allowed), Ok(spec)) = (&change.access.subscribable, spec_of(resource)) {
        // A chain or `_has` matches through other types' records (planned with the server's
        // reach when notifying): only a writer who reaches every record of every type may use one.
        let through_others = crate::search::pairs(spec.criteria.as_bytes())
            .iter()
            .any(|(k, _)| k.starts_with("_has") || k.split(':').next().is_some_and(|name| name.contains('.')));
        if through_others && ResourceType::all().any(|t| !allowed.iter().any(|a| a == t.as_str())) {
            return Err(Error::Forbidden(
                "a Subscription whose criteria chain or use _has matches through other types' records: the token's scopes must grant search and read on every record of every type".into(),
            )
            .into());
        }
        if !allowed.iter().any(|t| t == spec.res_type.as_str()) {
            return Err(Error::Forbidden(format!(
                "a Subscription on {} notifies every match: the token's scopes must grant search and read on every {} record (system/, or user/ with TANDEM_USER_ACCESS=all)",
                spec.res_type.as_str(),
                spec.res_type.as_str()
            ))
            .into());
        }
    }
    Ok(())
}

/// After a Subscription is stored: its row in the index that writes are matched against.
pub(super) fn index_subscription(tx: &mut Tx, w: &Written) -> Result<(), Abort> {
    let c = &mut *tx.c;
    diesel::delete(subscription_index::table.filter(subscription_index::sub_id.eq(w.id))).execute(c)?;
    if let Ok(spec) = spec_of(w.resource) {
        diesel::insert_into(subscription_index::table)
            .values((
                subscription_index::sub_id.eq(w.id),
                subscription_index::res_type.eq(spec.res_type.as_str()),
                subscription_index::criteria.eq(&spec.criteria),
                subscription_index::endpoint.eq(&spec.endpoint),
                subscription_index::payload.eq(&spec.payload),
                subscription_index::headers.eq(serde_json::to_string(&spec.headers).unwrap_or_else(|_| "[]".into())),
                subscription_index::active.eq(spec.active),
                subscription_index::end_ms.eq(spec.end_ms),
            ))
            .execute(c)?;
    }
    Ok(())
}

/// After any write but a Subscription's: a notification for each active Subscription on the type
/// whose criteria the version matches (the outbox, in the write's transaction).
pub(super) fn queue_notifications(tx: &mut Tx, w: &Written) -> Result<(), Abort> {
    if w.rt.as_str() == "Subscription" {
        return Ok(());
    }
    let (now, rt, id) = (tx.now, w.rt, w.id);
    let c = &mut *tx.c;
    let subscriptions: Vec<(String, String)> = subscription_index::table
        .filter(subscription_index::res_type.eq(rt.as_str()))
        .filter(subscription_index::active.eq(true))
        .filter(
            subscription_index::end_ms
                .is_null()
                .or(subscription_index::end_ms.gt(now)),
        )
        .select((subscription_index::sub_id, subscription_index::criteria))
        .load(c)?;
    for (sub_id, criteria) in subscriptions {
        let pairs = crate::search::pairs(criteria.as_bytes());
        // Checked strictly when the Subscription was written; leniently here, so that a write never
        // fails because of someone's Subscription.
        let Ok(planned) = Search::parse(&pairs).and_then(|s| plan(&[rt], &s, false, &see_everything)) else {
            continue;
        };
        let mut sql = Sql::new("SELECT COUNT(*) AS n ");
        sql.append(&planned.from_where).push(" AND r.res_id = ").text_bind(id);
        let rows: Vec<CountRow> = load(c, &sql)?;
        if rows.first().is_some_and(|r| r.n > 0) {
            diesel::insert_into(subscription_deliveries::table)
                .values((
                    subscription_deliveries::sub_id.eq(&sub_id),
                    subscription_deliveries::res_type.eq(rt.as_str()),
                    subscription_deliveries::res_id.eq(id),
                    subscription_deliveries::version_id.eq(w.version_id),
                    subscription_deliveries::state.eq("pending"),
                    subscription_deliveries::attempts.eq(0),
                    subscription_deliveries::next_attempt.eq(now),
                    subscription_deliveries::created.eq(now),
                ))
                .execute(c)?;
        }
    }
    Ok(())
}

/// After a Subscription is deleted: it notifies no more.
pub(super) fn forget_subscription(tx: &mut Tx, id: &str) -> Result<(), Abort> {
    let c = &mut *tx.c;
    diesel::delete(subscription_index::table.filter(subscription_index::sub_id.eq(id))).execute(c)?;
    diesel::delete(subscription_deliveries::table.filter(subscription_deliveries::sub_id.eq(id))).execute(c)?;
    Ok(())
}

impl Store {
    /// Claims up to `limit` notifications that are due (or whose sender went silent) for sending.
    pub fn claim_deliveries(&self, now: i64, lease_ms: i64, limit: i64) -> Result<Vec<Delivery>, Error> {
        self.write(|c, _| {
            let ids: Vec<i64> = match c {
                AnyConnection::Postgresql(pg) => diesel::sql_query(
                    "SELECT id FROM subscription_deliveries WHERE (state = 'pending' AND next_attempt <= $1) \
                     OR (state = 'sending' AND lease_until < $1) ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
                )
                .bind::<BigInt, _>(now)
                .bind::<BigInt, _>(limit)
                .load::<Claimed>(pg)?
                .into_iter()
                .map(|r| r.id)
                .collect(),
                AnyConnection::Sqlite(_) => subscription_deliveries::table
                    .filter(
                        subscription_deliveries::state
                            .eq("pending")
                            .and(subscription_deliveries::next_attempt.le(now))
                            .or(subscription_deliveries::state
                                .eq("sending")
                                .and(subscription_deliveries::lease_until.lt(now))),
                    )
                    .order(subscription_deliveries::id.asc())
                    .limit(limit)
                    .select(subscription_deliveries::id)
                    .load(c)?,
            };
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            diesel::update(subscription_deliveries::table.filter(subscription_deliveries::id.eq_any(&ids)))
                .set((
                    subscription_deliveries::state.eq("sending"),
                    subscription_deliveries::lease_until.eq(now + lease_ms),
                    subscription_deliveries::attempts.eq(subscription_deliveries::attempts + 1),
                ))
                .execute(c)?;
            let rows: Vec<(i64, String, String, String, i64, i32)> = subscription_deliveries::table
                .filter(subscription_deliveries::id.eq_any(&ids))
                .order(subscription_deliveries::id.asc())
                .select((
                    subscription_deliveries::id,
                    subscription_deliveries::sub_id,
                    subscription_deliveries::res_type,
                    subscription_deliveries::res_id,
                    subscription_deliveries::version_id,
                    subscription_deliveries::attempts,
                ))
                .load(c)?;
            let mut out = Vec::with_capacity(rows.len());
            for (id, sub_id, res_type, res_id, version_id, attempts) in rows {
                let sub: Option<(String, Option<String>, String, bool)> = subscription_index::table
                    .filter(subscription_index::sub_id.eq(&sub_id))
                    .select((
                        subscription_index::endpoint,
                        subscription_index::payload,
                        subscription_index::headers,
                        subscription_index::active,
                    ))
                    .get_result(c)
                    .optional()?;
                match sub {
                    Some((endpoint, payload, headers, true)) => out.push(Delivery {
                        id,
                        sub_id,
                        res_type,
                        res_id,
                        version_id,
                        attempts,
                        endpoint,
                        payload,
                        headers: serde_json::from_str(&headers).unwrap_or_default(),
                    }),
                    // The Subscription is gone or off: its notification is dropped.
                    _ => {
                        diesel::delete(subscription_deliveries::table.filter(subscription_deliveries::id.eq(id)))
                            .execute(c)?;
                    }
                }
            }
            Ok(out)
        })
    }

    /// A notification was accepted by its endpoint.
    pub fn delivered(&self, id: i64) -> Result<(), Error> {
        self.write(|c, _| {
            diesel::delete(subscription_deliveries::table.filter(subscription_deliveries::id.eq(id))).execute(c)?;
            Ok(())
        })
    }

    /// A notification failed: tried again at `next_attempt`, or — when `give_up` — kept as failed,
    /// with its Subscription set to `error` (R4: the server records the last error).
    pub fn delivery_failed(&self, d: &Delivery, why: &str, next_attempt: i64, give_up: bool) -> Result<(), Error> {
        self.write(|c, now| {
            diesel::update(subscription_deliveries::table.filter(subscription_deliveries::id.eq(d.id)))
                .set((
                    subscription_deliveries::state.eq(if give_up { "failed" } else { "pending" }),
                    subscription_deliveries::next_attempt.eq(next_attempt),
                    subscription_deliveries::lease_until.eq(None::<i64>),
                    subscription_deliveries::last_error.eq(why),
                ))
                .execute(c)?;
            if !give_up {
                return Ok(());
            }
            let Some(rt) = ResourceType::parse("Subscription") else {
                return Ok(());
            };
            let current = load_current_for_write(c, rt, &d.sub_id)?;
            let Some(mut sub) = current
                .filter(|cur| !cur.deleted)
                .and_then(|cur| cur.body)
                .and_then(|b| serde_json::from_str::<Value>(&b).ok())
            else {
                return Ok(());
            };
            sub["status"] = Value::String("error".into());
            sub["error"] = Value::String(format!("notifications failed {} times; the last: {why}", d.attempts));
            let mut tx = Tx {
                c,
                rules: &self.rules,
                now,
            };
            let via = Via {
                method: "PUT",
                check_refs: false,
            };
            update_in(&mut tx, rt, &d.sub_id, &sub, None, via, &WriteAccess::full())?;
            Ok(())
        })
    }

    /// Notifications not yet sent (for tests and operators): (pending or sending, failed).
    pub fn delivery_counts(&self) -> Result<(i64, i64), Error> {
        let mut conn = self.pool.get()?;
        let pending: i64 = subscription_deliveries::table
            .filter(subscription_deliveries::state.ne("failed"))
            .count()
            .get_result(&mut conn)?;
        let failed: i64 = subscription_deliveries::table
            .filter(subscription_deliveries::state.eq("failed"))
            .count()
            .get_result(&mut conn)?;
        Ok((pending, failed))
    }
}
