//! $book-session, $attendance, $caseload, $everything, and the read-only definitions.

use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;
use crate::scheduling::{appointment, clinic, put_ok};

const CANON: &str = "https://tandem.example.org/fhir";

fn book_params(start: &str, end: &str, members: &[&str]) -> Value {
    let mut p = vec![
        json!({"name": "start", "valueDateTime": start}),
        json!({"name": "end", "valueDateTime": end}),
        json!({"name": "practitioner", "valueReference": {"reference": "Practitioner/moss"}}),
        json!({"name": "location", "valueReference": {"reference": "Location/room-1"}}),
        json!({"name": "description", "valueString": "Grief support, weekly"}),
    ];
    p.extend(
        members
            .iter()
            .map(|m| json!({"name": "member", "valueReference": {"reference": m}})),
    );
    json!({"resourceType": "Parameters", "parameter": p})
}

async fn book(app: &TestApp, start: &str, end: &str, members: &[&str]) -> reqwest::Response {
    app.post_json("Group/grief/$book-session", &book_params(start, end, members))
        .await
}

fn actors(a: &Value) -> Vec<(String, String)> {
    a["participant"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["actor"]["reference"].as_str().unwrap().to_string(),
                p["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn part(member: &Value, name: &str) -> i64 {
    member["part"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap()["valueInteger"]
        .as_i64()
        .unwrap()
}

fn param<'a>(params: &'a Value, name: &str) -> &'a Value {
    params["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{name} in {params}"))
}

both_backends! {
    async fn book_session_invites_every_active_member_in_one_checked_transaction(app: TestApp) {
        clinic(&app).await;
        let res = book(&app, "2026-12-07T18:00:00Z", "2026-12-07T19:30:00Z", &[]).await;
        assert_eq!(res.status(), 201);
        assert!(res.headers()["location"].to_str().unwrap().contains("/Appointment/"));
        let a = json(res).await;
        assert_eq!(a["status"], "booked");
        assert_eq!(a["extension"][0]["valueReference"]["reference"], "Group/grief");
        assert_eq!(actors(&a), [
            ("Practitioner/moss".to_string(), "accepted".to_string()),
            ("Location/room-1".into(), "accepted".into()),
            ("Patient/p1".into(), "needs-action".into()),
            ("Patient/p2".into(), "needs-action".into()),
            ("Patient/p3".into(), "needs-action".into()),
            ("Patient/p4".into(), "needs-action".into()),
        ], "p5 left in June, p6 is inactive");

        // A chosen subset; a non-member in it is refused.
        let sub = json(book(&app, "2026-12-14T18:00:00Z", "2026-12-14T19:30:00Z", &["Patient/p1", "Patient/p2"]).await).await;
        assert_eq!(actors(&sub).len(), 4);
        let body = assert_outcome(book(&app, "2026-12-21T18:00:00Z", "2026-12-21T19:30:00Z", &["Patient/p1", "Patient/p5"]).await, 422, "processing").await;
        assert!(body["issue"][0]["diagnostics"].as_str().unwrap().contains("Patient/p5"));
        // The facilitator is already booked: 409 naming the session.
        let body = assert_outcome(book(&app, "2026-12-07T19:00:00Z", "2026-12-07T20:00:00Z", &["Patient/p1"]).await, 409, "conflict").await;
        assert!(body["issue"][0]["diagnostics"].as_str().unwrap().contains(a["id"].as_str().unwrap()));
        // A member without an agreement blocks the whole booking: nothing is written.
        app.client.delete(app.url("Consent/c3")).send().await.unwrap();
        let before = app.version_count().await;
        let body = assert_outcome(book(&app, "2026-12-28T18:00:00Z", "2026-12-28T19:30:00Z", &[]).await, 422, "processing").await;
        assert!(body["issue"][0]["diagnostics"].as_str().unwrap().contains("Patient/p3"));
        assert_eq!(app.version_count().await, before);

        // Bad requests.
        let mut missing = book_params("2026-12-28T18:00:00Z", "2026-12-28T19:30:00Z", &[]);
        missing["parameter"].as_array_mut().unwrap().remove(0);
        assert_outcome(app.post_json("Group/grief/$book-session", &missing).await, 400, "invalid").await;
        assert_outcome(book(&app, "2026-12-28T19:30:00Z", "2026-12-28T18:00:00Z", &[]).await, 400, "invalid").await;
        assert_outcome(app.post_json("Group/grief/$book-session", &json!({"resourceType": "Patient"})).await, 400, "structure").await;
        assert_outcome(app.post_json("Group/nope/$book-session", &book_params("2026-12-28T18:00:00Z", "2026-12-28T19:30:00Z", &[])).await, 404, "not-found").await;
        assert_outcome(app.get("Group/grief/$book-session").await, 405, "not-supported").await;
        assert_outcome(app.get("Group/grief/$nonsense").await, 404, "not-supported").await;
    }

    async fn attendance_counts_invited_attended_and_missed_per_member(app: TestApp) {
        clinic(&app).await;
        let canon_ext = format!("{CANON}/StructureDefinition/participant-attendance");
        let mut ids = Vec::new();
        for day in ["07", "14"] {
            let a = json(book(&app, &format!("2026-12-{day}T18:00:00Z"), &format!("2026-12-{day}T19:30:00Z"), &[]).await).await;
            ids.push(a["id"].as_str().unwrap().to_string());
        }
        // Record what happened: week 1 p1 p2 attended, p3 no-show, p4 late-cancel; week 2 p1 attended, p2 declined.
        let record = |mut a: Value, codes: &[(&str, Option<&str>, Option<&str>)]| {
            a["status"] = json!("fulfilled");
            for p in a["participant"].as_array_mut().unwrap() {
                if let Some((_, status, code)) = codes.iter().find(|(who, _, _)| p["actor"]["reference"] == *who) {
                    if let Some(s) = status {
                        p["status"] = json!(s);
                    }
                    if let Some(c) = code {
                        p["extension"] = json!([{"url": canon_ext, "valueCode": c}]);
                    }
                }
            }
            a
        };
        let week1 = json(app.get(&format!("Appointment/{}", ids[0])).await).await;
        let week1 = record(week1, &[("Patient/p1", Some("accepted"), Some("attended")), ("Patient/p2", Some("accepted"), Some("attended")),
            ("Patient/p3", None, Some("no-show")), ("Patient/p4", None, Some("late-cancel"))]);
        assert_eq!(app.put_json(&format!("Appointment/{}", ids[0]), &week1).await.status(), 200);
        let week2 = json(app.get(&format!("Appointment/{}", ids[1])).await).await;
        let week2 = record(week2, &[("Patient/p1", Some("accepted"), Some("attended")), ("Patient/p2", Some("declined"), None)]);
        assert_eq!(app.put_json(&format!("Appointment/{}", ids[1]), &week2).await.status(), 200);
        // A cancelled session does not count.
        let c = json(book(&app, "2026-12-21T18:00:00Z", "2026-12-21T19:30:00Z", &[]).await).await;
        let mut cancelled = c.clone();
        cancelled["status"] = json!("cancelled");
        assert_eq!(app.put_json(&format!("Appointment/{}", c["id"].as_str().unwrap()), &cancelled).await.status(), 200);

        let report = json(app.get("Group/grief/$attendance?start=2026-12-01&end=2027-01-01").await).await;
        assert_eq!(report["resourceType"], "Parameters");
        assert_eq!(param(&report, "sessions")["valueInteger"], 2);
        let member = |p: &str| report["parameter"].as_array().unwrap().iter().find(|x| x["name"] == "member" && x["part"][0]["valueReference"]["reference"] == p).unwrap().clone();
        let p1 = member("Patient/p1");
        assert_eq!((part(&p1, "invited"), part(&p1, "attended"), part(&p1, "missed")), (2, 2, 0));
        let p2 = member("Patient/p2");
        assert_eq!((part(&p2, "invited"), part(&p2, "attended"), part(&p2, "missed")), (1, 1, 0), "declined week 2");
        let p3 = member("Patient/p3");
        assert_eq!((part(&p3, "invited"), part(&p3, "missed"), part(&p3, "noShow"), part(&p3, "unrecorded")), (2, 1, 1, 1));
        let p4 = member("Patient/p4");
        assert_eq!((part(&p4, "missed"), part(&p4, "lateCancel")), (1, 1));
        let p6 = member("Patient/p6");
        assert_eq!(part(&p6, "invited"), 0, "every rostered member is reported");
        // The window narrows the report.
        let early = json(app.get("Group/grief/$attendance?start=2026-12-01&end=2026-12-10").await).await;
        assert_eq!(param(&early, "sessions")["valueInteger"], 1);
        assert_outcome(app.get("Group/grief/$attendance?start=soon").await, 400, "invalid").await;
        assert_outcome(app.get("Group/nope/$attendance").await, 404, "not-found").await;
    }

    async fn caseload_splits_individual_and_group_hours(app: TestApp) {
        clinic(&app).await;
        put_ok(&app, appointment("i1", "booked", "2026-12-01T09:00:00Z", "2026-12-01T09:50:00Z", &["Practitioner/moss", "Patient/p1"])).await;
        put_ok(&app, appointment("i2", "fulfilled", "2026-12-02T09:00:00Z", "2026-12-02T09:50:00Z", &["Practitioner/moss", "Patient/p6"])).await;
        put_ok(&app, appointment("i3", "cancelled", "2026-12-03T09:00:00Z", "2026-12-03T09:50:00Z", &["Practitioner/moss", "Patient/p2"])).await;
        let mut declined = appointment("i4", "booked", "2026-12-04T09:00:00Z", "2026-12-04T09:50:00Z", &["Practitioner/moss", "Practitioner/ngata", "Patient/p3"]);
        declined["participant"][0]["status"] = json!("declined");
        put_ok(&app, declined).await;
        put_ok(&app, appointment("i5", "booked", "2027-01-04T09:00:00Z", "2027-01-04T09:50:00Z", &["Practitioner/moss", "Patient/p3"])).await;
        assert_eq!(book(&app, "2026-12-07T18:00:00Z", "2026-12-07T19:30:00Z", &[]).await.status(), 201);

        let c = json(app.get("Practitioner/moss/$caseload?start=2026-12-01&end=2027-01-01").await).await;
        assert_eq!(param(&c, "individualSessions")["valueInteger"], 2);
        assert_eq!(param(&c, "individualHours")["valueDecimal"], 1.67);
        assert_eq!(param(&c, "groupSessions")["valueInteger"], 1);
        assert_eq!(param(&c, "groupHours")["valueDecimal"], 1.5);
        assert_eq!(param(&c, "totalHours")["valueDecimal"], 3.17);
        assert_eq!(param(&c, "distinctPatients")["valueInteger"], 5, "p1 and p6 individually, p1..p4 in the group");
        let n = json(app.get("Practitioner/ngata/$caseload?start=2026-12-01&end=2027-01-01").await).await;
        assert_eq!(param(&n, "individualSessions")["valueInteger"], 1);
        assert_outcome(app.get("Practitioner/nobody/$caseload").await, 404, "not-found").await;
    }

    async fn everything_about_a_patient_pages_through_one_bundle(app: TestApp) {
        clinic(&app).await;
        put_ok(&app, json!({"resourceType": "CareTeam", "id": "team-p1", "status": "active", "subject": {"reference": "Patient/p1"},
            "participant": [{"member": {"reference": "Practitioner/moss"}, "role": [{"text": "therapist"}], "period": {"start": "2026-01-01"}}]})).await;
        put_ok(&app, appointment("i1", "booked", "2026-12-01T09:00:00Z", "2026-12-01T09:50:00Z", &["Practitioner/moss", "Patient/p1"])).await;
        assert_eq!(book(&app, "2026-12-07T18:00:00Z", "2026-12-07T19:30:00Z", &[]).await.status(), 201);
        put_ok(&app, appointment("other", "booked", "2026-12-02T09:00:00Z", "2026-12-02T09:50:00Z", &["Practitioner/moss", "Patient/p2"])).await;

        let mut seen = Vec::new();
        let mut url = app.url("Patient/p1/$everything?_count=2");
        let mut totals = Vec::new();
        loop {
            let page: Value = app.client.get(&url).send().await.unwrap().json().await.unwrap();
            assert_eq!(page["type"], "searchset");
            totals.push(page["total"].as_i64().unwrap());
            seen.extend(page["entry"].as_array().unwrap().iter().map(|e| e["resource"]["resourceType"].as_str().unwrap().to_string() + "/" + e["resource"]["id"].as_str().unwrap()));
            match page["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next") {
                Some(next) => url = next["url"].as_str().unwrap().to_string(),
                None => break,
            }
        }
        assert!(totals.len() > 1, "more than one page");
        assert!(totals.iter().all(|t| *t == seen.len() as i64), "{totals:?} vs {}", seen.len());
        assert_eq!(seen[0], "Patient/p1");
        for expected in ["Appointment/i1", "CareTeam/team-p1", "Group/grief", "Consent/c1"] {
            assert!(seen.contains(&expected.to_string()), "{expected} in {seen:?}");
        }
        assert_eq!(seen.iter().filter(|s| s.starts_with("Appointment/")).count(), 2, "the individual and the group session");
        assert!(!seen.contains(&"Appointment/other".to_string()));
        assert_outcome(app.get("Patient/nobody/$everything").await, 404, "not-found").await;
    }

    async fn our_definitions_are_served_read_only(app: TestApp) {
        let sd = json(app.get("StructureDefinition/group-capacity").await).await;
        assert_eq!(sd["url"], format!("{CANON}/StructureDefinition/group-capacity"));
        assert_eq!(sd["type"], "Extension");
        let cs = json(app.get(&format!("CodeSystem?url={CANON}/CodeSystem/attendance")).await).await;
        assert_eq!(cs["total"], 1);
        let codes: Vec<&str> = cs["entry"][0]["resource"]["concept"].as_array().unwrap().iter().map(|c| c["code"].as_str().unwrap()).collect();
        assert_eq!(codes, ["attended", "no-show", "late-cancel"]);
        assert_eq!(json(app.get("CodeSystem").await).await["total"], 4);
        assert_eq!(json(app.get("OperationDefinition").await).await["total"], 7);
        let xml = app.get("CodeSystem/consent-category?_format=xml").await.text().await.unwrap();
        assert!(xml.contains("<code value=\"group-confidentiality\"/>"), "{xml}");
        assert_outcome(app.get("StructureDefinition/nope").await, 404, "not-found").await;
        assert_outcome(app.put_json("StructureDefinition/group-capacity", &sd).await, 405, "not-supported").await;
    }
}
