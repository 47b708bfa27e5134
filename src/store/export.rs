//! Bulk Data export jobs and their files (see crate::export for the runner).

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

use super::schema::{export_files, export_jobs};
use super::search::{load, IdOnly};
use super::{AnyConnection, Store};
use crate::error::Error;
use crate::resources::{compartment, ResourceType};
use crate::search::plan::Sql;

/// A job as stored.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = export_jobs)]
pub struct ExportJob {
    pub id: String,
    pub state: String,
    pub level: String,
    pub group_id: Option<String>,
    pub types: String,
    pub since: Option<i64>,
    pub request_url: String,
    pub requester: String,
    pub created: i64,
    pub transaction_time: Option<i64>,
    pub progress: Option<String>,
    pub owner: Option<String>,
    pub heartbeat: Option<i64>,
    pub error: Option<String>,
    pub expires: Option<i64>,
}

impl ExportJob {
    pub fn type_list(&self) -> Vec<ResourceType> {
        self.types.split(',').filter_map(ResourceType::parse).collect()
    }
}

/// What a kick-off asks for.
#[derive(Debug, Clone)]
pub struct NewExport {
    pub id: String,
    pub level: &'static str,
    pub group_id: Option<String>,
    pub types: Vec<ResourceType>,
    pub since: Option<i64>,
    pub request_url: String,
    pub requester: String,
}

/// One output file of a job: its number, type and resource count.
#[derive(Debug, Clone, Queryable)]
pub struct ExportFile {
    pub seq: i64,
    pub res_type: String,
    pub count: i64,
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = Text)]
    res_id: String,
    #[diesel(sql_type = Text)]
    body: String,
}

impl Store {
    pub fn create_export(&self, job: &NewExport, now: i64) -> Result<(), Error> {
        let types: Vec<&str> = job.types.iter().map(|t| t.as_str()).collect();
        self.write(|c, _| {
            diesel::insert_into(export_jobs::table)
                .values((
                    export_jobs::id.eq(&job.id),
                    export_jobs::state.eq("queued"),
                    export_jobs::level.eq(job.level),
                    export_jobs::group_id.eq(&job.group_id),
                    export_jobs::types.eq(types.join(",")),
                    export_jobs::since.eq(job.since),
                    export_jobs::request_url.eq(&job.request_url),
                    export_jobs::requester.eq(&job.requester),
                    export_jobs::created.eq(now),
                ))
                .execute(c)?;
            Ok(())
        })
    }

    pub fn export_job(&self, id: &str) -> Result<Option<ExportJob>, Error> {
        let mut conn = self.pool.get()?;
        Ok(export_jobs::table
            .filter(export_jobs::id.eq(id))
            .select(ExportJob::as_select())
            .get_result(&mut conn)
            .optional()?)
    }

    pub fn export_file_list(&self, id: &str) -> Result<Vec<ExportFile>, Error> {
        let mut conn = self.pool.get()?;
        Ok(export_files::table
            .filter(export_files::job_id.eq(id))
            .order(export_files::seq.asc())
            .select((export_files::seq, export_files::res_type, export_files::count))
            .load(&mut conn)?)
    }

    pub fn export_file(&self, id: &str, seq: i64) -> Result<Option<String>, Error> {
        let mut conn = self.pool.get()?;
        Ok(export_files::table
            .filter(export_files::job_id.eq(id))
            .filter(export_files::seq.eq(seq))
            .select(export_files::content)
            .get_result(&mut conn)
            .optional()?)
    }

    /// Cancels a job (a runner that holds it stops at its next heartbeat) and removes its files.
    pub fn cancel_export(&self, id: &str) -> Result<(), Error> {
        self.write(|c, _| {
            diesel::update(export_jobs::table.filter(export_jobs::id.eq(id)))
                .set(export_jobs::state.eq("cancelled"))
                .execute(c)?;
            diesel::delete(export_files::table.filter(export_files::job_id.eq(id))).execute(c)?;
            Ok(())
        })
    }

    /// Takes the oldest queued job, or a running one whose runner has gone silent since `stale_before`,
    /// for `owner`. Its files from an earlier, interrupted run are removed: the job starts over.
    pub fn claim_export(&self, owner: &str, stale_before: i64) -> Result<Option<ExportJob>, Error> {
        let claimed = self.write(|c, now| {
            let candidate: Option<String> = match c {
                AnyConnection::Postgresql(pg) => diesel::sql_query(
                    "SELECT id FROM export_jobs WHERE state = 'queued' OR (state = 'running' AND heartbeat < $1) \
                     ORDER BY created LIMIT 1 FOR UPDATE SKIP LOCKED",
                )
                .bind::<BigInt, _>(stale_before)
                .get_results::<IdOnly>(pg)?
                .pop()
                .map(|r| r.id),
                AnyConnection::Sqlite(_) => export_jobs::table
                    .filter(
                        export_jobs::state.eq("queued").or(export_jobs::state
                            .eq("running")
                            .and(export_jobs::heartbeat.lt(stale_before))),
                    )
                    .order(export_jobs::created.asc())
                    .select(export_jobs::id)
                    .first(c)
                    .optional()?,
            };
            let Some(id) = candidate else { return Ok(None) };
            diesel::update(export_jobs::table.filter(export_jobs::id.eq(&id)))
                .set((
                    export_jobs::state.eq("running"),
                    export_jobs::owner.eq(owner),
                    export_jobs::heartbeat.eq(now),
                    export_jobs::progress.eq("starting"),
                ))
                .execute(c)?;
            diesel::delete(export_files::table.filter(export_files::job_id.eq(&id))).execute(c)?;
            Ok(Some(id))
        })?;
        match claimed {
            Some(id) => self.export_job(&id),
            None => Ok(None),
        }
    }

    /// Records progress; false when the job is no longer this runner's to run (cancelled, or taken
    /// over after this runner was thought dead).
    pub fn export_heartbeat(&self, id: &str, owner: &str, progress: &str) -> Result<bool, Error> {
        self.write(|c, now| {
            let n = diesel::update(
                export_jobs::table
                    .filter(export_jobs::id.eq(id))
                    .filter(export_jobs::owner.eq(owner))
                    .filter(export_jobs::state.eq("running")),
            )
            .set((export_jobs::heartbeat.eq(now), export_jobs::progress.eq(progress)))
            .execute(c)?;
            Ok(n == 1)
        })
    }

    /// Puts a job this runner holds back in the queue (its process is stopping), files removed.
    pub fn release_export(&self, id: &str, owner: &str) -> Result<(), Error> {
        self.write(|c, _| {
            let n = diesel::update(
                export_jobs::table
                    .filter(export_jobs::id.eq(id))
                    .filter(export_jobs::owner.eq(owner))
                    .filter(export_jobs::state.eq("running")),
            )
            .set((
                export_jobs::state.eq("queued"),
                export_jobs::owner.eq(None::<String>),
                export_jobs::progress.eq("queued again"),
            ))
            .execute(c)?;
            if n == 1 {
                diesel::delete(export_files::table.filter(export_files::job_id.eq(id))).execute(c)?;
            }
            Ok(())
        })
    }

    pub fn set_export_time(&self, id: &str, transaction_time: i64) -> Result<(), Error> {
        self.write(|c, _| {
            diesel::update(export_jobs::table.filter(export_jobs::id.eq(id)))
                .set(export_jobs::transaction_time.eq(transaction_time))
                .execute(c)?;
            Ok(())
        })
    }

    /// Adds an output file, if the job is still this runner's.
    pub fn add_export_file(
        &self,
        id: &str,
        owner: &str,
        seq: i64,
        rt: ResourceType,
        count: i64,
        content: &str,
    ) -> Result<bool, Error> {
        self.write(|c, _| {
            let mine = export_jobs::table
                .filter(export_jobs::id.eq(id))
                .filter(export_jobs::owner.eq(owner))
                .filter(export_jobs::state.eq("running"))
                .count()
                .get_result::<i64>(c)?
                == 1;
            if mine {
                diesel::insert_into(export_files::table)
                    .values((
                        export_files::job_id.eq(id),
                        export_files::seq.eq(seq),
                        export_files::res_type.eq(rt.as_str()),
                        export_files::count.eq(count),
                        export_files::content.eq(content),
                    ))
                    .execute(c)?;
            }
            Ok(mine)
        })
    }

    /// Ends a job this runner holds: completed (kept until `expires`) or failed.
    pub fn finish_export(&self, id: &str, owner: &str, error: Option<&str>, expires: i64) -> Result<(), Error> {
        self.write(|c, _| {
            diesel::update(
                export_jobs::table
                    .filter(export_jobs::id.eq(id))
                    .filter(export_jobs::owner.eq(owner))
                    .filter(export_jobs::state.eq("running")),
            )
            .set((
                export_jobs::state.eq(if error.is_some() { "failed" } else { "completed" }),
                export_jobs::error.eq(error),
                export_jobs::progress.eq(if error.is_some() { "failed" } else { "completed" }),
                export_jobs::expires.eq(expires),
            ))
            .execute(c)?;
            Ok(())
        })
    }

    /// Removes jobs (and files) that expired, and cancelled ones.
    pub fn purge_exports(&self, now: i64) -> Result<usize, Error> {
        self.write(|c, _| {
            let gone: Vec<String> = export_jobs::table
                .filter(export_jobs::expires.lt(now).or(export_jobs::state.eq("cancelled")))
                .select(export_jobs::id)
                .load(c)?;
            if gone.is_empty() {
                return Ok(0);
            }
            diesel::delete(export_files::table.filter(export_files::job_id.eq_any(&gone))).execute(c)?;
            diesel::delete(export_jobs::table.filter(export_jobs::id.eq_any(&gone))).execute(c)?;
            Ok(gone.len())
        })
    }

    /// A page of what a job exports of `rt`: current versions with ids after `after`, in id order,
    /// changed since `since`, and — for a patient or group export — in a patient's compartment (of
    /// the group's members, for a group export).
    pub fn export_page(
        &self,
        job: &ExportJob,
        rt: ResourceType,
        after: &str,
        limit: i64,
    ) -> Result<Vec<(String, String)>, Error> {
        let mut sql = Sql::new("SELECT r.res_id, r.body FROM resources r WHERE r.res_type = ");
        sql.text_bind(rt.as_str())
            .push(" AND r.deleted = false AND r.res_id > ")
            .text_bind(after);
        if let Some(since) = job.since {
            sql.push(" AND r.last_updated >= ").int_bind(since);
        }
        if rt.as_str() == "DocumentReference" {
            // Psychotherapy notes are their author's alone: no export carries them.
            sql.push(" AND r.res_id NOT IN (")
                .append(&crate::search::plan::hidden_notes(None))
                .push(")");
        }
        let members = |sql: &mut Sql, group: &str| {
            sql.push(
                "SELECT target_id FROM idx_reference WHERE res_type = 'Group' AND param = 'member' \
                 AND target_type = 'Patient' AND url IS NULL AND res_id = ",
            )
            .text_bind(group);
        };
        match (job.level.as_str(), &job.group_id, compartment::patient_params(rt)) {
            ("system", _, _) => {}
            (_, _, None) => {
                return Err(Error::Internal(format!("{rt} is not in the Patient compartment")));
            }
            ("patient", _, Some(_)) if rt.as_str() == "Patient" => {}
            ("group", Some(group), Some(_)) if rt.as_str() == "Patient" => {
                sql.push(" AND r.res_id IN (");
                members(&mut sql, group);
                sql.push(")");
            }
            (level, group, Some(params)) => {
                sql.push(" AND r.res_id IN (SELECT res_id FROM idx_reference WHERE res_type = ")
                    .text_bind(rt.as_str())
                    .push(" AND target_type = 'Patient' AND url IS NULL AND param IN (")
                    .text_binds(params.iter().copied())
                    .push(")");
                if level == "group" {
                    let group = group
                        .as_deref()
                        .ok_or_else(|| Error::Internal("a group export without its group".into()))?;
                    sql.push(" AND target_id IN (");
                    members(&mut sql, group);
                    sql.push(")");
                }
                sql.push(")");
            }
        }
        sql.push(" ORDER BY r.res_id").limit(limit);
        let mut pooled = self.pool.get()?;
        let rows: Vec<Row> = load(&mut pooled, &sql)?;
        Ok(rows.into_iter().map(|r| (r.res_id, r.body)).collect())
    }
}
