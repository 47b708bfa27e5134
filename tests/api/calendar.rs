//! Richer scheduling (issue 26, DESIGN.md "Time reserved for groups", "Teletherapy"): weekly series
//! booked whole or not at all, `$cancel-series`, `Appointment/$find` against a calendar worked out by
//! hand, and video sessions whose host key a client never sees. Each rule with the case that passes
//! and the case refused.

use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;
use crate::scheduling::{appointment, put_ok};
use tandem::resources::dates;

const CANON: &str = "https://tandem.example.org/fhir";
const SUBJECT: &str = "http://hl7.org/fhir/5.0/StructureDefinition/extension-Appointment.subject";
const VIRTUAL: &str = "http://hl7.org/fhir/5.0/StructureDefinition/extension-Appointment.virtualService";
const RECURRENCE_ID: &str = "http://hl7.org/fhir/5.0/StructureDefinition/extension-Appointment.recurrenceId";
const ORIGINATING: &str = "http://hl7.org/fhir/5.0/StructureDefinition/extension-Appointment.originatingAppointment";
const DAY_MS: i64 = 24 * 3_600_000;

/// An instant as a FHIR dateTime at `offset` minutes.
fn fmt(ms: i64, offset: i32) -> String {
    dates::format_at_offset(ms, offset).unwrap()
}

fn agreement(id: &str, patient: &str, group: &str, end: &str) -> Value {
    json!({"resourceType": "Consent", "id": id, "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": format!("{CANON}/CodeSystem/consent-category"), "code": "group-confidentiality"}]}],
        "patient": {"reference": format!("Patient/{patient}")},
        "policyRule": {"coding": [{"system": format!("{CANON}/CodeSystem/consent-category"), "code": "group-confidentiality-rules"}]},
        "provision": {"period": {"start": "2020-01-01", "end": end}, "actor": [{"role": {"text": "member"}, "reference": {"reference": format!("Group/{group}")}}]}})
}

/// Two therapists, a room, four clients; the group `circle` of p1..p3 (p2 leaves on 2031-03-12),
/// each with an agreement to 2040 but p3's, which ends on 2031-03-20.
async fn circle(app: &TestApp) {
    for id in ["moss", "ngata"] {
        put_ok(app, json!({"resourceType": "Practitioner", "id": id})).await;
    }
    put_ok(
        app,
        json!({"resourceType": "Location", "id": "room-1", "name": "Room 1"}),
    )
    .await;
    for i in 1..=4 {
        put_ok(app, json!({"resourceType": "Patient", "id": format!("p{i}")})).await;
    }
    put_ok(
        app,
        json!({"resourceType": "Group", "id": "circle", "type": "person", "actual": true,
        "managingEntity": {"reference": "Practitioner/moss"},
        "member": [
            {"entity": {"reference": "Patient/p1"}, "period": {"start": "2020-01-01"}},
            {"entity": {"reference": "Patient/p2"}, "period": {"start": "2020-01-01", "end": "2031-03-12"}},
            {"entity": {"reference": "Patient/p3"}, "period": {"start": "2020-01-01"}}]}),
    )
    .await;
    put_ok(app, agreement("c1", "p1", "circle", "2040-12-31")).await;
    put_ok(app, agreement("c2", "p2", "circle", "2040-12-31")).await;
    put_ok(app, agreement("c3", "p3", "circle", "2031-03-20")).await;
}

/// The Parameters of a $book-session of `count` weekly sessions from `start` to `end`.
fn series(start: &str, end: &str, practitioner: &str, count: i64, extra: &[Value]) -> Value {
    let mut parameter = vec![
        json!({"name": "start", "valueDateTime": start}),
        json!({"name": "end", "valueDateTime": end}),
        json!({"name": "practitioner", "valueReference": {"reference": practitioner}}),
        json!({"name": "count", "valueInteger": count}),
    ];
    parameter.extend(extra.iter().cloned());
    json!({"resourceType": "Parameters", "parameter": parameter})
}

fn extension<'a>(resource: &'a Value, url: &str) -> Option<&'a Value> {
    resource["extension"].as_array()?.iter().find(|e| e["url"] == url)
}

fn patients(appointment: &Value) -> Vec<String> {
    appointment["participant"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["actor"]["reference"].as_str())
        .filter(|r| r.starts_with("Patient/"))
        .map(str::to_string)
        .collect()
}

fn diagnostics(outcome: &Value) -> String {
    outcome["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

both_backends! {
    async fn a_weekly_series_is_booked_whole_or_not_at_all(app: TestApp) {
        circle(&app).await;
        // Twelve Tuesdays from 4 March 2031, for p1 (p2 leaves the group and p3's agreement lapses
        // in March: each occurrence is checked on its own date, see the next test).
        let booked = app.post_json("Group/circle/$book-session", &series("2031-03-04T18:00:00-05:00", "2031-03-04T19:30:00-05:00", "Practitioner/moss", 12, &[
            json!({"name": "location", "valueReference": {"reference": "Location/room-1"}}),
            json!({"name": "member", "valueReference": {"reference": "Patient/p1"}})])).await;
        assert_eq!(booked.status(), 201);
        let bundle = json(booked).await;
        assert_eq!(bundle["resourceType"], "Bundle");
        assert_eq!(bundle["type"], "collection");
        assert!(bundle.get("total").is_none(), "bdl-1: no total in a collection");
        let occurrences: Vec<Value> = entries(&bundle).into_iter().map(|e| e["resource"].clone()).collect();
        assert_eq!(occurrences.len(), 12);
        let first = occurrences[0]["id"].as_str().unwrap().to_string();
        let start0 = dates::parse_range("2031-03-04T18:00:00-05:00").unwrap().low;
        for (k, o) in occurrences.iter().enumerate() {
            // Each a week later, at the same time in the start's offset.
            assert_eq!(o["start"], fmt(start0 + k as i64 * 7 * DAY_MS, -300), "{o}");
            assert_eq!(o["end"], fmt(start0 + k as i64 * 7 * DAY_MS + 90 * 60_000, -300));
            assert_eq!(o["status"], "booked");
            assert_eq!(extension(o, SUBJECT).unwrap()["valueReference"]["reference"], "Group/circle");
            assert_eq!(extension(o, RECURRENCE_ID).unwrap()["valuePositiveInt"], k + 1);
            match extension(o, ORIGINATING) {
                Some(e) => assert_eq!(e["valueReference"]["reference"], format!("Appointment/{first}")),
                None => assert_eq!(k, 0, "occurrence {} names no first occurrence", k + 1),
            }
            assert_eq!(patients(o), vec!["Patient/p1"]);
            assert_eq!(bundle["entry"][k]["fullUrl"], app.url(&format!("Appointment/{}", o["id"].as_str().unwrap())));
        }
        assert_eq!(occurrences[11]["start"], "2031-05-20T18:00:00-05:00");
        // Stored as answered, and found as a series by our search parameter.
        let stored = json(app.get(&format!("Appointment/{}", occurrences[6]["id"].as_str().unwrap())).await).await;
        assert_eq!(stored["start"], occurrences[6]["start"]);
        let later = json(app.get(&format!("Appointment?originating-appointment=Appointment/{first}&_count=50")).await).await;
        assert_eq!(later["total"], 11);

        // The same weeks for ngata, whose week 7 holds an individual session: 409 naming the
        // occurrence and the clash, and nothing of the series written.
        put_ok(&app, appointment("clash", "booked", "2031-04-16T18:30:00Z", "2031-04-16T19:30:00Z", &["Practitioner/ngata", "Patient/p4"])).await;
        let before = app.version_count().await;
        let res = app.post_json("Group/circle/$book-session", &series("2031-03-05T18:00:00Z", "2031-03-05T19:00:00Z", "Practitioner/ngata", 12, &[
            json!({"name": "member", "valueReference": {"reference": "Patient/p1"}})])).await;
        let text = diagnostics(&assert_outcome(res, 409, "conflict").await);
        assert!(text.contains("occurrence 7 of 12") && text.contains("2031-04-16") && text.contains("Appointment/clash"), "{text}");
        assert_eq!(app.version_count().await, before, "a refused series writes nothing");
        let sessions = json(app.get("Appointment?group=Group/circle&_summary=count").await).await;
        assert_eq!(sessions["total"], 12);

        // Every second week.
        let res = app.post_json("Group/circle/$book-session", &series("2032-01-06T10:00:00Z", "2032-01-06T11:00:00Z", "Practitioner/ngata", 3, &[
            json!({"name": "interval", "valueInteger": 2}),
            json!({"name": "member", "valueReference": {"reference": "Patient/p1"}})])).await;
        assert_eq!(res.status(), 201);
        let starts: Vec<String> = entries(&json(res).await).iter().map(|e| e["resource"]["start"].as_str().unwrap().to_string()).collect();
        assert_eq!(starts, ["2032-01-06T10:00:00Z", "2032-01-20T10:00:00Z", "2032-02-03T10:00:00Z"]);

        // In a time zone the wall-clock time holds across daylight saving: New York moves its clocks
        // on 9 March 2031, so the second Tuesday is 21:00 at -04:00. Without one, the offset holds.
        let res = app.post_json("Group/circle/$book-session", &series("2031-03-04T21:00:00-05:00", "2031-03-04T22:00:00-05:00", "Practitioner/ngata", 3, &[
            json!({"name": "timezone", "valueCode": "America/New_York"}),
            json!({"name": "member", "valueReference": {"reference": "Patient/p1"}})])).await;
        assert_eq!(res.status(), 201);
        let occurrences: Vec<Value> = entries(&json(res).await).into_iter().map(|e| e["resource"].clone()).collect();
        let times: Vec<(&str, &str)> = occurrences.iter().map(|o| (o["start"].as_str().unwrap(), o["end"].as_str().unwrap())).collect();
        assert_eq!(times, [("2031-03-04T21:00:00-05:00", "2031-03-04T22:00:00-05:00"), ("2031-03-11T21:00:00-04:00", "2031-03-11T22:00:00-04:00"),
            ("2031-03-18T21:00:00-04:00", "2031-03-18T22:00:00-04:00")]);
        let res = app.post_json("Group/circle/$book-session", &series("2031-04-01T09:00:00Z", "2031-04-01T10:00:00Z", "Practitioner/ngata", 2, &[
            json!({"name": "timezone", "valueCode": "Mars/Olympus_Mons"})])).await;
        assert_outcome(res, 400, "invalid").await;

        // A count or interval out of range is 400, and writes nothing.
        let before = app.version_count().await;
        for bad in [
            vec![json!({"name": "count", "valueInteger": 0})],
            vec![json!({"name": "count", "valueInteger": 53})],
            vec![json!({"name": "count", "valueInteger": 4}), json!({"name": "interval", "valueInteger": 0})],
            vec![json!({"name": "count", "valueString": "4"})],
        ] {
            let mut p = vec![json!({"name": "start", "valueDateTime": "2033-01-04T10:00:00Z"}), json!({"name": "end", "valueDateTime": "2033-01-04T11:00:00Z"}),
                json!({"name": "practitioner", "valueReference": {"reference": "Practitioner/moss"}})];
            p.extend(bad.clone());
            let res = app.post_json("Group/circle/$book-session", &json!({"resourceType": "Parameters", "parameter": p})).await;
            assert_outcome(res, 400, "invalid").await;
        }
        assert_eq!(app.version_count().await, before);
    }

    async fn only_the_clinic_places_an_appointment_in_a_series(app: TestApp) {
        circle(&app).await;
        put_ok(&app, json!({"resourceType": "Group", "id": "other", "type": "person", "actual": true,
            "member": [{"entity": {"reference": "Patient/p1"}, "period": {"start": "2020-01-01"}}]})).await;
        put_ok(&app, agreement("c-other", "p1", "other", "2040-12-31")).await;
        let res = app.post_json("Group/circle/$book-session", &series("2032-05-04T09:00:00Z", "2032-05-04T10:00:00Z", "Practitioner/moss", 2, &[
            json!({"name": "member", "valueReference": {"reference": "Patient/p1"}})])).await;
        let ids: Vec<String> = entries(&json(res).await).iter().map(|e| e["resource"]["id"].as_str().unwrap().to_string()).collect();
        let occurrence = |id: &str, group: &str, n: i64, first: Option<&str>, day: &str| {
            let mut a = appointment(id, "booked", &format!("2032-05-{day}T09:00:00Z"), &format!("2032-05-{day}T10:00:00Z"), &["Practitioner/moss", "Patient/p1"]);
            let mut ext = vec![json!({"url": SUBJECT, "valueReference": {"reference": format!("Group/{group}")}}), json!({"url": RECURRENCE_ID, "valuePositiveInt": n})];
            if let Some(f) = first {
                ext.push(json!({"url": ORIGINATING, "valueReference": {"reference": format!("Appointment/{f}")}}));
            }
            a["extension"] = json!(ext);
            a
        };
        // The clinic may add a third occurrence to its series.
        put_ok(&app, occurrence("third", "circle", 3, Some(&ids[0]), "18")).await;
        // Refused (422): naming the second occurrence as the first, a first of another group, no
        // first for occurrence 3, a first that names one, or one that does not exist.
        for (bad, why) in [
            (occurrence("x", "circle", 4, Some(&ids[1]), "25"), "not the first occurrence"),
            (occurrence("x", "other", 4, Some(&ids[0]), "25"), "another group"),
            (occurrence("x", "circle", 4, None, "25"), "names its first"),
            (occurrence("x", "circle", 1, Some(&ids[0]), "25"), "names no originatingAppointment"),
            (occurrence("x", "circle", 4, Some("nope"), "25"), "does not exist"),
        ] {
            let text = diagnostics(&assert_outcome(app.put_json("Appointment/x", &bad).await, 422, "processing").await);
            assert!(text.contains(why), "{why}: {text}");
        }
        // A client's own token may not put her session into a series, nor take one out of it.
        let p1w = app.client_with("patient/*.cruds", Some("p1"));
        let mine = occurrence("mine", "circle", 5, Some(&ids[0]), "25");
        let res = p1w.put(app.url("Appointment/mine")).header("Content-Type", FHIR_JSON).body(mine.to_string()).send().await.unwrap();
        assert_outcome(res, 403, "forbidden").await;
        let mut out = json(app.get("Appointment/third").await).await;
        out["extension"] = json!([{"url": SUBJECT, "valueReference": {"reference": "Group/circle"}}]);
        let res = p1w.put(app.url("Appointment/third")).header("Content-Type", FHIR_JSON).body(out.to_string()).send().await.unwrap();
        assert_outcome(res, 403, "forbidden").await;
        assert_eq!(app.get("Appointment/x").await.status(), 404);
        // $cancel-series from the second occurrence takes the third too.
        let changed = json(app.post(&format!("Appointment/{}/$cancel-series", ids[1])).await).await;
        let cancelled: Vec<&str> = entries(&changed).iter().map(|e| e["resource"]["id"].as_str().unwrap().to_string().leak() as &str).collect();
        assert_eq!(cancelled, [ids[1].as_str(), "third"]);
    }

    async fn each_occurrence_is_checked_on_its_own_date(app: TestApp) {
        circle(&app).await;
        // With no members named, each occurrence invites the members active on its date: p2 leaves
        // on 12 March, so the fourth week (18 March) does not invite her.
        let res = app.post_json("Group/circle/$book-session", &series("2031-02-25T17:00:00Z", "2031-02-25T18:00:00Z", "Practitioner/moss", 4, &[])).await;
        assert_eq!(res.status(), 201);
        let occurrences: Vec<Value> = entries(&json(res).await).into_iter().map(|e| e["resource"].clone()).collect();
        for o in &occurrences[..3] {
            assert_eq!(patients(o), ["Patient/p1", "Patient/p2", "Patient/p3"], "{}", o["start"]);
        }
        assert_eq!(patients(&occurrences[3]), ["Patient/p1", "Patient/p3"]);
        // p3's agreement ends on 20 March: the fourth week of a series from 4 March is refused,
        // naming the occurrence and the member, and none of it is written.
        let before = app.version_count().await;
        let res = app.post_json("Group/circle/$book-session", &series("2031-03-04T19:00:00Z", "2031-03-04T20:00:00Z", "Practitioner/ngata", 4, &[
            json!({"name": "member", "valueReference": {"reference": "Patient/p3"}})])).await;
        let text = diagnostics(&assert_outcome(res, 422, "processing").await);
        assert!(text.contains("occurrence 4 of 4") && text.contains("Patient/p3") && text.contains("agreement"), "{text}");
        // A member named who has left by one occurrence's date: that occurrence is refused.
        let res = app.post_json("Group/circle/$book-session", &series("2031-03-04T19:00:00Z", "2031-03-04T20:00:00Z", "Practitioner/ngata", 3, &[
            json!({"name": "member", "valueReference": {"reference": "Patient/p2"}})])).await;
        let text = diagnostics(&assert_outcome(res, 422, "processing").await);
        assert!(text.contains("occurrence 3 of 3") && text.contains("Patient/p2") && text.contains("not an active member"), "{text}");
        assert_eq!(app.version_count().await, before);
    }

    async fn cancel_series_cancels_this_and_the_later_occurrences_still_to_come(app: TestApp) {
        circle(&app).await;
        // Six weekly sessions, the first 15 days ago: three have taken place, three are to come.
        let now = dates::now_millis();
        let start = (now - 15 * DAY_MS) / 3_600_000 * 3_600_000;
        let at = |ms: i64| fmt(ms, 0);
        let res = app.post_json("Group/circle/$book-session", &series(&at(start), &at(start + 3_600_000), "Practitioner/moss", 6, &[
            json!({"name": "member", "valueReference": {"reference": "Patient/p1"}})])).await;
        assert_eq!(res.status(), 201);
        let ids: Vec<String> = entries(&json(res).await).iter().map(|e| e["resource"]["id"].as_str().unwrap().to_string()).collect();
        // From the second occurrence: the second and third have started and stay; 4..6 are cancelled.
        let res = app.post_json(&format!("Appointment/{}/$cancel-series", ids[1]),
            &json!({"resourceType": "Parameters", "parameter": [{"name": "reason", "valueString": "The group ends early"}]})).await;
        assert_eq!(res.status(), 200);
        let changed = json(res).await;
        assert_eq!(changed["type"], "collection");
        let cancelled: Vec<String> = entries(&changed).iter().map(|e| e["resource"]["id"].as_str().unwrap().to_string()).collect();
        assert_eq!(cancelled, ids[3..].to_vec());
        for e in entries(&changed) {
            assert_eq!(e["resource"]["status"], "cancelled");
            assert_eq!(e["resource"]["cancelationReason"]["text"], "The group ends early");
        }
        for (k, id) in ids.iter().enumerate() {
            let a = json(app.get(&format!("Appointment/{id}")).await).await;
            assert_eq!(a["status"], if k < 3 { "booked" } else { "cancelled" }, "occurrence {}", k + 1);
        }
        // Their time is free again: moss can see a client in occurrence 5's hour.
        put_ok(&app, appointment("after", "booked", &at(start + 28 * DAY_MS), &at(start + 28 * DAY_MS + 3_600_000), &["Practitioner/moss", "Patient/p4"])).await;
        // Again: nothing left to cancel, an empty answer.
        let res = app.post(&format!("Appointment/{}/$cancel-series", ids[0])).await;
        assert_eq!(res.status(), 200);
        assert!(entries(&json(res).await).is_empty());

        // From the first occurrence of a series to come, all of it; no reason, no body.
        let res = app.post_json("Group/circle/$book-session", &series("2035-06-05T09:00:00Z", "2035-06-05T10:00:00Z", "Practitioner/ngata", 3, &[
            json!({"name": "member", "valueReference": {"reference": "Patient/p1"}})])).await;
        let ids: Vec<String> = entries(&json(res).await).iter().map(|e| e["resource"]["id"].as_str().unwrap().to_string()).collect();
        let changed = json(app.post(&format!("Appointment/{}/$cancel-series", ids[0])).await).await;
        assert_eq!(entries(&changed).len(), 3);
        assert!(entries(&changed).iter().all(|e| e["resource"].get("cancelationReason").is_none()));

        // Refused: an Appointment of no series (422), one that does not exist (404), a client's token (403).
        put_ok(&app, appointment("single", "booked", "2035-07-01T09:00:00Z", "2035-07-01T10:00:00Z", &["Practitioner/moss", "Patient/p4"])).await;
        assert_outcome(app.post("Appointment/single/$cancel-series").await, 422, "processing").await;
        assert_outcome(app.post("Appointment/nope/$cancel-series").await, 404, "not-found").await;
        let p1 = app.client_with("patient/*.cruds", Some("p1"));
        let res = p1.post(app.url(&format!("Appointment/{}/$cancel-series", ids[0]))).send().await.unwrap();
        assert_outcome(res, 403, "forbidden").await;
        assert_eq!(json(app.get("Appointment/single").await).await["status"], "booked");
    }

    async fn find_answers_the_free_times_of_a_calendar_worked_out_by_hand(app: TestApp) {
        circle(&app).await;
        // Tuesday 6 May 2031, 09:00-17:00 UTC, for moss, room 1 and p4. What holds their time:
        //   room 1  08:00-09:15 (begins before the window)   moss 09:30-10:30 (p1)
        //   room 1  12:00-13:00 (ngata, p2)                   p4   14:00-14:45 (ngata)
        //   moss    15:00-17:00 reserved for groups           moss 11:00-12:00 cancelled: holds nothing
        let d = |t: &str| format!("2031-05-06T{t}:00Z");
        put_ok(&app, appointment("r0", "booked", &d("08:00"), &d("09:15"), &["Practitioner/ngata", "Patient/p3", "Location/room-1"])).await;
        put_ok(&app, appointment("m1", "booked", &d("09:30"), &d("10:30"), &["Practitioner/moss", "Patient/p1"])).await;
        put_ok(&app, appointment("m2", "cancelled", &d("11:00"), &d("12:00"), &["Practitioner/moss", "Patient/p2"])).await;
        put_ok(&app, appointment("r1", "booked", &d("12:00"), &d("13:00"), &["Practitioner/ngata", "Patient/p2", "Location/room-1"])).await;
        put_ok(&app, appointment("p4", "booked", &d("14:00"), &d("14:45"), &["Practitioner/ngata", "Patient/p4"])).await;
        put_ok(&app, json!({"resourceType": "Schedule", "id": "moss-cal", "actor": [{"reference": "Practitioner/moss"}]})).await;
        put_ok(&app, json!({"resourceType": "Slot", "id": "groups", "schedule": {"reference": "Schedule/moss-cal"}, "status": "busy-unavailable",
            "serviceCategory": [{"coding": [{"system": format!("{CANON}/CodeSystem/slot-purpose"), "code": "group-therapy"}]}],
            "start": d("15:00"), "end": d("17:00")})).await;
        let window = "practitioner=moss&location=Location/room-1&patient=p4&start=2031-05-06T09:00:00Z&end=2031-05-06T17:00:00Z";
        let starts = |b: &Value| entries(b).iter().map(|e| e["resource"]["start"].as_str().unwrap().to_string()).collect::<Vec<_>>();

        // Hour sessions on the half hour: 10:30, 11:00 and 13:00; the reserved evening is not free
        // for an individual session, but is for a group (to 16:00, which ends at the window's end).
        let found = json(app.get(&format!("Appointment/$find?{window}&duration=60&granularity=30")).await).await;
        assert_eq!(found["type"], "searchset");
        assert_eq!(starts(&found), [d("10:30"), d("11:00"), d("13:00")]);
        assert_eq!(found["total"], 3);
        let first = &entries(&found)[0]["resource"];
        assert_eq!(first["status"], "proposed");
        assert_eq!(first["end"], d("11:30"));
        assert_eq!(first["minutesDuration"], 60);
        let actors: Vec<&str> = first["participant"].as_array().unwrap().iter().map(|p| p["actor"]["reference"].as_str().unwrap()).collect();
        assert_eq!(actors, ["Location/room-1", "Patient/p4", "Practitioner/moss"]);
        let group = json(app.get(&format!("Appointment/$find?{window}&duration=60&granularity=30&kind=group")).await).await;
        assert_eq!(starts(&group), [d("10:30"), d("11:00"), d("13:00"), d("15:00"), d("15:30"), d("16:00")]);

        // The default grid (15 minutes), two to a page.
        let page = json(app.get(&format!("Appointment/$find?{window}&_count=2")).await).await;
        assert_eq!(page["total"], 4);
        assert_eq!(starts(&page), [d("10:30"), d("10:45")]);
        let next = page["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").unwrap()["url"].as_str().unwrap().to_string();
        let page = json(app.client.get(next).send().await.unwrap()).await;
        assert_eq!(starts(&page), [d("11:00"), d("13:00")]);
        assert!(page["link"].as_array().unwrap().iter().all(|l| l["relation"] != "next"), "{page}");

        // The times keep the window's offset.
        let local = json(app.get("Appointment/$find?practitioner=Practitioner/moss&start=2031-05-06T04:00:00-05:00&end=2031-05-06T06:00:00-05:00&duration=30&granularity=30").await).await;
        assert_eq!(starts(&local), ["2031-05-06T04:00:00-05:00", "2031-05-06T05:30:00-05:00"]);

        // Bad windows and durations are 400.
        for bad in [
            "practitioner=moss&start=2031-05-06T09:00:00Z&end=2031-05-06T08:00:00Z",
            "practitioner=moss&start=2031-05-06T09:00:00Z&end=2031-08-05T09:00:00Z",
            "practitioner=moss&start=2031-05-06T09:00:00Z&end=2031-05-07T09:00:00Z&duration=721",
            "start=2031-05-06T09:00:00Z&end=2031-05-06T17:00:00Z",
        ] {
            assert_outcome(app.get(&format!("Appointment/$find?{bad}")).await, 400, "invalid").await;
        }
        // A client's own token may look for times with her therapist, not for another client's.
        let p4 = app.client_with("patient/*.rs", Some("p4"));
        let res = p4.get(app.url(&format!("Appointment/$find?{window}&granularity=30"))).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(json(res).await["total"], 3);
        let res = p4.get(app.url("Appointment/$find?practitioner=moss&patient=p1&start=2031-05-06T09:00:00Z&end=2031-05-06T17:00:00Z")).send().await.unwrap();
        assert_outcome(res, 403, "forbidden").await;
        // By POST, the same parameters in a Parameters resource.
        let res = app.post_json("Appointment/$find?_count=2", &json!({"resourceType": "Parameters", "parameter": [
            {"name": "practitioner", "valueReference": {"reference": "Practitioner/moss"}}, {"name": "location", "valueString": "room-1"},
            {"name": "patient", "valueString": "p4"}, {"name": "start", "valueDateTime": "2031-05-06T09:00:00Z"},
            {"name": "end", "valueDateTime": "2031-05-06T17:00:00Z"}, {"name": "duration", "valueInteger": 60}]})).await;
        assert_eq!(res.status(), 200);
        let posted = json(res).await;
        assert_eq!((posted["total"].as_i64(), starts(&posted)), (Some(4), vec![d("10:30"), d("10:45")]));
        assert_outcome(app.post_json("Appointment/$find", &json!({"resourceType": "Patient"})).await, 400, "structure").await;
        // A cursor past the end is an empty page, not an error.
        let far = json(app.get(&format!("Appointment/$find?{window}&_cursor=18446744073709551615")).await).await;
        assert!(entries(&far).is_empty() && far["total"] == 4, "{far}");
    }

    async fn a_video_sessions_host_key_is_never_shown_to_a_client(app: TestApp) {
        circle(&app).await;
        let video = |max: i64| json!({"url": VIRTUAL, "extension": [
            {"url": "channelType", "valueCoding": {"system": "http://hl7.org/fhir/virtual-service-type", "code": "zoom"}},
            {"url": "address", "valueUrl": "https://video.example/j/123"},
            {"url": "maxParticipants", "valuePositiveInt": max},
            {"url": "sessionKey", "valueString": "host-key-8841"}]});
        let mut one = appointment("v1", "booked", "2031-06-03T15:00:00Z", "2031-06-03T16:00:00Z", &["Practitioner/moss", "Patient/p1"]);
        one["extension"] = json!([video(2)]);
        put_ok(&app, one.clone()).await;
        // The clinic sees the key.
        assert!(app.get("Appointment/v1").await.text().await.unwrap().contains("host-key-8841"));
        // The client sees the link and not the key: read, search, history, $everything.
        let p1 = app.client_with("patient/*.rs", Some("p1"));
        for path in ["Appointment/v1", "Appointment?patient=Patient/p1", "Appointment/v1/_history", "Appointment/v1/_history/1", "Patient/p1/$everything", "Appointment?_id=v1&_include=Appointment:actor"] {
            let res = p1.get(app.url(path)).send().await.unwrap();
            assert_eq!(res.status(), 200, "{path}");
            let text = res.text().await.unwrap();
            assert!(!text.contains("host-key-8841") && !text.contains("sessionKey"), "{path}: {text}");
            assert!(text.contains("https://video.example/j/123"), "{path}: {text}");
        }
        let seen = json(p1.get(app.url("Appointment/v1")).send().await.unwrap()).await;
        assert!(seen["meta"]["security"].as_array().unwrap().iter().any(|l| l["code"] == "REDACTED"), "{seen}");
        // The same through _revinclude and a batch.
        for text in [
            p1.get(app.url("Patient?_id=p1&_revinclude=Appointment:actor")).send().await.unwrap().text().await.unwrap(),
            p1.post(app.url("")).header("Content-Type", FHIR_JSON).body(json!({"resourceType": "Bundle", "type": "batch", "entry": [
                {"request": {"method": "GET", "url": "Appointment/v1"}}, {"request": {"method": "GET", "url": "Appointment?patient=Patient/p1"}}]}).to_string())
                .send().await.unwrap().text().await.unwrap(),
        ] {
            assert!(text.contains("https://video.example/j/123") && !text.contains("host-key-8841"), "{text}");
        }
        // Nor through Bulk Data or a notification: a client's token may start neither.
        let res = p1.get(app.url("Patient/$export")).header("Prefer", "respond-async").send().await.unwrap();
        assert_outcome(res, 403, "forbidden").await;
        let p1s = app.client_with("patient/*.cruds", Some("p1"));
        let hook = json!({"resourceType": "Subscription", "status": "requested", "reason": "my sessions",
            "criteria": "Appointment?patient=Patient/p1", "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook"}});
        let res = p1s.post(app.url("Subscription")).header("Content-Type", FHIR_JSON).body(hook.to_string()).send().await.unwrap();
        assert_eq!(res.status(), 403, "{}", res.text().await.unwrap());
        // Her token may write her own session back (here, marking her reply) without the key: the
        // clinic's key stays, and one she sends is not taken. A patch cannot test for the key.
        let p1w = app.client_with("patient/*.cruds", Some("p1"));
        let mut reply = seen.clone();
        reply["participant"][1]["status"] = json!("tentative");
        reply["extension"][0]["extension"].as_array_mut().unwrap().push(json!({"url": "sessionKey", "valueString": "mine"}));
        let res = p1w.put(app.url("Appointment/v1")).header("Content-Type", FHIR_JSON).body(reply.to_string()).send().await.unwrap();
        assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
        let stored = app.get("Appointment/v1").await.text().await.unwrap();
        assert!(stored.contains("host-key-8841") && !stored.contains("\"mine\"") && stored.contains("tentative"), "{stored}");
        let probe = json!([{"op": "test", "path": "/extension/0/extension/3/valueString", "value": "host-key-8841"}]);
        let res = p1w.patch(app.url("Appointment/v1")).header("Content-Type", "application/json-patch+json").body(probe.to_string()).send().await.unwrap();
        assert_eq!(res.status(), 422, "a test op sees her view, without the key");
        let accept = json!([{"op": "replace", "path": "/participant/1/status", "value": "accepted"}]);
        let res = p1w.patch(app.url("Appointment/v1")).header("Content-Type", "application/json-patch+json").body(accept.to_string()).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert!(!res.text().await.unwrap().contains("host-key-8841"));
        assert!(app.get("Appointment/v1").await.text().await.unwrap().contains("host-key-8841"));
        // A service of the key alone: her view has no extension at all (none left empty).
        let mut bare = appointment("v0", "booked", "2031-06-02T15:00:00Z", "2031-06-02T16:00:00Z", &["Practitioner/moss", "Patient/p1"]);
        bare["extension"] = json!([{"url": VIRTUAL, "extension": [{"url": "sessionKey", "valueString": "host-key-1"}]}]);
        put_ok(&app, bare).await;
        let view = json(p1.get(app.url("Appointment/v0")).send().await.unwrap()).await;
        assert!(view.get("extension").is_none(), "{view}");

        // A video service that takes fewer people than are invited is refused, on PUT and on
        // $book-session; the room (a Location) takes no place in the call.
        let mut three = appointment("v2", "booked", "2031-06-03T17:00:00Z", "2031-06-03T18:00:00Z", &["Practitioner/moss", "Patient/p1", "Patient/p4", "Location/room-1"]);
        three["extension"] = json!([video(2)]);
        let text = diagnostics(&assert_outcome(app.put_json("Appointment/v2", &three).await, 422, "processing").await);
        assert!(text.contains("at most 2") && text.contains("3 are invited"), "{text}");
        three["extension"] = json!([video(3)]);
        put_ok(&app, three).await;
        let part = |name: &str, value: Value| { let mut p = json!({"name": name}); p.as_object_mut().unwrap().extend(value.as_object().unwrap().clone()); p };
        let book = |max: i64| series("2031-06-10T18:00:00Z", "2031-06-10T19:00:00Z", "Practitioner/moss", 2, &[
            json!({"name": "location", "valueReference": {"reference": "Location/room-1"}}),
            json!({"name": "member", "valueReference": {"reference": "Patient/p1"}}),
            json!({"name": "virtualService", "part": [
                part("channelType", json!({"valueCoding": {"system": "http://hl7.org/fhir/virtual-service-type", "code": "ms-teams"}})),
                part("address", json!({"valueUrl": "https://teams.example/l/circle"})),
                part("maxParticipants", json!({"valuePositiveInt": max})),
                part("sessionKey", json!({"valueString": "circle-host-77"}))]})]);
        let before = app.version_count().await;
        // moss and p1: two people for one place.
        let text = diagnostics(&assert_outcome(app.post_json("Group/circle/$book-session", &book(1)).await, 422, "processing").await);
        assert!(text.contains("occurrence 1 of 2") && text.contains("maxParticipants"), "{text}");
        assert_eq!(app.version_count().await, before);
        let res = app.post_json("Group/circle/$book-session", &book(8)).await;
        assert_eq!(res.status(), 201);
        let booked = json(res).await;
        let session = entries(&booked)[0]["resource"].clone();
        let service = extension(&session, VIRTUAL).unwrap();
        assert_eq!(service["extension"][1], json!({"url": "address", "valueUrl": "https://teams.example/l/circle"}));
        assert_eq!(service["extension"][3]["valueString"], "circle-host-77");
        // A member sees the group session's link, not the key.
        let text = p1.get(app.url(&format!("Appointment/{}", session["id"].as_str().unwrap()))).send().await.unwrap().text().await.unwrap();
        assert!(text.contains("https://teams.example/l/circle") && !text.contains("circle-host-77"), "{text}");
        // A bad part of the parameter is 400.
        let mut bad = book(8);
        bad["parameter"][6]["part"][0]["name"] = json!("password");
        assert_outcome(app.post_json("Group/circle/$book-session", &bad).await, 400, "invalid").await;
        // Taken place: the Encounters of a video session are virtual.
        let mut done = json(app.get(&format!("Appointment/{}", session["id"].as_str().unwrap())).await).await;
        done["status"] = json!("fulfilled");
        for p in done["participant"].as_array_mut().unwrap() {
            if p["actor"]["reference"] == "Patient/p1" {
                p["extension"] = json!([{"url": format!("{CANON}/StructureDefinition/participant-attendance"), "valueCode": "attended"}]);
            }
        }
        put_ok(&app, done).await;
        let encounters = json(app.get(&format!("Encounter?appointment=Appointment/{}", session["id"].as_str().unwrap())).await).await;
        assert_eq!(encounters["total"], 2);
        assert!(entries(&encounters).iter().all(|e| e["resource"]["class"]["code"] == "VR"), "{encounters}");

        // A malformed service: an unknown part, a part of the wrong type, a value of its own.
        for bad in [
            json!({"url": VIRTUAL, "extension": [{"url": "password", "valueString": "x"}]}),
            json!({"url": VIRTUAL, "extension": [{"url": "maxParticipants", "valueString": "ten"}]}),
            json!({"url": VIRTUAL, "extension": [{"url": "address", "valueUrl": "https://a.example"}, {"url": "address", "valueUrl": "https://b.example"}]}),
            json!({"url": VIRTUAL, "valueUrl": "https://video.example/j/1"}),
        ] {
            let mut a = appointment("v3", "booked", "2031-06-04T15:00:00Z", "2031-06-04T16:00:00Z", &["Practitioner/moss", "Patient/p4"]);
            a["extension"] = json!([bad]);
            let res = app.put_json("Appointment/v3", &a).await;
            assert_eq!(res.status(), 422, "{bad}: {}", res.text().await.unwrap());
        }
        assert_eq!(app.get("Appointment/v3").await.status(), 404);
    }

    async fn two_processes_book_series_and_sessions_over_the_same_weeks_without_overlap(app: TestApp) {
        circle(&app).await;
        for g in ["g1", "g2", "g3", "g4"] {
            put_ok(&app, json!({"resourceType": "Group", "id": g, "type": "person", "actual": true,
                "member": [{"entity": {"reference": "Patient/p1"}, "period": {"start": "2020-01-01"}}]})).await;
            put_ok(&app, agreement(&format!("a-{g}"), "p1", g, "2040-12-31")).await;
        }
        put_ok(&app, json!({"resourceType": "Schedule", "id": "moss-cal", "actor": [{"reference": "Practitioner/moss"}]})).await;
        let servers = [ServerProcess::start(&app.db, &[]).await, ServerProcess::start(&app.db, &[]).await];
        // Four groups race for moss's Tuesday evenings (each a 12-week series, overlapping every
        // week), individual sessions race for the same hours, and a Slot reserves one evening.
        let mut requests: Vec<(String, String, Value)> = Vec::new();
        for (i, g) in ["g1", "g2", "g3", "g4"].iter().enumerate() {
            let start = format!("2031-09-02T18:{:02}:00Z", i * 10);
            let end = format!("2031-09-02T19:{:02}:00Z", i * 10);
            requests.push(("POST".into(), format!("Group/{g}/$book-session"), series(&start, &end, "Practitioner/moss", 12, &[])));
        }
        for w in 0..12 {
            let day = fmt(dates::parse_range("2031-09-02T18:30:00Z").unwrap().low + w * 7 * DAY_MS, 0);
            let end = fmt(dates::parse_range(&day).unwrap().low + 3_600_000, 0);
            requests.push(("PUT".into(), format!("Appointment/i{w}"), appointment(&format!("i{w}"), "booked", &day, &end, &["Practitioner/moss", "Patient/p4"])));
        }
        requests.push(("PUT".into(), "Slot/tue".into(), json!({"resourceType": "Slot", "id": "tue", "schedule": {"reference": "Schedule/moss-cal"}, "status": "busy-unavailable",
            "serviceCategory": [{"coding": [{"system": format!("{CANON}/CodeSystem/slot-purpose"), "code": "group-therapy"}]}],
            "start": "2031-10-07T17:00:00Z", "end": "2031-10-07T21:00:00Z"})));
        let sent = requests.into_iter().enumerate().map(|(j, (method, path, body))| {
            let url = format!("{}/{path}", servers[j % 2].address);
            let client = app.client.clone();
            async move {
                let req = if method == "POST" { client.post(url) } else { client.put(url) };
                let res = req.header("Content-Type", FHIR_JSON).body(body.to_string()).send().await.unwrap();
                (path, res.status().as_u16())
            }
        });
        let results = join_all(sent).await;
        for (path, status) in &results {
            assert!([200, 201, 409].contains(status), "{path}: {status}");
        }
        // At most one series won (each clashes with every other every week), and it is whole.
        let won: Vec<&String> = results.iter().filter(|(p, s)| p.contains("$book-session") && *s == 201).map(|(p, _)| p).collect();
        assert!(won.len() <= 1, "{won:?}");
        for g in ["g1", "g2", "g3", "g4"] {
            let n = json(app.get(&format!("Appointment?group=Group/{g}&_summary=count")).await).await["total"].as_i64().unwrap();
            let expected = if won.iter().any(|p| p.contains(&format!("Group/{g}/"))) { 12 } else { 0 };
            assert_eq!(n, expected, "{g}");
        }
        // Whatever won, moss's calendar holds no two sessions at once, and no individual session
        // lies in the reserved evening.
        let all = json(app.get("Appointment?actor=Practitioner/moss&status=booked&_count=200").await).await;
        let mut held: Vec<(i64, i64, bool, String)> = entries(&all).iter().map(|e| {
            let a = &e["resource"];
            let at = |k: &str| dates::parse_range(a[k].as_str().unwrap()).unwrap().low;
            (at("start"), at("end"), a.get("extension").is_some(), a["id"].as_str().unwrap().to_string())
        }).collect();
        held.sort();
        for pair in held.windows(2) {
            assert!(pair[0].1 <= pair[1].0, "overlap: {} and {}", pair[0].3, pair[1].3);
        }
        let (rs, re) = (dates::parse_range("2031-10-07T17:00:00Z").unwrap().low, dates::parse_range("2031-10-07T21:00:00Z").unwrap().low);
        let slot_stands = app.get("Slot/tue").await.status() == 200;
        if slot_stands {
            assert!(held.iter().all(|(s, e, group, _)| *group || *e <= rs || *s >= re), "an individual session in reserved time: {held:?}");
        }
        drop(servers);
    }
}
