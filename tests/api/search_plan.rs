//! A search over 100,000 Appointments by date range and actor answers from the indexes: the
//! database's own plan (EXPLAIN) shows no full scan of the resource table, on both backends, and
//! reads the actor's references in the week only (a range of the lookup index on the date they carry).
//! A `_sort` finds each resource's sort key through the index table's owner index, whatever the
//! planner's statistics say.

use tandem::resources::ResourceType;
use tandem::search::{plan::plan, Search};
use tandem::store::Store;

use crate::both_backends;
use crate::helpers::*;

const N: i64 = 100_000;

/// 100,000 booked sessions, ten minutes apart from 2026-01-01, each with one of 200 therapists and
/// one of 5,000 clients, written straight into the tables the server keeps (as its writes would).
fn bulk_sql(backend: Backend, n: i64) -> String {
    let series = match backend {
        Backend::Postgres => format!("SELECT g FROM generate_series(1::bigint, {n}::bigint) AS g"),
        Backend::Sqlite => format!(
            "WITH RECURSIVE seq(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM seq WHERE g < {n}) SELECT g FROM seq"
        ),
    };
    let start = 1_767_225_600_000i64; // 2026-01-01T00:00:00Z
    format!(
        "INSERT INTO resources (res_type, res_id, version_id, last_updated, deleted, body)
           SELECT 'Appointment', 'a' || g, 1, {start} + g, false, '{{\"resourceType\":\"Appointment\"}}' FROM ({series}) s;
         INSERT INTO idx_date (res_type, res_id, param, low, high)
           SELECT 'Appointment', 'a' || g, 'date', {start} + g * 600000, {start} + g * 600000 + 2999999 FROM ({series}) s;
         INSERT INTO idx_reference (res_type, res_id, param, target_type, target_id, url, date_low, date_high, date_long)
           SELECT 'Appointment', 'a' || g, 'actor', 'Practitioner', 'p' || (g % 200), NULL,
                  {start} + g * 600000, {start} + g * 600000 + 2999999, false FROM ({series}) s;
         INSERT INTO idx_reference (res_type, res_id, param, target_type, target_id, url, date_low, date_high, date_long)
           SELECT 'Appointment', 'a' || g, 'actor', 'Patient', 'c' || (g % 5000), NULL,
                  {start} + g * 600000, {start} + g * 600000 + 2999999, false FROM ({series}) s;
         INSERT INTO idx_token (res_type, res_id, param, system, code, display)
           SELECT 'Appointment', 'a' || g, 'status', NULL, 'booked', NULL FROM ({series}) s;"
    )
}

both_backends! {
    async fn date_and_actor_search_over_100k_appointments_uses_indexes(app: TestApp) {
        app.execute(&bulk_sql(app.backend, N));
        let query = "date=ge2026-03-01&date=lt2026-03-08&actor=Practitioner/p7";

        // The answer is right: sessions g with g % 200 == 7 starting in that week.
        let (march_1, march_8) = (1_772_323_200_000i64, 1_772_928_000_000i64); // 00:00Z of each day
        let march_1_end = march_1 + 86_400_000 - 1;
        let expected = (1..=N)
            .filter(|g| g % 200 == 7)
            .filter(|g| {
                let (low, high) = (1_767_225_600_000 + g * 600_000, 1_767_225_600_000 + g * 600_000 + 2_999_999);
                // search.html: ge = above the day, or within it (so: ends after it, or starts in or
                // after it); lt = starts before the day.
                let ge = high > march_1_end || low >= march_1;
                ge && low < march_8
            })
            .count();
        assert!(expected > 0);
        let counted = json(app.get(&format!("Appointment?{query}&_summary=count")).await).await;
        assert_eq!(counted["total"].as_u64().unwrap() as usize, expected);

        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        let planned = plan(&[ResourceType::parse("Appointment").unwrap()], &Search::parse(&pairs).unwrap(), true, &tandem::search::plan::see_everything).unwrap();
        // The plan as loaded (the planner may have no statistics yet), and again after ANALYZE.
        for stage in ["as loaded", "analyzed"] {
            if stage == "analyzed" {
                app.execute("ANALYZE;");
            }
            let store = Store::open(&app.db.url, 1).unwrap();
            let lines = store.explain(&planned, 50).unwrap();
            let plan_text = lines.join("\n");
            eprintln!("{:?} plan, {stage}:\n{plan_text}", app.backend);
            // No full scan at all, of the resource table or of an index table.
            match app.backend {
                Backend::Postgres => {
                    assert!(!plan_text.contains("Seq Scan"), "a full scan ({stage}):\n{plan_text}");
                    assert!(plan_text.contains("idx_reference_dated"), "{stage}:\n{plan_text}");
                    assert!(plan_text.contains("date_low >="), "the week bounds the index range ({stage}):\n{plan_text}");
                }
                Backend::Sqlite => {
                    assert!(!lines.iter().any(|l| l.starts_with("SCAN ")), "a full scan ({stage}):\n{plan_text}");
                    // The actor criterion drives, over the actor's references in the week only; the
                    // date criteria check each candidate by owner.
                    assert!(
                        plan_text.contains("USING INDEX idx_reference_dated (res_type=? AND param=? AND target_id=? AND target_type=? AND date_long=? AND date_low>? AND date_low<?)"),
                        "{stage}:\n{plan_text}"
                    );
                    let date_lines: Vec<&String> = lines.iter().filter(|l| l.contains("idx_date")).collect();
                    assert!(!date_lines.is_empty() && date_lines.iter().all(|l| l.contains("idx_date_owner")), "{stage}:\n{plan_text}");
                }
            }
        }
    }
}

both_backends! {
    // Found by the benchmark: `Appointment?_sort=-date` right after a bulk load (no planner
    // statistics yet) ran 52 s on SQLite, walking the (res_type, param, high) index from its end for
    // every Appointment, and the request timed out while the query went on. Every sortable kind of
    // index table is checked, as loaded (no statistics) and after ANALYZE.
    async fn a_sort_finds_each_key_through_the_owner_index_with_or_without_statistics(app: TestApp) {
        let n = 20_000;
        app.execute(&bulk_sql(app.backend, n));
        // The latest session first: a client's `_sort=-date&_count=1`.
        let newest = json(app.get("Appointment?_sort=-date&_count=1").await).await;
        let first = |bundle: &serde_json::Value| bundle["entry"][0]["fullUrl"].as_str().unwrap_or_default().rsplit('/').next().unwrap_or_default().to_string();
        assert_eq!(first(&newest), format!("a{n}"), "{newest}");
        let oldest = json(app.get("Appointment?_sort=date&_count=1").await).await;
        assert_eq!(first(&oldest), "a1", "{oldest}");

        let types = [ResourceType::parse("Appointment").unwrap()];
        for stage in ["as loaded", "analyzed"] {
            if stage == "analyzed" {
                app.execute("ANALYZE;");
            }
            let store = Store::open(&app.db.url, 1).unwrap();
            for (sort, table) in [("-date", "idx_date"), ("date", "idx_date"), ("status", "idx_token"), ("-actor", "idx_reference")] {
                let pairs = vec![("_sort".to_string(), sort.to_string())];
                let planned = plan(&types, &Search::parse(&pairs).unwrap(), true, &tandem::search::plan::see_everything).unwrap();
                let lines = store.explain(&planned, 1).unwrap();
                let plan_text = lines.join("\n");
                let probes: Vec<&String> = lines.iter().filter(|l| l.contains(table)).collect();
                assert!(!probes.is_empty(), "_sort={sort} ({stage}): no {table}:\n{plan_text}");
                for line in probes {
                    assert!(line.contains(&format!("{table}_owner")), "_sort={sort} ({stage}): {line}\n{plan_text}");
                    if app.backend == Backend::Sqlite {
                        assert!(line.contains("res_id=?"), "_sort={sort} ({stage}): {line}\n{plan_text}");
                    }
                }
            }
        }
    }
}
