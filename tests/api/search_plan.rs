//! A search over 100,000 Appointments by date range and actor answers from the indexes: the
//! database's own plan (EXPLAIN) shows no full scan of the resource table, on both backends, and
//! reads the actor's references in the week only (a range of the lookup index on the date they carry).

use tandem::resources::ResourceType;
use tandem::search::{plan::plan, Search};
use tandem::store::Store;

use crate::both_backends;
use crate::helpers::*;

const N: i64 = 100_000;

/// 100,000 booked sessions, ten minutes apart from 2026-01-01, each with one of 200 therapists and
/// one of 5,000 clients, written straight into the tables the server keeps (as its writes would).
fn bulk_sql(backend: Backend) -> String {
    let series = match backend {
        Backend::Postgres => format!("SELECT g FROM generate_series(1::bigint, {N}::bigint) AS g"),
        Backend::Sqlite => format!(
            "WITH RECURSIVE seq(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM seq WHERE g < {N}) SELECT g FROM seq"
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
        app.execute(&bulk_sql(app.backend));
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
