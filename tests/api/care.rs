//! The record of the care itself (issue 24, DESIGN.md "Recording the care, not only the calendar"):
//! the Encounters of a session that took place, session notes and psychotherapy notes, and who
//! sees what — each rule with the case that passes and the case refused.

use base64::Engine as _;
use serde_json::{json, Value};

use crate::both_backends;
use crate::export::{kick_off, manifest, read_back};
use crate::helpers::*;
use crate::scheduling::{appointment, clinic, put_ok};

const SUBJECT: &str = "http://hl7.org/fhir/5.0/StructureDefinition/extension-Appointment.subject";
const VIRTUAL: &str = "http://hl7.org/fhir/5.0/StructureDefinition/extension-Appointment.virtualService";
const CANON: &str = "https://tandem.example.org/fhir";
const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";

/// A token of Practitioner/`who` with `user/*.cruds`.
fn practitioner(app: &TestApp, who: &str) -> reqwest::Client {
    let token = tandem::auth::token::mint(
        &app.config,
        "user/*.cruds",
        None,
        who,
        Some(format!("Practitioner/{who}")),
        600,
    )
    .unwrap();
    bearer_client(&token)
}

/// A client's own app: `patient/*.rs` for Patient/`who`.
fn member(app: &TestApp, who: &str) -> reqwest::Client {
    app.client_with("patient/*.rs", Some(who))
}

async fn get(app: &TestApp, client: &reqwest::Client, path: &str) -> (u16, Value) {
    let res = client.get(app.url(path)).send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn send(client: &reqwest::Client, req: reqwest::RequestBuilder, body: &Value) -> (u16, Value) {
    let _ = client;
    let res = req
        .header("Content-Type", FHIR_JSON)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

fn total(bundle: &Value) -> i64 {
    bundle["total"].as_i64().unwrap_or(-1)
}

fn ids_of(bundle: &Value, rt: &str) -> Vec<String> {
    let mut ids: Vec<String> = entries(bundle)
        .iter()
        .filter(|e| e["resource"]["resourceType"] == rt)
        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn attendance(code: &str) -> Value {
    json!([{"url": format!("{CANON}/StructureDefinition/participant-attendance"), "valueCode": code}])
}

/// The grief group's session of 2 November 2026 (p1..p4, Moss, room 1), as booked.
fn group_session(id: &str) -> Value {
    let mut a = appointment(
        id,
        "booked",
        "2026-11-02T18:00:00Z",
        "2026-11-02T19:30:00Z",
        &[
            "Patient/p1",
            "Patient/p2",
            "Patient/p3",
            "Patient/p4",
            "Practitioner/moss",
            "Location/room-1",
        ],
    );
    a["extension"] = json!([{"url": SUBJECT, "valueReference": {"reference": "Group/grief"}}]);
    a
}

/// `session` fulfilled, with each patient's attendance.
fn fulfilled(mut session: Value, codes: &[(&str, &str)]) -> Value {
    session["status"] = json!("fulfilled");
    for p in session["participant"].as_array_mut().unwrap() {
        if let Some((_, code)) = codes
            .iter()
            .find(|(who, _)| p["actor"]["reference"] == format!("Patient/{who}"))
        {
            p["extension"] = attendance(code);
        }
    }
    session
}

async fn encounters_of(app: &TestApp, appointment: &str) -> Vec<Value> {
    let bundle = json(
        app.get(&format!("Encounter?appointment=Appointment/{appointment}&_count=50"))
            .await,
    )
    .await;
    entries(&bundle).into_iter().map(|e| e["resource"].clone()).collect()
}

fn subject(e: &Value) -> &str {
    e["subject"]["reference"].as_str().unwrap_or("")
}

/// A CareTeam for `subject` with Practitioner/`who` as a participant over `period`.
fn care_team(id: &str, subject: &str, who: &str, period: Value) -> Value {
    json!({"resourceType": "CareTeam", "id": id, "status": "active", "subject": {"reference": subject},
           "participant": [{"member": {"reference": format!("Practitioner/{who}")}, "period": period}]})
}

fn note(subject: &str, author: &str, text: &str, psychotherapy: bool) -> Value {
    let data = base64::engine::general_purpose::STANDARD.encode(text);
    let mut n = json!({"resourceType": "DocumentReference", "status": "current",
        "type": {"coding": [{"system": "http://loinc.org", "code": "11506-3", "display": "Progress note"}]},
        "subject": {"reference": subject}, "author": [{"reference": author}],
        "content": [{"attachment": {"contentType": "text/plain", "data": data}}]});
    if psychotherapy {
        n["meta"] = json!({"security": [{"system": ACT_CODE, "code": "PSYTHPN"}]});
    }
    n
}

both_backends! {
    async fn a_session_that_took_place_gets_its_encounters_by_every_write_path(app: TestApp) {
        clinic(&app).await;
        let individual = |id: &str, day: &str| appointment(id, "booked", &format!("2026-11-{day}T10:00:00Z"), &format!("2026-11-{day}T10:50:00Z"),
            &["Patient/p1", "Practitioner/ngata", "Location/room-1"]);
        // By update.
        put_ok(&app, individual("i1", "03")).await;
        assert!(encounters_of(&app, "i1").await.is_empty(), "a booked session has taken place yet");
        let mut done = individual("i1", "03");
        done["status"] = json!("fulfilled");
        done["serviceType"] = json!([{"coding": [{"system": "http://snomed.info/sct", "code": "90102008", "display": "Psychotherapy"}]}]);
        put_ok(&app, done.clone()).await;
        let found = encounters_of(&app, "i1").await;
        assert_eq!(found.len(), 1);
        let e = &found[0];
        assert_eq!(e["status"], "finished");
        assert_eq!(subject(e), "Patient/p1");
        assert_eq!(e["class"]["code"], "AMB");
        assert_eq!(e["class"]["system"], ACT_CODE);
        assert_eq!(e["participant"][0]["individual"]["reference"], "Practitioner/ngata");
        assert_eq!(e["location"][0]["location"]["reference"], "Location/room-1");
        assert_eq!(e["appointment"][0]["reference"], "Appointment/i1");
        assert_eq!(e["period"], json!({"start": "2026-11-03T10:00:00Z", "end": "2026-11-03T10:50:00Z"}));
        assert_eq!(e["serviceType"]["coding"][0]["code"], "90102008");
        assert_eq!(e["identifier"][0], json!({"system": format!("{CANON}/sid/appointment-encounter"), "value": "Appointment/i1/Patient/p1"}));
        // Saving it again duplicates nothing and changes nothing.
        done["comment"] = json!("re-saved");
        put_ok(&app, done.clone()).await;
        let again = encounters_of(&app, "i1").await;
        assert_eq!(again.len(), 1);
        assert_eq!(again[0]["id"], e["id"]);
        assert_eq!(again[0]["meta"]["versionId"], "1");

        // By PATCH.
        put_ok(&app, individual("i2", "04")).await;
        let res = app.client.patch(app.url("Appointment/i2")).header("Content-Type", "application/json-patch+json")
            .body(json!([{"op": "replace", "path": "/status", "value": "fulfilled"}]).to_string()).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(encounters_of(&app, "i2").await.len(), 1);

        // By transaction, and by conditional update.
        let mut i3 = individual("i3", "05");
        i3["status"] = json!("fulfilled");
        let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": i3, "request": {"method": "PUT", "url": "Appointment/i3"}}]});
        assert_eq!(app.post_json("", &tx).await.status(), 200);
        assert_eq!(encounters_of(&app, "i3").await.len(), 1);
        let mut i4 = individual("i4", "06");
        i4["identifier"] = json!([{"system": "urn:clinic:appt", "value": "A-4"}]);
        put_ok(&app, i4.clone()).await;
        i4.as_object_mut().unwrap().remove("id");
        i4["status"] = json!("fulfilled");
        assert_eq!(app.put_json("Appointment?identifier=urn:clinic:appt|A-4", &i4).await.status(), 200);
        assert_eq!(encounters_of(&app, "i4").await.len(), 1);

        // A video session is a virtual encounter.
        let mut i5 = individual("i5", "09");
        i5["status"] = json!("fulfilled");
        i5["extension"] = json!([{"url": VIRTUAL, "extension": [{"url": "address", "valueUrl": "https://video.example/room/5"}]}]);
        put_ok(&app, i5).await;
        assert_eq!(encounters_of(&app, "i5").await[0]["class"]["code"], "VR");

        // Taken out of fulfilled: entered-in-error, never deleted; back again: finished, same one.
        let mut noshow = done.clone();
        noshow["status"] = json!("noshow");
        put_ok(&app, noshow).await;
        let retired = encounters_of(&app, "i1").await;
        assert_eq!((retired.len(), retired[0]["status"].as_str()), (1, Some("entered-in-error")));
        put_ok(&app, done).await;
        let back = encounters_of(&app, "i1").await;
        assert_eq!((back.len(), back[0]["status"].as_str(), &back[0]["id"]), (1, Some("finished"), &e["id"]));

        // The server's identifier is its own: no client adds it to an Encounter, or changes it.
        let mut forged = e.clone();
        forged.as_object_mut().unwrap().remove("id");
        assert_eq!(app.post_json("Encounter", &forged).await.status(), 403);
        let mut moved = e.clone();
        moved["identifier"][0]["value"] = json!("Appointment/i1/Patient/p2");
        assert_eq!(app.put_json(&format!("Encounter/{}", e["id"].as_str().unwrap()), &moved).await.status(), 403);
        // A client recorded as not there had no session.
        let mut missed = individual("i8", "12");
        missed["status"] = json!("fulfilled");
        missed["participant"][0]["extension"] = attendance("no-show");
        put_ok(&app, missed).await;
        assert!(encounters_of(&app, "i8").await.is_empty());
        // A write that is refused writes no Encounter: a fulfilled session that double-books Ngata.
        let mut clash = individual("i6", "03");
        clash["status"] = json!("booked");
        put_ok(&app, appointment("other", "booked", "2026-11-10T10:00:00Z", "2026-11-10T10:50:00Z", &["Patient/p2", "Practitioner/ngata"])).await;
        let mut clash2 = appointment("i6", "booked", "2026-11-10T10:10:00Z", "2026-11-10T10:40:00Z", &["Patient/p3", "Practitioner/ngata"]);
        assert_eq!(app.put_json("Appointment/i6", &clash2).await.status(), 409);
        clash2["status"] = json!("fulfilled");
        let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": clash, "request": {"method": "PUT", "url": "Appointment/i7"}},
            {"resource": json!({"resourceType": "Patient", "birthDate": "not a date"}), "request": {"method": "POST", "url": "Patient"}}]});
        assert!(app.post_json("", &tx).await.status().is_client_error());
        let all = json(app.get("Encounter?_summary=count").await).await;
        assert_eq!(total(&all), 5, "one Encounter for each of i1..i5, none for what was refused");
        // $caseload and the Encounters agree on the sessions that took place (3 to 9 November).
        let caseload = json(app.get("Practitioner/ngata/$caseload?start=2026-11-01&end=2026-11-10").await).await;
        let individual = caseload["parameter"].as_array().unwrap().iter().find(|p| p["name"] == "individualSessions").unwrap()["valueInteger"].as_i64();
        let finished = json(app.get("Encounter?practitioner=Practitioner/ngata&status=finished&date=lt2026-11-10&_summary=count").await).await;
        assert_eq!(individual, Some(total(&finished)));
        assert_eq!(total(&finished), 5);
    }

    async fn a_group_session_gets_a_session_encounter_and_one_per_member_who_attended(app: TestApp) {
        clinic(&app).await;
        put_ok(&app, group_session("g1")).await;
        let attended = fulfilled(group_session("g1"), &[("p1", "attended"), ("p2", "attended"), ("p3", "no-show"), ("p4", "late-cancel")]);
        put_ok(&app, attended.clone()).await;
        let found = encounters_of(&app, "g1").await;
        assert_eq!(found.len(), 3, "the session, p1 and p2: {found:?}");
        let session = found.iter().find(|e| subject(e) == "Group/grief").expect("the session Encounter");
        assert_eq!(session["participant"][0]["individual"]["reference"], "Practitioner/moss");
        assert_eq!(session["identifier"][0]["value"], "Appointment/g1");
        let session_ref = format!("Encounter/{}", session["id"].as_str().unwrap());
        let part_of = json(app.get(&format!("Encounter?part-of={session_ref}")).await).await;
        let mut members: Vec<String> = entries(&part_of).iter().map(|e| subject(&e["resource"]).to_string()).collect();
        members.sort();
        assert_eq!(members, ["Patient/p1", "Patient/p2"], "no-shows and late cancels get none");
        let p1 = json(app.get("Encounter?subject=Patient/p1").await).await;
        assert_eq!(total(&p1), 1);
        assert_eq!(entries(&p1)[0]["resource"]["appointment"][0]["reference"], "Appointment/g1");

        // Corrected: p2 did not come after all. Her Encounter is entered-in-error, not deleted.
        let corrected = fulfilled(group_session("g1"), &[("p1", "attended"), ("p2", "no-show"), ("p3", "no-show"), ("p4", "late-cancel")]);
        put_ok(&app, corrected).await;
        let after = encounters_of(&app, "g1").await;
        assert_eq!(after.len(), 3);
        let p2 = after.iter().find(|e| subject(e) == "Patient/p2").unwrap();
        assert_eq!(p2["status"], "entered-in-error");
        assert!(after.iter().filter(|e| subject(e) != "Patient/p2").all(|e| e["status"] == "finished"));

        // $attendance and the Encounters agree: attended = finished member Encounters.
        let report = json(app.get("Group/grief/$attendance?start=2026-11-01&end=2026-11-30").await).await;
        for who in ["p1", "p2", "p3"] {
            let part = report["parameter"].as_array().unwrap().iter()
                .find(|p| p["name"] == "member" && p["part"][0]["valueReference"]["reference"] == format!("Patient/{who}"))
                .unwrap_or_else(|| panic!("{who} in {report}"));
            let attended = part["part"].as_array().unwrap().iter().find(|x| x["name"] == "attended").unwrap()["valueInteger"].as_i64().unwrap();
            let finished = json(app.get(&format!("Encounter?subject=Patient/{who}&status=finished&_summary=count")).await).await;
            assert_eq!(attended, total(&finished), "{who}");
        }

        // $caseload counts the session the Encounters record.
        let caseload = json(app.get("Practitioner/moss/$caseload?start=2026-11-01&end=2026-11-30").await).await;
        let group = caseload["parameter"].as_array().unwrap().iter().find(|p| p["name"] == "groupSessions").unwrap()["valueInteger"].as_i64();
        let sessions = json(app.get("Encounter?practitioner=Practitioner/moss&subject=Group/grief&status=finished&_summary=count").await).await;
        assert_eq!((group, total(&sessions)), (Some(1), 1));

        // Cancelled after all: every one of its Encounters is entered-in-error.
        let mut cancelled = group_session("g1");
        cancelled["status"] = json!("cancelled");
        put_ok(&app, cancelled).await;
        assert!(encounters_of(&app, "g1").await.iter().all(|e| e["status"] == "entered-in-error"));
    }

    async fn a_psychotherapy_note_is_its_authors_alone(app: TestApp) {
        let app = TestApp::spawn_configured_on(app.backend, app.stop().await, |c| {
            // Its notifications are refused (nothing listens on port 9): they stay in the outbox.
            c.subscription_allowed_hosts = vec!["127.0.0.1:9".into()];
        }).await;
        clinic(&app).await;
        // Both therapists are on p1's team: only the note's authorship tells them apart.
        put_ok(&app, json!({"resourceType": "CareTeam", "id": "team-p1", "status": "active", "subject": {"reference": "Patient/p1"},
            "participant": [{"member": {"reference": "Practitioner/moss"}}, {"member": {"reference": "Practitioner/ngata"}}]})).await;
        let subscription = json!({"resourceType": "Subscription", "status": "requested", "reason": "notes", "criteria": "DocumentReference?subject=Patient/p1",
            "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook", "payload": "application/fhir+json"}});
        assert_eq!(app.post_json("Subscription", &subscription).await.status(), 201);
        let (moss, ngata, system, p1) = (practitioner(&app, "moss"), practitioner(&app, "ngata"), app.client.clone(), member(&app, "p1"));
        let before = app.version_count().await;
        // Refused: written by a system token, in another's name, without a Practitioner author.
        let psych = note("Patient/p1", "Practitioner/moss", "Process notes: transference.", true);
        let (status, _) = send(&system, system.post(app.url("DocumentReference")), &psych).await;
        assert_eq!(status, 403, "a system token cannot write a psychotherapy note");
        let (status, _) = send(&ngata, ngata.post(app.url("DocumentReference")), &psych).await;
        assert_eq!(status, 403, "nor another practitioner in the author's name");
        let service_as_moss = bearer_client(&tandem::auth::token::mint(&app.config, "system/*.cruds", None, "svc", Some("Practitioner/moss".into()), 600).unwrap());
        let (status, _) = send(&service_as_moss, service_as_moss.post(app.url("DocumentReference")), &psych).await;
        assert_eq!(status, 403, "nor a system token that names the author as its fhirUser");
        let mut no_author = psych.clone();
        no_author.as_object_mut().unwrap().remove("author");
        assert_eq!(send(&moss, moss.post(app.url("DocumentReference")), &no_author).await.0, 422);
        let by_patient = note("Patient/p1", "Patient/p1", "mine", true);
        assert_eq!(send(&moss, moss.post(app.url("DocumentReference")), &by_patient).await.0, 422);
        assert_eq!(app.version_count().await, before, "nothing written");
        // Written by its author; a progress note beside it.
        let (status, written) = send(&moss, moss.post(app.url("DocumentReference")), &psych).await;
        assert_eq!(status, 201, "{written}");
        let psych_id = written["id"].as_str().unwrap().to_string();
        let (status, progress) = send(&moss, moss.post(app.url("DocumentReference")), &note("Patient/p1", "Practitioner/moss", "Progress: sleeping better.", false)).await;
        assert_eq!(status, 201);
        let progress_id = progress["id"].as_str().unwrap().to_string();

        // Read, vread, history: the author only; everyone else is told it does not exist.
        let path = format!("DocumentReference/{psych_id}");
        assert_eq!(get(&app, &moss, &path).await.0, 200);
        for (who, client) in [("ngata", &ngata), ("system", &system), ("p1", &p1), ("system as moss", &service_as_moss)] {
            assert_eq!(get(&app, client, &path).await.0, 404, "{who} read");
            assert_eq!(get(&app, client, &format!("{path}/_history/1")).await.0, 404, "{who} vread");
            assert_eq!(get(&app, client, &format!("{path}/_history")).await.0, 404, "{who} history");
            assert_eq!(get(&app, client, &format!("DocumentReference/{progress_id}")).await.0, 200, "{who} reads the progress note");
        }
        // Searches, totals, _revinclude, $everything, type and system history.
        let (_, mine) = get(&app, &moss, "DocumentReference?subject=Patient/p1").await;
        assert_eq!(total(&mine), 2);
        for (who, client) in [("ngata", &ngata), ("system", &system), ("p1", &p1)] {
            let (status, found) = get(&app, client, "DocumentReference?subject=Patient/p1").await;
            assert_eq!((status, total(&found), ids_of(&found, "DocumentReference")), (200, 1, vec![progress_id.clone()]), "{who} search");
            let (_, count) = get(&app, client, "DocumentReference?_summary=count").await;
            assert_eq!(total(&count), 1, "{who} count");
            let (_, rev) = get(&app, client, "Patient?_id=p1&_revinclude=DocumentReference:subject").await;
            assert_eq!(ids_of(&rev, "DocumentReference"), vec![progress_id.clone()], "{who} _revinclude");
            let (_, everything) = get(&app, client, "Patient/p1/$everything").await;
            assert!(!everything.to_string().contains(&psych_id), "{who} $everything");
            assert!(everything.to_string().contains(&progress_id), "{who} $everything");
        }
        for (who, client) in [("ngata", &ngata), ("system", &system)] {
            let (_, history) = get(&app, client, "DocumentReference/_history").await;
            assert!(!history.to_string().contains(&psych_id), "{who} type history");
        }
        let (_, history) = get(&app, &system, "_history").await;
        assert!(!history.to_string().contains(&psych_id), "system history");
        let (_, everything) = get(&app, &moss, "Patient/p1/$everything").await;
        assert!(everything.to_string().contains(&psych_id), "its author's $everything holds it");
        // Changed or deleted by no one else: an update is refused, a delete touches nothing.
        let mut changed = written.clone();
        changed["status"] = json!("entered-in-error");
        assert_eq!(send(&ngata, ngata.put(app.url(&path)), &changed).await.0, 403);
        assert!(system.delete(app.url(&path)).send().await.unwrap().status().is_success());
        let (status, still) = get(&app, &moss, &path).await;
        assert_eq!((status, &still["meta"]["versionId"]), (200, &json!("1")));
        // Its author may change it.
        assert_eq!(send(&moss, moss.put(app.url(&path)), &changed).await.0, 200);
        // Every access and every refusal is in the audit trail.
        let officer = app.client_with("system/AuditEvent.rs", None);
        let (status, trail) = get(&app, &officer, &format!("AuditEvent?entity={path}&_count=100")).await;
        assert_eq!(status, 200);
        let outcomes: Vec<(String, String)> = entries(&trail).iter().map(|e| (
            e["resource"]["agent"][0]["who"]["identifier"]["value"].as_str().or(e["resource"]["agent"][0]["who"]["reference"].as_str()).unwrap_or("").to_string(),
            e["resource"]["outcome"].as_str().unwrap_or("").to_string())).collect();
        assert!(outcomes.iter().any(|(who, outcome)| who.contains("ngata") && outcome != "0"), "ngata's refused read: {outcomes:?}");
        assert!(outcomes.iter().any(|(who, outcome)| who.contains("moss") && outcome == "0"), "moss's read: {outcomes:?}");

        // Another's record does not become one's hidden note; one's own progress note may, and then
        // its earlier version is as hidden as the note.
        let mut takeover = progress.clone();
        takeover["meta"] = json!({"security": [{"system": ACT_CODE, "code": "PSYTHPN"}]});
        takeover["author"] = json!([{"reference": "Practitioner/ngata"}]);
        assert_eq!(send(&ngata, ngata.put(app.url(&format!("DocumentReference/{progress_id}"))), &takeover).await.0, 403);
        let (_, draft) = send(&moss, moss.post(app.url("DocumentReference")), &note("Patient/p1", "Practitioner/moss", "Draft.", false)).await;
        let draft_id = draft["id"].as_str().unwrap().to_string();
        let mut relabelled = draft.clone();
        relabelled["meta"] = json!({"security": [{"system": ACT_CODE, "code": "PSYTHPN"}]});
        assert_eq!(send(&moss, moss.put(app.url(&format!("DocumentReference/{draft_id}"))), &relabelled).await.0, 200);
        assert_eq!(get(&app, &system, &format!("DocumentReference/{draft_id}/_history/1")).await.0, 404);
        let (_, history) = get(&app, &system, "DocumentReference/_history").await;
        assert!(!history.to_string().contains(&draft_id), "no version of it in the type history");
        // Deleted by its author: the deletion is no one else's to see either.
        assert_eq!(moss.delete(app.url(&format!("DocumentReference/{draft_id}"))).send().await.unwrap().status(), 204);
        let (_, history) = get(&app, &system, "_history").await;
        assert!(!history.to_string().contains(&draft_id), "nor its deletion");

        // $export and the Subscription outbox leave it out.
        let exported = read_back(&system, &manifest(&system, &kick_off(&app, &system, "$export?_type=DocumentReference").await).await).await;
        assert!(exported.contains(&("DocumentReference".to_string(), progress_id.clone())));
        assert!(!exported.contains(&("DocumentReference".to_string(), psych_id.clone())), "{exported:?}");
        let queued = |id: &str| app.count(&format!("SELECT COUNT(*) AS n FROM subscription_deliveries WHERE res_type = 'DocumentReference' AND res_id = '{id}'"));
        assert_eq!(queued(&progress_id), 1, "the progress note notifies");
        assert_eq!(queued(&psych_id), 0, "the psychotherapy note never does");
    }

    async fn a_member_sees_no_other_member(app: TestApp) {
        clinic(&app).await;
        put_ok(&app, group_session("g1")).await;
        let p1 = member(&app, "p1");
        let others = ["Patient/p2", "Patient/p3", "Patient/p4", "Patient/p5", "Patient/p6"];
        let leaks = |v: &Value| others.iter().filter(|o| v.to_string().contains(*o)).map(|o| o.to_string()).collect::<Vec<_>>();
        let redacted = |v: &Value| v["meta"]["security"].as_array().is_some_and(|s| s.iter().any(|l| l["code"] == "REDACTED"));

        let (status, session) = get(&app, &p1, "Appointment/g1").await;
        assert_eq!(status, 200);
        assert!(leaks(&session).is_empty(), "{session}");
        assert!(redacted(&session));
        let actors: Vec<&str> = session["participant"].as_array().unwrap().iter().map(|p| p["actor"]["reference"].as_str().unwrap()).collect();
        assert_eq!(actors, ["Patient/p1", "Practitioner/moss", "Location/room-1"]);
        let (status, group) = get(&app, &p1, "Group/grief").await;
        assert_eq!(status, 200);
        assert_eq!(group["member"].as_array().unwrap().len(), 1);
        assert_eq!(group["member"][0]["entity"]["reference"], "Patient/p1");
        assert!(group.get("quantity").is_none() && redacted(&group));
        // The whole, as the clinic sees it, is unchanged.
        let whole = json(app.get("Appointment/g1").await).await;
        assert_eq!(whole["participant"].as_array().unwrap().len(), 6);
        assert!(!redacted(&whole));

        // Searches by another member find nothing, even where the match is a session she may see.
        for query in ["Appointment?actor=Patient/p2", "Appointment?patient=Patient/p2", "Group?member=Patient/p2", "Appointment?actor:missing=false&actor=p3"] {
            let (status, found) = get(&app, &p1, query).await;
            assert_eq!((status, total(&found)), (200, 0), "{query}: {found}");
        }
        let (_, hers) = get(&app, &p1, "Appointment?actor=Patient/p1&_include=Appointment:actor&_include=Appointment:patient").await;
        assert_eq!(total(&hers), 1);
        assert!(leaks(&hers).is_empty(), "{hers}");
        let (status, _) = get(&app, &p1, "Appointment?part-status=declined").await;
        assert_eq!(status, 400, "participant status is read from every member");
        let (status, groups) = get(&app, &p1, "Group?_id=grief&_revinclude=Appointment:group").await;
        assert_eq!((status, ids_of(&groups, "Appointment")), (200, vec!["g1".to_string()]), "{groups}");
        assert!(leaks(&groups).is_empty(), "{groups}");
        // $everything, history and vread of the session.
        for path in ["Patient/p1/$everything", "Appointment/g1/_history", "Appointment/g1/_history/1", "Group/grief/_history"] {
            let (status, body) = get(&app, &p1, path).await;
            assert_eq!(status, 200, "{path}");
            assert!(leaks(&body).is_empty(), "{path}: {body}");
        }
        // She cannot write what she sees only in part: a PUT of her view, a PATCH, are refused.
        let p1w = app.client_with("patient/*.cruds", Some("p1"));
        let mut mine = session.clone();
        mine["comment"] = json!("I'll be late");
        assert_eq!(send(&p1w, p1w.put(app.url("Appointment/g1")), &mine).await.0, 403);
        let res = p1w.patch(app.url("Appointment/g1")).header("Content-Type", "application/json-patch+json")
            .body(json!([{"op": "test", "path": "/participant/1/actor/reference", "value": "Patient/p2"}]).to_string()).send().await.unwrap();
        assert_eq!(res.status(), 403, "no test op may probe the other members");
        let stored = json(app.get("Appointment/g1").await).await;
        assert_eq!((stored["meta"]["versionId"].as_str(), stored["participant"].as_array().unwrap().len()), (Some("1"), 6));
        // Nor through a batch, nor as the match of a conditional create.
        let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": "Appointment/g1"}}, {"request": {"method": "GET", "url": "Group/grief"}},
            {"request": {"method": "GET", "url": "Appointment?patient=Patient/p1"}}]});
        let (status, answer) = send(&p1w, p1w.post(app.url("")), &batch).await;
        assert_eq!(status, 200);
        assert!(leaks(&answer).is_empty(), "{answer}");
        assert_eq!(answer["entry"].as_array().unwrap().iter().filter(|e| e["response"]["status"].as_str().unwrap().starts_with("200")).count(), 3, "{answer}");
        assert!(answer.to_string().contains("Patient/p1"));
        let res = p1w.post(app.url("Appointment")).header("Content-Type", FHIR_JSON).header("If-None-Exist", "_id=g1")
            .body(group_session("ignored").to_string()).send().await.unwrap();
        let matched = res.text().await.unwrap();
        assert!(others.iter().all(|o| !matched.contains(o)), "{matched}");
        assert!(matched.contains("Patient/p1") && matched.contains("REDACTED"), "{matched}");
        // A participant she cannot tell apart (a contained relative) is left out too.
        let mut with_relative = group_session("g1");
        with_relative["contained"] = json!([{"resourceType": "RelatedPerson", "id": "mum", "patient": {"reference": "Patient/p2"}, "name": [{"family": "Client2-mother"}]}]);
        with_relative["participant"].as_array_mut().unwrap().push(json!({"actor": {"reference": "#mum"}, "status": "accepted"}));
        put_ok(&app, with_relative).await;
        let (_, session) = get(&app, &p1, "Appointment/g1").await;
        assert!(!session.to_string().contains("Client2-mother") && session.get("contained").is_none(), "{session}");
        put_ok(&app, group_session("g1")).await;
        // Whether a session took place is the clinic's record: her token may not fulfil her own session.
        put_ok(&app, appointment("own", "booked", "2026-11-20T10:00:00Z", "2026-11-20T10:50:00Z", &["Patient/p1", "Practitioner/ngata"])).await;
        let mut own = appointment("own", "fulfilled", "2026-11-20T10:00:00Z", "2026-11-20T10:50:00Z", &["Patient/p1", "Practitioner/ngata"]);
        own["status"] = json!("fulfilled");
        assert_eq!(send(&p1w, p1w.put(app.url("Appointment/own")), &own).await.0, 403);
        assert!(encounters_of(&app, "own").await.is_empty());
        // Her own session Encounter and her own notes are hers to see.
        put_ok(&app, fulfilled(group_session("g1"), &[("p1", "attended"), ("p2", "attended")])).await;
        let (_, encounters) = get(&app, &p1, "Encounter").await;
        assert_eq!(total(&encounters), 1, "her own Encounter, not p2's nor the group's");
        assert!(leaks(&encounters).is_empty());
    }

    async fn a_therapist_sees_the_clients_assigned_to_them(app: TestApp) {
        clinic(&app).await;
        put_ok(&app, care_team("team-p1", "Patient/p1", "moss", json!({"start": "2026-01-01"}))).await;
        put_ok(&app, care_team("team-grief", "Group/grief", "ngata", json!({"start": "2026-01-01"}))).await;
        put_ok(&app, appointment("a-p2", "booked", "2026-12-20T10:00:00Z", "2026-12-20T10:50:00Z", &["Patient/p2", "Practitioner/moss"])).await;
        let (moss, ngata) = (practitioner(&app, "moss"), practitioner(&app, "ngata"));
        // Moss: p1 only, and the records outside any client's (practitioners, rooms).
        assert_eq!(get(&app, &moss, "Patient/p1").await.0, 200);
        assert_eq!(get(&app, &moss, "Patient/p2").await.0, 404);
        assert_eq!(get(&app, &moss, "Appointment/a-p2").await.0, 404, "even a session of his own with an unassigned client");
        assert_eq!(get(&app, &moss, "Practitioner/ngata").await.0, 200);
        assert_eq!(get(&app, &moss, "Location/room-1").await.0, 200);
        let (_, patients) = get(&app, &moss, "Patient").await;
        assert_eq!((total(&patients), ids_of(&patients, "Patient")), (1, vec!["p1".to_string()]));
        let (status, _) = send(&moss, moss.put(app.url("Patient/p2")), &json!({"resourceType": "Patient", "id": "p2", "name": [{"family": "Changed"}]})).await;
        assert_eq!(status, 403);
        assert_eq!(json(app.get("Patient/p2").await).await["name"][0]["family"], "Client2");
        // Ngata, through the group's team: its active members, not the one who left nor the inactive one.
        for (who, status) in [("p1", 200), ("p2", 200), ("p3", 200), ("p4", 200), ("p5", 404), ("p6", 404)] {
            assert_eq!(get(&app, &ngata, &format!("Patient/{who}")).await.0, status, "ngata reads {who}");
        }
        // Encounters of a client, as an assigned therapist.
        let mut done = appointment("i1", "fulfilled", "2026-11-03T10:00:00Z", "2026-11-03T10:50:00Z", &["Patient/p1", "Practitioner/moss"]);
        done["status"] = json!("fulfilled");
        put_ok(&app, done).await;
        put_ok(&app, appointment("i2", "fulfilled", "2026-11-04T10:00:00Z", "2026-11-04T10:50:00Z", &["Patient/p2", "Practitioner/ngata"])).await;
        let (_, e1) = get(&app, &moss, "Encounter?subject=Patient/p1").await;
        assert_eq!(total(&e1), 1);
        let (_, e2) = get(&app, &moss, "Encounter?subject=Patient/p2").await;
        assert_eq!(total(&e2), 0);
        let (_, all) = get(&app, &moss, "Encounter?_summary=count").await;
        assert_eq!(total(&all), 1, "totals count only what he may see");
        // Nor assign himself more clients: a CareTeam's assignment is written by the clinic.
        let grab = json!({"resourceType": "CareTeam", "status": "active", "subject": {"reference": "Group/grief"},
            "participant": [{"member": {"reference": "Practitioner/moss"}}, {"member": {"reference": "Patient/p1"}}]});
        assert_eq!(send(&moss, moss.post(app.url("CareTeam")), &grab).await.0, 403);
        let p1w = app.client_with("patient/*.cruds", Some("p1"));
        let invite = json!({"resourceType": "CareTeam", "status": "active", "subject": {"reference": "Patient/p1"},
            "participant": [{"member": {"reference": "Practitioner/ngata"}}]});
        assert_eq!(send(&p1w, p1w.post(app.url("CareTeam")), &invite).await.0, 403, "nor a client for another therapist");
        assert_eq!(get(&app, &moss, "Patient/p2").await.0, 404);
        // A cursor of someone else's search shows him only what he may see.
        let (_, first) = get(&app, &app.client, "Patient?_count=1&_sort=family").await;
        let next = first["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").unwrap()["url"].as_str().unwrap().to_string();
        for _ in 0..6 {
            let res = moss.get(&next).send().await.unwrap();
            assert_eq!(res.status(), 200);
            let page = json(res).await;
            assert!(ids_of(&page, "Patient").iter().all(|id| id == "p1"), "{page}");
        }
        // Nor can he watch every client through a Subscription: a notification carries each match.
        let watch = json!({"resourceType": "Subscription", "status": "off", "reason": "sessions", "criteria": "Appointment?status=booked",
            "channel": {"type": "rest-hook", "endpoint": "https://hooks.ehr.example/fhir", "payload": "application/fhir+json"}});
        assert_eq!(send(&moss, moss.post(app.url("Subscription")), &watch).await.0, 403);
        let subscriptions_only = app.client_with("system/Subscription.cruds", None);
        assert_eq!(send(&subscriptions_only, subscriptions_only.post(app.url("Subscription")), &watch).await.0, 403, "nor a token that may not search Appointments");
        assert_eq!(app.post_json("Subscription", &watch).await.status(), 201, "a system token that may search and read them all may");
        let mut oracle = watch.clone();
        oracle["criteria"] = json!("Practitioner?_has:Appointment:practitioner:patient=Patient/p2");
        assert_eq!(send(&moss, moss.post(app.url("Subscription")), &oracle).await.0, 403, "a _has through records he may not see");
        // His assignment ends: so does his access, at once.
        put_ok(&app, care_team("team-p1", "Patient/p1", "moss", json!({"start": "2026-01-01", "end": "2026-06-30"}))).await;
        assert_eq!(get(&app, &moss, "Patient/p1").await.0, 404);
        let (_, none) = get(&app, &moss, "Encounter?subject=Patient/p1").await;
        assert_eq!(total(&none), 0);
        // A user/ token whose fhirUser is no practitioner of ours reaches no client's record.
        let nobody = bearer_client(&tandem::auth::token::mint(&app.config, "user/*.rs", None, "front-desk", None, 600).unwrap());
        let (status, patients) = get(&app, &nobody, "Patient").await;
        assert_eq!((status, total(&patients)), (200, 0));
        // TANDEM_USER_ACCESS=all: user/ scopes reach every record, as before.
        let open = TestApp::spawn_configured_on(app.backend, app.stop().await, |c| c.user_access = tandem::config::UserAccess::All).await;
        assert_eq!(get(&open, &practitioner(&open, "moss"), "Patient/p2").await.0, 200);
    }
}
