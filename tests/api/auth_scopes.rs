//! SMART v2 scopes enforced per interaction for every hosted type, and the patient compartment of
//! `patient/` tokens: reads, searches (with _include, _revinclude, chains and _has), history,
//! $everything and writes.

use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;

/// A minimal valid resource of each hosted type, with an id.
fn sample(rt: &str, id: &str) -> Value {
    let mut body = match rt {
        "Appointment" => {
            json!({"resourceType": rt, "status": "proposed", "participant": [{"status": "needs-action", "type": [{"text": "facilitator"}]}]})
        }
        "Group" => json!({"resourceType": rt, "type": "person", "actual": true}),
        "Organization" => json!({"resourceType": rt, "name": "Riverside Counselling"}),
        "CareTeam" => json!({"resourceType": rt, "status": "active"}),
        "Encounter" => {
            json!({"resourceType": rt, "status": "finished", "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}})
        }
        "DocumentReference" => {
            json!({"resourceType": rt, "status": "current", "content": [{"attachment": {"contentType": "text/plain", "data": "bm90ZQ=="}}]})
        }
        "Consent" => {
            json!({"resourceType": rt, "status": "active", "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]}, "category": [{"text": "agreement"}],
                   "patient": {"reference": "https://ehr.example.org/fhir/Patient/7"}, "policyRule": {"text": "group confidentiality rules"}})
        }
        "Observation" => {
            json!({"resourceType": rt, "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}})
        }
        "Questionnaire" => json!({"resourceType": rt, "status": "draft"}),
        "QuestionnaireResponse" => json!({"resourceType": rt, "status": "in-progress"}),
        "Schedule" => json!({"resourceType": rt, "actor": [{"reference": "Practitioner/m-practitioner"}]}),
        "Slot" => {
            json!({"resourceType": rt, "status": "free", "schedule": {"reference": "Schedule/m-schedule"},
                   "start": "2027-01-04T09:00:00Z", "end": "2027-01-04T10:00:00Z"})
        }
        "Subscription" => {
            json!({"resourceType": rt, "status": "off", "reason": "sync", "criteria": "Patient?active=true",
                                 "channel": {"type": "rest-hook", "endpoint": "https://hooks.ehr.example/fhir"}})
        }
        _ => json!({"resourceType": rt}),
    };
    body["id"] = json!(id);
    body
}

const TYPES: [&str; 17] = [
    "Appointment",
    "CareTeam",
    "Consent",
    "DocumentReference",
    "Encounter",
    "Group",
    "Location",
    "Observation",
    "Organization",
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "Questionnaire",
    "QuestionnaireResponse",
    "Schedule",
    "Slot",
    "Subscription",
];

/// Sends one interaction on `rt` with `client`; returns the status.
async fn interact(app: &TestApp, client: &reqwest::Client, rt: &str, interaction: &str) -> u16 {
    let id = format!("m-{}", rt.to_lowercase());
    let req = match interaction {
        "create" => client
            .post(app.url(rt))
            .header("Content-Type", FHIR_JSON)
            .body(sample(rt, "ignored").to_string()),
        "read" => client.get(app.url(&format!("{rt}/{id}"))),
        "vread" => client.get(app.url(&format!("{rt}/{id}/_history/1"))),
        "update" => client
            .put(app.url(&format!("{rt}/{id}")))
            .header("Content-Type", FHIR_JSON)
            .body(sample(rt, &id).to_string()),
        "patch" => client
            .patch(app.url(&format!("{rt}/{id}")))
            .header("Content-Type", "application/json-patch+json")
            .body(json!([{"op": "test", "path": "/id", "value": id}]).to_string()),
        "delete" => client.delete(app.url(&format!("{rt}/{id}-gone"))),
        "search-type" => client.get(app.url(rt)),
        "history-instance" => client.get(app.url(&format!("{rt}/{id}/_history"))),
        "history-type" => client.get(app.url(&format!("{rt}/_history"))),
        other => panic!("{other}"),
    };
    req.send().await.unwrap().status().as_u16()
}

both_backends! {
    async fn every_interaction_on_every_type_needs_its_own_permission(app: TestApp) {
        // user/ tokens here have no fhirUser: with TANDEM_USER_ACCESS=all they reach every record
        // (assignment is tested in care_access).
        let app = TestApp::spawn_configured_on(app.backend, app.stop().await, |c| c.user_access = tandem::config::UserAccess::All).await;
        for rt in TYPES {
            let id = format!("m-{}", rt.to_lowercase());
            assert_eq!(app.put_json(&format!("{rt}/{id}"), &sample(rt, &id)).await.status(), 201, "{rt}");
            assert_eq!(app.put_json(&format!("{rt}/{id}-gone"), &sample(rt, &format!("{id}-gone"))).await.status(), 201);
        }
        let interactions = [
            ("create", 'c'), ("read", 'r'), ("vread", 'r'), ("history-instance", 'r'), ("update", 'u'),
            ("patch", 'u'), ("search-type", 's'), ("history-type", 's'), ("delete", 'd'),
        ];
        let v1 = |p: char| if "rs".contains(p) { "read" } else { "write" };
        for rt in TYPES {
            let other_type = if rt == "Patient" { "Practitioner" } else { "Patient" };
            for (interaction, p) in interactions {
                let others: String = "cruds".chars().filter(|c| *c != p).collect();
                // Tokens that lack the permission, or name another type, are refused with 403.
                for scope in [format!("system/{rt}.{others}"), format!("system/{other_type}.cruds"), format!("patient/{rt}.{p}")] {
                    let status = interact(&app, &app.client_with(&scope, None), rt, interaction).await;
                    assert_eq!(status, 403, "{scope} must not allow {interaction} on {rt}");
                }
                // Tokens that grant it: v2 in each context, v1, and the wildcard.
                for scope in [format!("system/{rt}.{p}"), format!("user/{rt}.{p}"), format!("system/{rt}.{}", v1(p)), format!("system/*.{p}")] {
                    // A Subscription written also needs search and read on every record it watches
                    // (its criteria: Patient?active=true).
                    let scope = match (rt, p) {
                        ("Subscription", 'c' | 'u') => format!("{scope} system/Patient.rs"),
                        _ => scope,
                    };
                    let status = interact(&app, &app.client_with(&scope, None), rt, interaction).await;
                    assert!(status < 400, "{scope} must allow {interaction} on {rt}: {status}");
                }
            }
        }
    }

    async fn system_interactions_bundles_and_operations_check_each_part(app: TestApp) {
        app.put_json("Patient/a", &json!({"resourceType": "Patient", "id": "a"})).await;
        app.put_json("Practitioner/p", &json!({"resourceType": "Practitioner", "id": "p"})).await;
        let patients_only = app.client_with("system/Patient.rs", None);
        // Whole-system search: only granted types, and naming another type is 403.
        let res = patients_only.get(app.url("")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        let bundle = json(res).await;
        assert!(entries(&bundle).iter().all(|e| e["resource"]["resourceType"] == "Patient"));
        assert_eq!(patients_only.get(app.url("?_type=Practitioner")).send().await.unwrap().status(), 403);
        let history = json(patients_only.get(app.url("_history")).send().await.unwrap()).await;
        assert!(entries(&history).iter().all(|e| e["request"]["url"].as_str().unwrap().starts_with("Patient")));
        assert_eq!(app.client_with("system/Patient.c", None).get(app.url("_history")).send().await.unwrap().status(), 403);

        // A transaction with one entry the token may not do is refused whole; a batch answers that entry alone.
        let writer = app.client_with("system/Patient.cu", None);
        let entries = json!([
            {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Practitioner"}, "request": {"method": "POST", "url": "Practitioner"}},
        ]);
        let before = app.version_count().await;
        let tx = writer.post(app.url("")).header("Content-Type", FHIR_JSON)
            .body(json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}).to_string()).send().await.unwrap();
        let outcome = assert_outcome(tx, 403, "forbidden").await;
        assert!(outcome["issue"][0]["diagnostics"].as_str().unwrap().contains("entry 1"), "{outcome}");
        assert_eq!(app.version_count().await, before);
        let batch = json(writer.post(app.url("")).header("Content-Type", FHIR_JSON)
            .body(json!({"resourceType": "Bundle", "type": "batch", "entry": entries}).to_string()).send().await.unwrap()).await;
        assert_eq!(batch["entry"][0]["response"]["status"], "201 Created");
        assert_eq!(batch["entry"][1]["response"]["status"], "403 Forbidden");
        // An update that would create needs create as well.
        let updater = app.client_with("system/Patient.ru", None);
        let res = updater.put(app.url("Patient/new-one")).header("Content-Type", FHIR_JSON)
            .body(json!({"resourceType": "Patient", "id": "new-one"}).to_string()).send().await.unwrap();
        assert_outcome(res, 403, "forbidden").await;
        let res = updater.put(app.url("Patient/a")).header("Content-Type", FHIR_JSON)
            .body(json!({"resourceType": "Patient", "id": "a", "active": true}).to_string()).send().await.unwrap();
        assert_eq!(res.status(), 200);

        // Reports over many patients need more than a patient/ scope.
        let group = json!({"resourceType": "Group", "id": "g", "type": "person", "actual": true, "member": [{"entity": {"reference": "Patient/a"}}]});
        app.put_json("Group/g", &group).await;
        let patient_token = app.client_with("patient/*.cruds", Some("a"));
        assert_eq!(patient_token.get(app.url("Group/g/$attendance")).send().await.unwrap().status(), 403);
        assert_eq!(patient_token.get(app.url("Practitioner/p/$caseload")).send().await.unwrap().status(), 403);
        let book = json!({"resourceType": "Parameters", "parameter": [
            {"name": "start", "valueDateTime": "2026-12-01T18:00:00Z"}, {"name": "end", "valueDateTime": "2026-12-01T19:00:00Z"},
            {"name": "practitioner", "valueReference": {"reference": "Practitioner/p"}}]});
        let res = patient_token.post(app.url("Group/g/$book-session")).header("Content-Type", FHIR_JSON).body(book.to_string()).send().await.unwrap();
        assert_eq!(res.status(), 403);
        let res = app.client_with("system/Group.r", None).get(app.url("Group/g/$attendance")).send().await.unwrap();
        assert_eq!(res.status(), 403, "attendance also reads Appointments");
        // A patient/ scope without the patient claim grants nothing.
        let res = app.client_with("patient/*.rs", None).get(app.url("Patient/a")).send().await.unwrap();
        let outcome = assert_outcome(res, 403, "forbidden").await;
        assert!(outcome["issue"][0]["diagnostics"].as_str().unwrap().contains("patient"));
    }

    async fn a_patient_token_sees_only_its_own_compartment(app: TestApp) {
        for (id, family) in [("ann", "Okafor"), ("ben", "Nakamura")] {
            app.put_json(&format!("Patient/{id}"), &json!({"resourceType": "Patient", "id": id, "name": [{"family": family}]})).await;
        }
        app.put_json("Practitioner/moss", &json!({"resourceType": "Practitioner", "id": "moss", "name": [{"family": "Moss"}]})).await;
        let session = |id: &str, start: &str, patients: &[&str]| {
            let mut participants = vec![json!({"actor": {"reference": "Practitioner/moss"}, "status": "accepted"})];
            participants.extend(patients.iter().map(|p| json!({"actor": {"reference": format!("Patient/{p}")}, "status": "accepted"})));
            json!({"resourceType": "Appointment", "id": id, "status": "booked", "start": format!("2026-12-0{start}T10:00:00Z"),
                   "end": format!("2026-12-0{start}T11:00:00Z"), "participant": participants})
        };
        for (id, day, who) in [("ann-1", "1", vec!["ann"]), ("ben-1", "2", vec!["ben"]), ("both", "3", vec!["ann", "ben"])] {
            assert_eq!(app.put_json(&format!("Appointment/{id}"), &session(id, day, &who)).await.status(), 201);
        }
        app.put_json("CareTeam/ben-team", &json!({"resourceType": "CareTeam", "id": "ben-team", "status": "active", "subject": {"reference": "Patient/ben"}})).await;
        app.put_json("Group/ben-group", &json!({"resourceType": "Group", "id": "ben-group", "type": "person", "actual": true, "member": [{"entity": {"reference": "Patient/ben"}}]})).await;

        let ann = app.client_with("patient/*.rs", Some("ann"));
        let status = |path: &str| { let c = ann.clone(); let url = app.url(path); async move { c.get(url).send().await.unwrap().status().as_u16() } };
        // Reads: hers are 200; anyone else's are 404, as if they did not exist.
        assert_eq!(status("Patient/ann").await, 200);
        assert_eq!(status("Appointment/ann-1").await, 200);
        assert_eq!(status("Appointment/both").await, 200);
        for path in ["Patient/ben", "Appointment/ben-1", "Appointment/ben-1/_history/1", "Appointment/ben-1/_history", "CareTeam/ben-team", "Group/ben-group", "Patient/ben/$everything"] {
            assert_eq!(status(path).await, 404, "{path}");
        }
        // Practitioners hold no one's record: a patient token may read them.
        assert_eq!(status("Practitioner/moss").await, 200);

        let ids = |bundle: &Value| -> Vec<String> {
            let mut v: Vec<String> = entries(bundle).iter()
                .filter(|e| e["resource"]["resourceType"] != "OperationOutcome")
                .map(|e| format!("{}/{}", e["resource"]["resourceType"].as_str().unwrap(), e["resource"]["id"].as_str().unwrap()))
                .collect();
            v.sort();
            v
        };
        let search = |q: &str| { let c = ann.clone(); let url = app.url(q); async move { let r = c.get(url).send().await.unwrap(); assert_eq!(r.status(), 200); json(r).await } };
        // Searches are narrowed to her compartment.
        assert_eq!(ids(&search("Appointment").await), ["Appointment/ann-1", "Appointment/both"]);
        assert_eq!(search("Appointment").await["total"], 2);
        assert_eq!(ids(&search("Patient").await), ["Patient/ann"]);
        assert_eq!(ids(&search("CareTeam").await), Vec::<String>::new());
        assert_eq!(ids(&search("?_type=Patient,Appointment,Group").await), ["Appointment/ann-1", "Appointment/both", "Patient/ann"]);
        assert_eq!(search("Appointment?_summary=count").await["total"], 2);
        // _include does not bring in the other member of a shared session; the therapist may come.
        let included = ids(&search("Appointment?_id=both&_include=Appointment:actor").await);
        assert_eq!(included, ["Appointment/both", "Patient/ann", "Practitioner/moss"]);
        // _revinclude from the therapist does not bring in Ben's sessions.
        assert_eq!(ids(&search("Practitioner?_revinclude=Appointment:actor").await), ["Appointment/ann-1", "Appointment/both", "Practitioner/moss"]);
        // Chains see only what she may see: Ben's name does not find their shared session.
        assert_eq!(ids(&search("Appointment?actor:Patient.family=Nakamura").await), Vec::<String>::new());
        assert_eq!(ids(&search("Appointment?actor:Patient.family=Okafor").await), ["Appointment/ann-1", "Appointment/both"]);
        assert_eq!(ids(&search("Practitioner?_has:Appointment:actor:_id=ben-1").await), Vec::<String>::new());
        assert_eq!(ids(&search("Patient?_has:Appointment:actor:_id=both").await), ["Patient/ann"]);
        // History shows only versions in her compartment.
        let history = search("Appointment/_history").await;
        assert!(entries(&history).iter().all(|e| !e["fullUrl"].as_str().unwrap().ends_with("ben-1")), "{history}");
        // $everything: hers only.
        let everything = ids(&search("Patient/ann/$everything").await);
        assert_eq!(everything, ["Appointment/ann-1", "Appointment/both", "Patient/ann"]);

        // Writes: inside her compartment only.
        let ann_writer = app.client_with("patient/*.cruds", Some("ann"));
        let write = |method: reqwest::Method, path: &str, body: Option<Value>| {
            let mut r = ann_writer.request(method, app.url(path));
            if let Some(b) = body { r = r.header("Content-Type", FHIR_JSON).body(b.to_string()); }
            async move { r.send().await.unwrap().status().as_u16() }
        };
        assert_eq!(write(reqwest::Method::POST, "Appointment", Some(session("x", "4", &["ben"]))).await, 403);
        assert_eq!(write(reqwest::Method::PUT, "Appointment/ben-1", Some(session("ben-1", "2", &["ben", "ann"]))).await, 403);
        assert_eq!(write(reqwest::Method::PUT, "Appointment/ann-1", Some(session("ann-1", "1", &["ben"]))).await, 403, "moving her session out of her compartment");
        // A DELETE of what she may not see answers as one of what does not exist (and deletes nothing).
        assert_eq!(write(reqwest::Method::DELETE, "Appointment/ben-1", None).await, 204);
        assert_eq!(write(reqwest::Method::PUT, "Practitioner/moss", Some(json!({"resourceType": "Practitioner", "id": "moss"}))).await, 403);
        let consent = json!({"resourceType": "Consent", "status": "active", "patient": {"reference": "Patient/ann"},
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]}, "category": [{"text": "agreement"}],
            "policyRule": {"text": "group confidentiality rules"}});
        assert_eq!(write(reqwest::Method::POST, "Consent", Some(consent)).await, 201);
        assert_eq!(app.get("Appointment/ben-1").await.status(), 200, "Ben's session is untouched");
        // A transaction that reads another patient's record fails whole.
        let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "GET", "url": "Appointment/ben-1"}}]});
        let res = ann_writer.post(app.url("")).header("Content-Type", FHIR_JSON).body(tx.to_string()).send().await.unwrap();
        assert_eq!(res.status(), 404);
    }
}
