//! The group-therapy model's rules (DESIGN.md), each with the case that passes and the case refused.

use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;

const SUBJECT: &str = "http://hl7.org/fhir/5.0/StructureDefinition/extension-Appointment.subject";
const CANON: &str = "https://tandem.example.org/fhir";

pub async fn put(app: &TestApp, body: Value) -> reqwest::Response {
    let path = format!(
        "{}/{}",
        body["resourceType"].as_str().unwrap(),
        body["id"].as_str().unwrap()
    );
    app.put_json(&path, &body).await
}

pub async fn put_ok(app: &TestApp, body: Value) {
    let res = put(app, body).await;
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());
}

pub fn appointment(id: &str, status: &str, start: &str, end: &str, actors: &[&str]) -> Value {
    json!({"resourceType": "Appointment", "id": id, "status": status, "start": start, "end": end,
        "participant": actors.iter().map(|a| json!({"actor": {"reference": a}, "status": "accepted"})).collect::<Vec<_>>()})
}

fn group_session(id: &str, group: &str, start: &str, end: &str, actors: &[&str]) -> Value {
    let mut a = appointment(id, "booked", start, end, actors);
    a["extension"] = json!([{"url": SUBJECT, "valueReference": {"reference": format!("Group/{group}")}}]);
    a
}

fn agreement(id: &str, patient: &str, group: &str, status: &str, start: &str, end: &str) -> Value {
    json!({"resourceType": "Consent", "id": id, "status": status,
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": format!("{CANON}/CodeSystem/consent-category"), "code": "group-confidentiality"}]}],
        "patient": {"reference": format!("Patient/{patient}")},
        "policyRule": {"coding": [{"system": format!("{CANON}/CodeSystem/consent-category"), "code": "group-confidentiality-rules"}]},
        "provision": {"period": {"start": start, "end": end}, "actor": [{"role": {"text": "member"}, "reference": {"reference": format!("Group/{group}")}}]}})
}

/// Two therapists, a room, six clients; a grief group of p1..p4 active, p5 who left in June and p6
/// inactive, capacity 5; agreements for p1..p4 covering 2026.
pub async fn clinic(app: &TestApp) {
    for (id, family) in [("moss", "Moss"), ("ngata", "Ngata")] {
        put_ok(
            app,
            json!({"resourceType": "Practitioner", "id": id, "name": [{"family": family}]}),
        )
        .await;
    }
    put_ok(
        app,
        json!({"resourceType": "Location", "id": "room-1", "name": "Room 1"}),
    )
    .await;
    for i in 1..=6 {
        put_ok(
            app,
            json!({"resourceType": "Patient", "id": format!("p{i}"), "name": [{"family": format!("Client{i}")}]}),
        )
        .await;
    }
    put_ok(
        app,
        json!({"resourceType": "Group", "id": "grief", "type": "person", "actual": true, "name": "Grief support",
        "extension": [{"url": format!("{CANON}/StructureDefinition/group-capacity"), "valuePositiveInt": 5}],
        "managingEntity": {"reference": "Practitioner/moss"},
        "member": [
            {"entity": {"reference": "Patient/p1"}, "period": {"start": "2026-01-01"}},
            {"entity": {"reference": "Patient/p2"}, "period": {"start": "2026-01-01"}},
            {"entity": {"reference": "Patient/p3"}, "period": {"start": "2026-02-01"}},
            {"entity": {"reference": "Patient/p4"}, "period": {"start": "2026-03-01"}},
            {"entity": {"reference": "Patient/p5"}, "period": {"start": "2026-01-01", "end": "2026-06-30"}},
            {"entity": {"reference": "Patient/p6"}, "period": {"start": "2026-01-01"}, "inactive": true}
        ]}),
    )
    .await;
    for i in 1..=5 {
        put_ok(
            app,
            agreement(
                &format!("c{i}"),
                &format!("p{i}"),
                "grief",
                "active",
                "2026-01-01",
                "2026-12-31",
            ),
        )
        .await;
    }
}

both_backends! {
    async fn nobody_is_booked_twice_at_once(app: TestApp) {
        clinic(&app).await;
        put_ok(&app, appointment("a", "booked", "2026-12-01T10:00:00Z", "2026-12-01T11:00:00Z", &["Practitioner/moss", "Patient/p1", "Location/room-1"])).await;
        let before = app.version_count().await;
        for (what, actors) in [
            ("practitioner", ["Practitioner/moss", "Patient/p2"]),
            ("patient", ["Practitioner/ngata", "Patient/p1"]),
            ("location", ["Practitioner/ngata", "Location/room-1"]),
        ] {
            let res = put(&app, appointment("b", "booked", "2026-12-01T10:30:00Z", "2026-12-01T11:30:00Z", &actors)).await;
            let body = assert_outcome(res, 409, "conflict").await;
            assert!(body["issue"][0]["diagnostics"].as_str().unwrap().contains("Appointment/a"), "{what}: {body}");
            let res = app.post_json("Appointment", &appointment("x", "pending", "2026-12-01T09:30:00Z", "2026-12-01T10:01:00Z", &actors)).await;
            assert_outcome(res, 409, "conflict").await;
        }
        assert_eq!(app.version_count().await, before, "refused bookings write nothing");
        // Back to back is fine; so is the same time for other people.
        put_ok(&app, appointment("c", "booked", "2026-12-01T11:00:00Z", "2026-12-01T12:00:00Z", &["Practitioner/moss", "Patient/p1", "Location/room-1"])).await;
        put_ok(&app, appointment("d", "booked", "2026-12-01T10:00:00Z", "2026-12-01T11:00:00Z", &["Practitioner/ngata", "Patient/p2"])).await;
    }

    async fn cancelled_finished_deleted_and_declined_free_the_time(app: TestApp) {
        clinic(&app).await;
        let slot = ("2026-12-02T10:00:00Z", "2026-12-02T11:00:00Z");
        let other = |id: &str| appointment(id, "booked", slot.0, slot.1, &["Practitioner/moss", "Patient/p2"]);
        for freeing in ["cancelled", "noshow", "fulfilled"] {
            put_ok(&app, appointment("a", "booked", slot.0, slot.1, &["Practitioner/moss", "Patient/p1"])).await;
            assert_eq!(put(&app, other("b")).await.status(), 409);
            put_ok(&app, appointment("a", freeing, slot.0, slot.1, &["Practitioner/moss", "Patient/p1"])).await;
            put_ok(&app, other("b")).await;
            // Booking "a" again would now clash with "b": status changes obey the rule too.
            let res = put(&app, appointment("a", "booked", slot.0, slot.1, &["Practitioner/moss", "Patient/p1"])).await;
            assert_outcome(res, 409, "conflict").await;
            assert_eq!(app.client.delete(app.url("Appointment/b")).send().await.unwrap().status(), 204);
        }
        // A deleted appointment frees its time.
        put_ok(&app, appointment("a", "booked", slot.0, slot.1, &["Practitioner/moss", "Patient/p1"])).await;
        app.client.delete(app.url("Appointment/a")).send().await.unwrap();
        put_ok(&app, other("b")).await;
        // A participant who declined holds no time; a proposed appointment holds none either.
        let mut declined = appointment("c", "booked", slot.0, slot.1, &["Practitioner/ngata", "Patient/p2"]);
        declined["participant"][1]["status"] = json!("declined");
        put_ok(&app, declined).await;
        put_ok(&app, appointment("e", "proposed", slot.0, slot.1, &["Practitioner/moss"])).await;
    }

    async fn moving_an_appointment_into_a_clash_is_refused_and_changes_nothing(app: TestApp) {
        clinic(&app).await;
        put_ok(&app, appointment("a", "booked", "2026-12-03T10:00:00Z", "2026-12-03T11:00:00Z", &["Practitioner/moss"])).await;
        put_ok(&app, appointment("b", "booked", "2026-12-03T12:00:00Z", "2026-12-03T13:00:00Z", &["Practitioner/moss"])).await;
        let res = put(&app, appointment("b", "booked", "2026-12-03T10:30:00Z", "2026-12-03T11:30:00Z", &["Practitioner/moss"])).await;
        assert_outcome(res, 409, "conflict").await;
        let b = json(app.get("Appointment/b").await).await;
        assert_eq!(b["meta"]["versionId"], "1");
        assert_eq!(b["start"], "2026-12-03T12:00:00Z");
        // b still holds its own slot.
        let res = app.post_json("Appointment", &appointment("x", "booked", "2026-12-03T12:30:00Z", "2026-12-03T12:45:00Z", &["Practitioner/moss"])).await;
        assert_outcome(res, 409, "conflict").await;
    }

    async fn group_quantity_is_the_active_member_count(app: TestApp) {
        clinic(&app).await;
        let g = json(app.get("Group/grief").await).await;
        let today = tandem::resources::dates::format_instant(tandem::resources::dates::now_millis())[..10].to_string();
        let active_today = g["member"].as_array().unwrap().iter().filter(|m| {
            m["inactive"] != true
                && m["period"]["start"].as_str().is_none_or(|s| s <= today.as_str())
                && m["period"]["end"].as_str().is_none_or(|e| e >= today.as_str())
        }).count();
        assert!(active_today >= 1);
        assert_eq!(g["quantity"].as_u64().unwrap() as usize, active_today);
        let mut changed = g.clone();
        changed["quantity"] = json!(99);
        changed["member"].as_array_mut().unwrap().push(json!({"entity": {"reference": "Patient/p6"}}));
        let updated = json(app.put_json("Group/grief", &changed).await).await;
        assert_eq!(updated["quantity"].as_u64().unwrap() as usize, active_today + 1, "the server keeps quantity, not the client");
    }

    async fn group_sessions_hold_only_active_members_within_capacity(app: TestApp) {
        clinic(&app).await;
        let when = ("2026-12-07T18:00:00Z", "2026-12-07T19:30:00Z");
        put_ok(&app, group_session("s1", "grief", when.0, when.1, &["Practitioner/moss", "Patient/p1", "Patient/p2", "Patient/p3", "Patient/p4"])).await;
        for (outsider, why) in [("p5", "left in June"), ("p6", "inactive")] {
            let res = put(&app, group_session("s2", "grief", "2026-12-14T18:00:00Z", "2026-12-14T19:30:00Z", &["Practitioner/moss", "Patient/p1", &format!("Patient/{outsider}")])).await;
            let body = assert_outcome(res, 422, "processing").await;
            assert!(body["issue"][0]["diagnostics"].as_str().unwrap().contains(&format!("Patient/{outsider}")), "{why}: {body}");
        }
        // p5 was a member in May: a session then may hold p5.
        put_ok(&app, group_session("s0", "grief", "2026-05-04T18:00:00Z", "2026-05-04T19:30:00Z", &["Practitioner/moss", "Patient/p5"])).await;
        // Capacity 5: lower it to 3 and a session of 4 is refused, of 3 accepted.
        let mut g = json(app.get("Group/grief").await).await;
        g["extension"][0]["valuePositiveInt"] = json!(3);
        put_ok(&app, g).await;
        let four = ["Practitioner/moss", "Patient/p1", "Patient/p2", "Patient/p3", "Patient/p4"];
        let body = assert_outcome(put(&app, group_session("s3", "grief", "2026-12-21T18:00:00Z", "2026-12-21T19:30:00Z", &four)).await, 422, "processing").await;
        assert!(body["issue"][0]["diagnostics"].as_str().unwrap().contains("at most 3"), "{body}");
        put_ok(&app, group_session("s3", "grief", "2026-12-21T18:00:00Z", "2026-12-21T19:30:00Z", &four[..4])).await;
    }

    async fn group_sessions_need_confidentiality_agreements(app: TestApp) {
        clinic(&app).await;
        // p4's agreement does not exist (c1..c5 cover p1..p5 only from 2026): give p4 none and expect a refusal naming p4.
        app.client.delete(app.url("Consent/c4")).send().await.unwrap();
        let res = put(&app, group_session("s1", "grief", "2026-12-07T18:00:00Z", "2026-12-07T19:30:00Z", &["Practitioner/moss", "Patient/p1", "Patient/p4"])).await;
        let body = assert_outcome(res, 422, "processing").await;
        let text = body["issue"][0]["diagnostics"].as_str().unwrap();
        assert!(text.contains("Patient/p4") && text.contains("Group/grief") && !text.contains("Patient/p1"), "{text}");
        // An agreement that ended before the session does not cover it.
        put_ok(&app, agreement("c4", "p4", "grief", "active", "2026-01-01", "2026-11-30")).await;
        assert_eq!(put(&app, group_session("s1", "grief", "2026-12-07T18:00:00Z", "2026-12-07T19:30:00Z", &["Practitioner/moss", "Patient/p4"])).await.status(), 422);
        // An agreement for another group does not count.
        put_ok(&app, json!({"resourceType": "Group", "id": "anxiety", "type": "person", "actual": true, "member": [{"entity": {"reference": "Patient/p4"}}]})).await;
        put_ok(&app, agreement("c4b", "p4", "anxiety", "active", "2026-01-01", "2026-12-31")).await;
        assert_eq!(put(&app, group_session("s1", "grief", "2026-12-07T18:00:00Z", "2026-12-07T19:30:00Z", &["Practitioner/moss", "Patient/p4"])).await.status(), 422);
        // One that covers the date works.
        put_ok(&app, agreement("c4", "p4", "grief", "active", "2026-01-01", "2026-12-31")).await;
        put_ok(&app, group_session("s1", "grief", "2026-12-07T18:00:00Z", "2026-12-07T19:30:00Z", &["Practitioner/moss", "Patient/p1", "Patient/p4"])).await;

        // Revoking: later bookings are refused, the booked session stays and can still be updated.
        let mut revoked = agreement("c4", "p4", "grief", "inactive", "2026-01-01", "2026-12-31");
        revoked["id"] = json!("c4");
        put_ok(&app, revoked).await;
        assert_eq!(put(&app, group_session("s2", "grief", "2026-12-14T18:00:00Z", "2026-12-14T19:30:00Z", &["Practitioner/moss", "Patient/p4"])).await.status(), 422);
        let mut s1 = json(app.get("Appointment/s1").await).await;
        s1["description"] = json!("Week 12");
        assert_eq!(app.put_json("Appointment/s1", &s1).await.status(), 200);
    }

    async fn the_agreement_policy_can_be_switched_off(app: TestApp) {
        let app = TestApp::spawn_configured(app.backend, |c| c.require_group_consent = false).await;
        clinic(&app).await;
        app.client.delete(app.url("Consent/c1")).send().await.unwrap();
        put_ok(&app, group_session("s1", "grief", "2026-12-07T18:00:00Z", "2026-12-07T19:30:00Z", &["Practitioner/moss", "Patient/p1"])).await;
        // Membership still holds.
        assert_eq!(put(&app, group_session("s2", "grief", "2026-12-14T18:00:00Z", "2026-12-14T19:30:00Z", &["Practitioner/moss", "Patient/p6"])).await.status(), 422);
    }
}
