//! Measurement-based care (issue 25, DESIGN.md "Measures"): the PHQ-9 and GAD-7 the server
//! publishes, the score of a completed response as Observations in the same transaction, what a
//! bad response is refused with, who sees a measure, and `$outcomes`.
//!
//! The codes and scores below are typed from LOINC's forms (panel 44249-1 and 69737-5, answer list
//! LL358-3), not taken from the server's code, so that a wrong code there fails here.

use serde_json::{json, Value};

use crate::both_backends;
use crate::export::{kick_off, manifest, read_back};
use crate::helpers::*;
use crate::subscriptions::{spawn_allowing, Receiver};

const CANON: &str = "https://tandem.example.org/fhir";
const LOINC: &str = "http://loinc.org";

/// PHQ-9's nine items in order (LOINC 44249-1), GAD-7's seven (LOINC 69737-5).
const PHQ9_ITEMS: [&str; 9] = [
    "44250-9", "44255-8", "44259-0", "44254-1", "44251-7", "44258-2", "44252-5", "44253-3", "44260-8",
];
const GAD7_ITEMS: [&str; 7] = [
    "69725-0", "68509-9", "69733-4", "69734-2", "69735-9", "69689-8", "69736-7",
];
/// LL358-3: the answer with score 0, 1, 2, 3.
const ANSWERS: [&str; 4] = ["LA6568-5", "LA6569-3", "LA6570-1", "LA6571-9"];

fn url(measure: &str) -> String {
    format!("{CANON}/Questionnaire/{measure}")
}

fn items_of(measure: &str) -> &'static [&'static str] {
    if measure == "phq-9" {
        &PHQ9_ITEMS
    } else {
        &GAD7_ITEMS
    }
}

/// A completed response of Patient/`patient` to `measure` with these item scores.
fn response(measure: &str, patient: &str, authored: &str, scores: &[usize]) -> Value {
    let items: Vec<Value> = items_of(measure)
        .iter()
        .zip(scores)
        .map(|(link, s)| json!({"linkId": link, "answer": [{"valueCoding": {"system": LOINC, "code": ANSWERS[*s]}}]}))
        .collect();
    json!({"resourceType": "QuestionnaireResponse", "status": "completed", "questionnaire": url(measure),
           "subject": {"reference": format!("Patient/{patient}")}, "authored": authored,
           "source": {"reference": format!("Patient/{patient}")}, "item": items})
}

/// The Observations the server derived from QuestionnaireResponse/`id`, by LOINC code.
async fn derived(app: &TestApp, id: &str, code: &str) -> Vec<Value> {
    let bundle = json(
        app.get(&format!(
            "Observation?derived-from=QuestionnaireResponse/{id}&code={LOINC}|{code}"
        ))
        .await,
    )
    .await;
    entries(&bundle).into_iter().map(|e| e["resource"].clone()).collect()
}

async fn one(app: &TestApp, id: &str, code: &str) -> Value {
    let found = derived(app, id, code).await;
    assert_eq!(found.len(), 1, "one {code} Observation derived from {id}: {found:?}");
    found[0].clone()
}

fn total_code(measure: &str) -> &'static str {
    if measure == "phq-9" {
        "44261-6"
    } else {
        "70274-6"
    }
}

async fn clients(app: &TestApp) {
    for id in ["ann", "ben", "cai"] {
        let res = app
            .put_json(&format!("Patient/{id}"), &json!({"resourceType": "Patient", "id": id}))
            .await;
        assert!(res.status().is_success());
    }
    let res = app
        .put_json(
            "Practitioner/moss",
            &json!({"resourceType": "Practitioner", "id": "moss"}),
        )
        .await;
    assert!(res.status().is_success());
    let res = app
        .put_json(
            "Group/g1",
            &json!({"resourceType": "Group", "id": "g1", "type": "person", "actual": true}),
        )
        .await;
    assert!(res.status().is_success());
}

async fn status_of(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

both_backends! {
    async fn the_server_publishes_phq9_and_gad7_read_only(app: TestApp) {
        let phq = json(app.get("Questionnaire/phq-9").await).await;
        assert_eq!(phq["url"], url("phq-9"));
        assert_eq!(phq["status"], "active");
        assert_eq!(phq["code"][0], json!({"system": LOINC, "code": "44249-1", "display": "PHQ-9 quick depression assessment panel"}));
        let items = phq["item"].as_array().unwrap();
        let codes: Vec<&str> = items.iter().map(|i| i["code"][0]["code"].as_str().unwrap()).collect();
        let mut expected: Vec<&str> = PHQ9_ITEMS.to_vec();
        expected.extend(["44261-6", "69722-7"]);
        assert_eq!(codes, expected);
        // Each scored answer carries its score as R4's ordinalValue, on the answerOption.
        for item in &items[..9] {
            let options = item["answerOption"].as_array().unwrap();
            let pairs: Vec<(&str, f64)> = options.iter().map(|o| (
                o["valueCoding"]["code"].as_str().unwrap(),
                o["extension"][0]["valueDecimal"].as_f64().unwrap(),
            )).collect();
            assert_eq!(pairs, [("LA6568-5", 0.0), ("LA6569-3", 1.0), ("LA6570-1", 2.0), ("LA6571-9", 3.0)]);
            assert!(options.iter().all(|o| o["extension"][0]["url"] == "http://hl7.org/fhir/StructureDefinition/ordinalValue"));
        }
        assert_eq!(items[9]["type"], "integer", "the total");
        let difficulty: Vec<&str> = items[10]["answerOption"].as_array().unwrap().iter().map(|o| o["valueCoding"]["code"].as_str().unwrap()).collect();
        assert_eq!(difficulty, ["LA6572-7", "LA6573-5", "LA6575-0", "LA6574-3"]);
        let gad = json(app.get("Questionnaire/gad-7").await).await;
        assert_eq!(gad["code"][0]["code"], "69737-5");
        let codes: Vec<&str> = gad["item"].as_array().unwrap().iter().map(|i| i["code"][0]["code"].as_str().unwrap()).collect();
        let mut expected: Vec<&str> = GAD7_ITEMS.to_vec();
        expected.push("70274-6");
        assert_eq!(codes, expected);
        // Found by their item codes (R4 Questionnaire-code is Questionnaire.item.code) and URLs.
        let found = json(app.get(&format!("Questionnaire?code={LOINC}|69725-0")).await).await;
        assert_eq!(found["total"], 1);
        let found = json(app.get(&format!("Questionnaire?url={}", url("phq-9"))).await).await;
        assert_eq!(found["entry"][0]["resource"]["id"], "phq-9");
        // The band codes are served as a CodeSystem.
        let cs = json(app.get("CodeSystem/measure-severity").await).await;
        let bands: Vec<&str> = cs["concept"].as_array().unwrap().iter().map(|c| c["code"].as_str().unwrap()).collect();
        assert_eq!(bands, ["minimal", "mild", "moderate", "moderately-severe", "severe"]);

        // Read-only, for every client: no update, no delete, no second Questionnaire under our base.
        let before = app.version_count().await;
        let mut changed = phq.clone();
        changed["status"] = json!("retired");
        assert_outcome(app.put_json("Questionnaire/phq-9", &changed).await, 403, "forbidden").await;
        assert_outcome(app.client.delete(app.url("Questionnaire/gad-7")).send().await.unwrap(), 403, "forbidden").await;
        let mut copy = phq.clone();
        copy.as_object_mut().unwrap().remove("id");
        assert_outcome(app.post_json("Questionnaire", &copy).await, 403, "forbidden").await;
        let patch = app.client.patch(app.url("Questionnaire/phq-9")).header("Content-Type", "application/json-patch+json")
            .body(json!([{"op": "replace", "path": "/status", "value": "retired"}]).to_string()).send().await.unwrap();
        assert_outcome(patch, 403, "forbidden").await;
        assert_eq!(app.version_count().await, before);
        assert_eq!(json(app.get("Questionnaire/phq-9").await).await["meta"]["versionId"], "1");
    }

    async fn every_severity_band_boundary_scores_as_published(app: TestApp) {
        clients(&app).await;
        app.put_json("Encounter/visit-1", &json!({"resourceType": "Encounter", "id": "visit-1", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}, "subject": {"reference": "Patient/ann"}})).await;
        // (measure, item scores, total, band): each band's lowest and highest total.
        let table: [(&str, &[usize], u64, &str); 18] = [
            ("phq-9", &[0, 0, 0, 0, 0, 0, 0, 0, 0], 0, "minimal"),
            ("phq-9", &[1, 1, 1, 1, 0, 0, 0, 0, 0], 4, "minimal"),
            ("phq-9", &[1, 1, 1, 1, 1, 0, 0, 0, 0], 5, "mild"),
            ("phq-9", &[1, 1, 1, 1, 1, 1, 1, 1, 1], 9, "mild"),
            ("phq-9", &[2, 1, 1, 1, 1, 1, 1, 1, 1], 10, "moderate"),
            ("phq-9", &[2, 2, 2, 2, 2, 1, 1, 1, 1], 14, "moderate"),
            ("phq-9", &[2, 2, 2, 2, 2, 2, 1, 1, 1], 15, "moderately-severe"),
            ("phq-9", &[3, 3, 3, 2, 2, 2, 2, 2, 0], 19, "moderately-severe"),
            ("phq-9", &[3, 3, 3, 3, 2, 2, 2, 2, 0], 20, "severe"),
            ("phq-9", &[3, 3, 3, 3, 3, 3, 3, 3, 3], 27, "severe"),
            ("gad-7", &[0, 0, 0, 0, 0, 0, 0], 0, "minimal"),
            ("gad-7", &[1, 1, 1, 1, 0, 0, 0], 4, "minimal"),
            ("gad-7", &[1, 1, 1, 1, 1, 0, 0], 5, "mild"),
            ("gad-7", &[2, 2, 2, 1, 1, 1, 0], 9, "mild"),
            ("gad-7", &[2, 2, 2, 1, 1, 1, 1], 10, "moderate"),
            ("gad-7", &[2, 2, 2, 2, 2, 2, 2], 14, "moderate"),
            ("gad-7", &[3, 2, 2, 2, 2, 2, 2], 15, "severe"),
            ("gad-7", &[3, 3, 3, 3, 3, 3, 3], 21, "severe"),
        ];
        for (i, (measure, scores, total, band)) in table.iter().enumerate() {
            assert_eq!(scores.iter().sum::<usize>() as u64, *total, "the table adds up");
            let mut r = response(measure, "ann", &format!("2027-01-{:02}T09:00:00Z", i + 1), scores);
            r["encounter"] = json!({"reference": "Encounter/visit-1"});
            let created = app.create(&r).await;
            let id = created["id"].as_str().unwrap();
            let obs = one(&app, id, total_code(measure)).await;
            assert_eq!(obs["status"], "final");
            assert_eq!(obs["valueQuantity"]["value"].as_u64(), Some(*total), "{measure} {scores:?}");
            assert_eq!(obs["valueQuantity"]["unit"], "{score}");
            assert_eq!(obs["interpretation"][0]["coding"][0]["system"], format!("{CANON}/CodeSystem/measure-severity"));
            assert_eq!(obs["interpretation"][0]["coding"][0]["code"], *band, "{measure} total {total}");
            assert_eq!(obs["category"][0]["coding"][0], json!({"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "survey", "display": "Survey"}));
            assert_eq!(obs["code"]["coding"][0]["code"], total_code(measure));
            assert_eq!(obs["derivedFrom"], json!([{"reference": format!("QuestionnaireResponse/{id}")}]));
            assert_eq!(obs["subject"], json!({"reference": "Patient/ann"}));
            assert_eq!(obs["encounter"], json!({"reference": "Encounter/visit-1"}));
            assert_eq!(obs["effectiveDateTime"], r["authored"]);
            assert_eq!(obs["performer"], json!([{"reference": "Patient/ann"}]));
        }
        // The trend: a client's PHQ-9 totals by date, as an EHR asks for them.
        let trend = json(app.get("Observation?subject=Patient/ann&code=http://loinc.org|44261-6&_sort=date").await).await;
        let values: Vec<u64> = entries(&trend).iter().map(|e| e["resource"]["valueQuantity"]["value"].as_u64().unwrap()).collect();
        assert_eq!(values, [0, 4, 5, 9, 10, 14, 15, 19, 20, 27]);
    }

    async fn amendment_and_entered_in_error_follow_through(app: TestApp) {
        clients(&app).await;
        let created = app.create(&response("phq-9", "ben", "2027-02-01T09:00:00Z", &[1, 1, 1, 1, 1, 1, 1, 1, 2])).await;
        let id = created["id"].as_str().unwrap().to_string();
        let total = one(&app, &id, "44261-6").await;
        assert_eq!(total["valueQuantity"]["value"], 10);
        let flag = one(&app, &id, "44260-8").await;
        assert_eq!(flag["interpretation"][0]["coding"][0], json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "A", "display": "Abnormal"}));
        assert_eq!(flag["valueCodeableConcept"]["coding"][0]["code"], "LA6570-1");

        // Amended: the same Observations, a new version each, with what the answers now say.
        let mut amended = response("phq-9", "ben", "2027-02-01T09:00:00Z", &[1, 1, 1, 1, 1, 1, 1, 1, 0]);
        amended["id"] = json!(id);
        amended["status"] = json!("amended");
        assert_eq!(app.put_json(&format!("QuestionnaireResponse/{id}"), &amended).await.status(), 200);
        let total2 = one(&app, &id, "44261-6").await;
        assert_eq!(total2["id"], total["id"]);
        assert_eq!(total2["meta"]["versionId"], "2");
        assert_eq!(total2["status"], "amended");
        assert_eq!(total2["valueQuantity"]["value"], 8);
        assert_eq!(total2["interpretation"][0]["coding"][0]["code"], "mild");
        let flag2 = one(&app, &id, "44260-8").await;
        assert_eq!(flag2["id"], flag["id"], "the flag is lowered on the same Observation");
        assert_eq!(flag2["interpretation"][0]["coding"][0]["code"], "N");
        assert_eq!(flag2["valueCodeableConcept"]["coding"][0]["code"], "LA6568-5");

        // The same answers again: nothing new is written.
        let before = app.version_count().await;
        assert_eq!(app.put_json(&format!("QuestionnaireResponse/{id}"), &amended).await.status(), 200);
        assert_eq!(app.version_count().await, before + 1, "only the response's own version");
        assert_eq!(one(&app, &id, "44261-6").await["meta"]["versionId"], "2");

        // Entered in error: so are its Observations.
        amended["status"] = json!("entered-in-error");
        assert_eq!(app.put_json(&format!("QuestionnaireResponse/{id}"), &amended).await.status(), 200);
        let total3 = one(&app, &id, "44261-6").await;
        assert_eq!((total3["status"].as_str(), total3["meta"]["versionId"].as_str()), (Some("entered-in-error"), Some("3")));
        assert_eq!(one(&app, &id, "44260-8").await["status"], "entered-in-error");

        // Back to in progress: the score no longer stands (cancelled); completed again: amended.
        let other = app.create(&response("gad-7", "ben", "2027-02-02T09:00:00Z", &[2, 2, 2, 2, 2, 2, 2])).await;
        let oid = other["id"].as_str().unwrap().to_string();
        let mut reopened = other.clone();
        reopened["status"] = json!("in-progress");
        reopened["item"].as_array_mut().unwrap().truncate(3);
        assert_eq!(app.put_json(&format!("QuestionnaireResponse/{oid}"), &reopened).await.status(), 200);
        assert_eq!(one(&app, &oid, "70274-6").await["status"], "cancelled");
        let mut done = response("gad-7", "ben", "2027-02-02T09:00:00Z", &[1, 1, 1, 1, 1, 1, 1]);
        done["id"] = json!(oid);
        assert_eq!(app.put_json(&format!("QuestionnaireResponse/{oid}"), &done).await.status(), 200);
        let again = one(&app, &oid, "70274-6").await;
        assert_eq!((again["status"].as_str(), again["valueQuantity"]["value"].as_u64()), (Some("amended"), Some(7)));
        // Deleted: its Observations turn entered-in-error (they stay, as a record of what was said).
        assert_eq!(app.client.delete(app.url(&format!("QuestionnaireResponse/{oid}"))).send().await.unwrap().status(), 204);
        assert_eq!(one(&app, &oid, "70274-6").await["status"], "entered-in-error");
        // No item-9 Observation for a PHQ-9 whose item 9 was never above 0, and none for GAD-7.
        let calm = app.create(&response("phq-9", "ben", "2027-02-03T09:00:00Z", &[3, 3, 3, 3, 3, 3, 3, 3, 0])).await;
        assert!(derived(&app, calm["id"].as_str().unwrap(), "44260-8").await.is_empty());
        // Responses to other Questionnaires are stored as they are, with no score.
        let other = json!({"resourceType": "QuestionnaireResponse", "status": "completed", "questionnaire": "http://hl7.org/fhir/Questionnaire/3141",
            "subject": {"reference": "Patient/ben"}, "item": [{"linkId": "1", "answer": [{"valueString": "anything"}]}]});
        let stored = app.create(&other).await;
        let none = json(app.get(&format!("Observation?derived-from=QuestionnaireResponse/{}", stored["id"].as_str().unwrap())).await).await;
        assert_eq!(none["total"], 0);
    }

    async fn a_self_harm_answer_alerts_through_an_ordinary_subscription(app: TestApp) {
        let receiver = Receiver::start(vec![]).await;
        let app = spawn_allowing(app.backend, receiver.port, true).await;
        clients(&app).await;
        let sub = app.create(&json!({"resourceType": "Subscription", "status": "requested", "reason": "alert the therapist to a self-harm answer",
            "criteria": "Observation?code=http://loinc.org|44260-8",
            "channel": {"type": "rest-hook", "endpoint": format!("http://127.0.0.1:{}/alerts", receiver.port), "payload": "application/fhir+json"}})).await;
        assert_eq!(sub["status"], "active");
        // Item 9 at 0: no flag, no alert; then one at "several days".
        app.create(&response("phq-9", "ann", "2027-03-01T09:00:00Z", &[2, 2, 2, 2, 2, 2, 2, 2, 0])).await;
        let flagged = app.create(&response("phq-9", "cai", "2027-03-01T10:00:00Z", &[0, 0, 0, 0, 0, 0, 0, 0, 1])).await;
        let got = receiver.wait_for(1).await;
        let body: Value = serde_json::from_str(&got[0].body).unwrap();
        assert_eq!(body["resourceType"], "Observation");
        assert_eq!(body["subject"]["reference"], "Patient/cai");
        assert_eq!(body["interpretation"][0]["coding"][0]["code"], "A");
        assert_eq!(body["derivedFrom"][0]["reference"], format!("QuestionnaireResponse/{}", flagged["id"].as_str().unwrap()));
        assert_eq!(got[0].path, format!("/alerts/Observation/{}", body["id"].as_str().unwrap()));
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert_eq!(receiver.got().len(), 1, "Ann's response raised no alert");
    }

    async fn bad_responses_are_refused_and_nothing_is_written(app: TestApp) {
        clients(&app).await;
        app.create(&json!({"resourceType": "Questionnaire", "status": "retired", "url": "https://ehr.example.org/fhir/Questionnaire/old-intake", "version": "3"})).await;
        let good = response("phq-9", "ann", "2027-04-01T09:00:00Z", &[1; 9]);
        let with = |f: &dyn Fn(&mut Value)| { let mut r = good.clone(); f(&mut r); r };
        // (what, response, the linkId or element the refusal names)
        let cases: Vec<(&str, Value, &str)> = vec![
            ("an unknown version of ours", with(&|r| r["questionnaire"] = json!(format!("{}|2", url("phq-9")))), "questionnaire"),
            ("a Questionnaire we do not publish", with(&|r| r["questionnaire"] = json!(url("bdi-ii"))), "questionnaire"),
            ("a retired Questionnaire", with(&|r| r["questionnaire"] = json!("https://ehr.example.org/fhir/Questionnaire/old-intake")), "questionnaire"),
            ("an unknown version of a stored one", with(&|r| r["questionnaire"] = json!("https://ehr.example.org/fhir/Questionnaire/old-intake|9")), "questionnaire"),
            ("an answer outside the options", with(&|r| r["item"][2]["answer"][0]["valueCoding"]["code"] = json!("LA6572-7")), "44259-0"),
            ("an answer of another system", with(&|r| r["item"][3]["answer"][0]["valueCoding"]["system"] = json!("http://snomed.info/sct")), "44254-1"),
            ("a duplicated item", with(&|r| { let dup = r["item"][4].clone(); r["item"].as_array_mut().unwrap().push(dup); }), "44251-7"),
            ("two answers to one item", with(&|r| { let a = r["item"][5]["answer"][0].clone(); r["item"][5]["answer"].as_array_mut().unwrap().push(a); }), "44258-2"),
            ("an unanswered item", with(&|r| { r["item"].as_array_mut().unwrap().remove(6); }), "44252-5"),
            ("an item that is not the measure's", with(&|r| r["item"].as_array_mut().unwrap().push(json!({"linkId": "extra", "answer": [{"valueString": "x"}]}))), "extra"),
            ("a stated total that is not the sum", with(&|r| r["item"].as_array_mut().unwrap().push(json!({"linkId": "44261-6", "answer": [{"valueInteger": 12}]}))), "44261-6"),
            ("a Group as the subject", with(&|r| r["subject"] = json!({"reference": "Group/g1"})), "subject"),
            ("no subject", with(&|r| { r.as_object_mut().unwrap().remove("subject"); }), "subject"),
            ("no authored", with(&|r| { r.as_object_mut().unwrap().remove("authored"); }), "authored"),
            ("ours named by a version's URL", with(&|r| r["questionnaire"] = json!("Questionnaire/phq-9/_history/1")), "questionnaire"),
            ("items nested in an answer", with(&|r| r["item"][1]["answer"][0]["item"] = json!([{"linkId": "x", "answer": [{"valueString": "y"}]}])), "44255-8"),
        ];
        let before = app.version_count().await;
        for (what, body, names) in &cases {
            let (status, outcome) = status_of(app.post_json("QuestionnaireResponse", body).await).await;
            assert_eq!(status, 422, "{what}: {outcome}");
            let issue = &outcome["issue"][0];
            let (diagnostics, expression) = (issue["diagnostics"].as_str().unwrap(), issue["expression"][0].as_str().unwrap());
            if matches!(*names, "questionnaire" | "subject" | "authored") {
                assert_eq!(expression, format!("QuestionnaireResponse.{names}"), "{what}: {outcome}");
            } else {
                assert!(diagnostics.contains(&format!("'{names}'")), "{what}: {outcome}");
                assert_eq!(expression, format!("QuestionnaireResponse.item.where(linkId = '{names}')"), "{what}: {outcome}");
            }
            // The same on update and in a transaction.
            let mut put = body.clone();
            put["id"] = json!("bad-1");
            let (status, _) = status_of(app.put_json("QuestionnaireResponse/bad-1", &put).await).await;
            assert_eq!(status, 422, "{what} (PUT)");
            let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
                {"resource": body, "request": {"method": "POST", "url": "QuestionnaireResponse"}}]});
            let (status, _) = status_of(app.post_json("", &tx).await).await;
            assert_eq!(status, 422, "{what} (transaction)");
        }
        assert_eq!(app.version_count().await, before, "nothing refused was written");
        // In progress, a response may leave items out; its answers are still checked.
        let mut partial = with(&|r| { r["status"] = json!("in-progress"); r["item"].as_array_mut().unwrap().truncate(2); });
        assert_eq!(app.post_json("QuestionnaireResponse", &partial).await.status(), 201);
        partial["item"][0]["answer"][0]["valueCoding"]["code"] = json!("LA9999-9");
        assert_eq!(app.post_json("QuestionnaireResponse", &partial).await.status(), 422);
    }

    async fn the_score_observations_are_the_servers_own(app: TestApp) {
        clients(&app).await;
        let r = app.create(&response("gad-7", "ann", "2027-04-02T09:00:00Z", &[1; 7])).await;
        let rid = r["id"].as_str().unwrap().to_string();
        let obs = one(&app, &rid, "70274-6").await;
        let oid = obs["id"].as_str().unwrap().to_string();
        let before = app.version_count().await;
        // A client's own score for that response, an edit, a patch, a delete: 403.
        let forged = json!({"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": LOINC, "code": "70274-6"}]},
            "subject": {"reference": "Patient/ann"}, "valueQuantity": {"value": 0}, "derivedFrom": [{"reference": format!("QuestionnaireResponse/{rid}")}]});
        assert_outcome(app.post_json("Observation", &forged).await, 403, "forbidden").await;
        let ann = app.client_with("patient/*.cruds", Some("ann"));
        let res = ann.post(app.url("Observation")).header("Content-Type", FHIR_JSON).body(forged.to_string()).send().await.unwrap();
        assert_outcome(res, 403, "forbidden").await;
        let mut edited = obs.clone();
        edited["valueQuantity"]["value"] = json!(0);
        assert_outcome(app.put_json(&format!("Observation/{oid}"), &edited).await, 403, "forbidden").await;
        let mut stripped = obs.clone();
        stripped.as_object_mut().unwrap().remove("identifier");
        assert_outcome(app.put_json(&format!("Observation/{oid}"), &stripped).await, 403, "forbidden").await;
        let patch = app.client.patch(app.url(&format!("Observation/{oid}"))).header("Content-Type", "application/json-patch+json")
            .body(json!([{"op": "replace", "path": "/valueQuantity/value", "value": 1}]).to_string()).send().await.unwrap();
        assert_outcome(patch, 403, "forbidden").await;
        let res = ann.delete(app.url(&format!("Observation/{oid}"))).send().await.unwrap();
        assert_outcome(res, 403, "forbidden").await;
        let mut copy = obs.clone();
        copy.as_object_mut().unwrap().remove("id");
        assert_outcome(app.post_json("Observation", &copy).await, 403, "forbidden").await;
        assert_eq!(app.version_count().await, before);
        // A total the EHR records itself (a paper form, no response here) is its own to write, but
        // not a client's own app; and $outcomes counts only the scores the server derived.
        let paper = json!({"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": LOINC, "code": "70274-6"}]},
            "subject": {"reference": "Patient/ann"}, "effectiveDateTime": "2027-04-01", "valueQuantity": {"value": 0}});
        let res = ann.post(app.url("Observation")).header("Content-Type", FHIR_JSON).body(paper.to_string()).send().await.unwrap();
        assert_outcome(res, 403, "forbidden").await;
        assert_eq!(app.post_json("Observation", &paper).await.status(), 201);
        let report = json(app.get("Patient/ann/$outcomes?measure=gad-7").await).await;
        let scores: Vec<i64> = report["parameter"].as_array().unwrap().iter().filter(|p| p["name"] == "score").map(|p| int(p, "value").unwrap()).collect();
        assert_eq!(scores, [7], "the paper total is not counted");
        // In a Bundle, naming a response the writer may not see answers as naming none (no probe):
        // Ann's therapist, who is not Ben's, learns nothing of Ben's response by naming it.
        app.put_json("CareTeam/ann-team", &json!({"resourceType": "CareTeam", "id": "ann-team", "status": "active",
            "subject": {"reference": "Patient/ann"}, "participant": [{"member": {"reference": "Practitioner/moss"}}]})).await;
        let moss = bearer_client(&tandem::auth::token::mint(&app.config, "user/*.cruds", None, "moss", Some("Practitioner/moss".into()), 600).unwrap());
        let ben_r = app.create(&response("gad-7", "ben", "2027-04-02T09:00:00Z", &[0; 7])).await;
        let mut answers = Vec::new();
        for target in [ben_r["id"].as_str().unwrap(), "no-such-response"] {
            let mut o = forged.clone();
            o["derivedFrom"] = json!([{"reference": format!("QuestionnaireResponse/{target}")}]);
            let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                {"resource": {"resourceType": "QuestionnaireResponse", "status": "in-progress", "subject": {"reference": "Patient/ann"}}, "request": {"method": "POST", "url": "QuestionnaireResponse"}},
                {"resource": o, "request": {"method": "POST", "url": "Observation"}}]});
            let res = moss.post(app.url("")).header("Content-Type", FHIR_JSON).body(tx.to_string()).send().await.unwrap();
            let status = res.status().as_u16();
            let outcome = json(res).await;
            answers.push((status, outcome["issue"][0]["code"].clone()));
            assert_eq!(status, 422, "{target}: {outcome}");
        }
        assert_eq!(answers[0], answers[1]);
        // The same writer naming its own client's response is told the server owns the score.
        let mut o = forged.clone();
        o["derivedFrom"] = json!([{"reference": format!("QuestionnaireResponse/{rid}")}]);
        let res = moss.post(app.url("Observation")).header("Content-Type", FHIR_JSON).body(o.to_string()).send().await.unwrap();
        assert_outcome(res, 403, "forbidden").await;
        // The clinic's system token may erase one (a record removed on request).
        assert_eq!(app.client.delete(app.url(&format!("Observation/{oid}"))).send().await.unwrap().status(), 204);
    }

    async fn a_response_moved_or_recreated_gets_new_observations(app: TestApp) {
        clients(&app).await;
        let mut r = response("phq-9", "ann", "2027-04-03T09:00:00Z", &[1; 9]);
        r["id"] = json!("r-move");
        assert_eq!(app.put_json("QuestionnaireResponse/r-move", &r).await.status(), 201);
        let first = one(&app, "r-move", "44261-6").await;
        // Entered against the wrong client, and moved to the right one: Ann's score is retired,
        // Ben's is new (not Ann's Observation with another subject).
        r["subject"] = json!({"reference": "Patient/ben"});
        r["source"] = json!({"reference": "Patient/ben"});
        assert_eq!(app.put_json("QuestionnaireResponse/r-move", &r).await.status(), 200);
        let all = derived(&app, "r-move", "44261-6").await;
        assert_eq!(all.len(), 2);
        let old = all.iter().find(|o| o["id"] == first["id"]).unwrap();
        assert_eq!((old["status"].as_str(), old["subject"]["reference"].as_str()), (Some("entered-in-error"), Some("Patient/ann")));
        let new = all.iter().find(|o| o["id"] != first["id"]).unwrap();
        assert_eq!((new["status"].as_str(), new["subject"]["reference"].as_str()), (Some("final"), Some("Patient/ben")));
        // Deleted, then its id used again: new Observations; the retired ones stay retired.
        assert_eq!(app.client.delete(app.url("QuestionnaireResponse/r-move")).send().await.unwrap().status(), 204);
        assert_eq!(app.put_json("QuestionnaireResponse/r-move", &r).await.status(), 201);
        let all = derived(&app, "r-move", "44261-6").await;
        assert_eq!(all.len(), 3);
        assert_eq!(all.iter().filter(|o| o["status"] == "final").count(), 1);
        // A response one patient gave about another: the score is not put in the giver's compartment.
        let mut proxy = response("phq-9", "cai", "2027-04-04T09:00:00Z", &[1; 9]);
        proxy["source"] = json!({"reference": "Patient/ben"});
        let p = app.create(&proxy).await;
        let obs = one(&app, p["id"].as_str().unwrap(), "44261-6").await;
        assert!(obs.get("performer").is_none(), "{obs}");
        let ben = app.client_with("patient/*.rs", Some("ben"));
        let seen = json(ben.get(app.url(&format!("Observation?derived-from=QuestionnaireResponse/{}", p["id"].as_str().unwrap()))).send().await.unwrap()).await;
        assert_eq!(seen["total"], 0);
    }

    async fn measures_are_in_bulk_export(app: TestApp) {
        clients(&app).await;
        let ann = app.create(&response("phq-9", "ann", "2027-06-01T09:00:00Z", &[1; 9])).await;
        let ben = app.create(&response("gad-7", "ben", "2027-06-01T09:00:00Z", &[1; 7])).await;
        let group = json!({"resourceType": "Group", "id": "only-ann", "type": "person", "actual": true, "member": [{"entity": {"reference": "Patient/ann"}}]});
        assert!(app.put_json("Group/only-ann", &group).await.status().is_success());
        // The whole system: the measures' Questionnaires, every response and its Observations.
        let all = read_back(&app.client, &manifest(&app.client, &kick_off(&app, &app.client, "$export?_type=Questionnaire,QuestionnaireResponse,Observation").await).await).await;
        for want in [("Questionnaire", "phq-9"), ("Questionnaire", "gad-7")] {
            assert!(all.contains(&(want.0.to_string(), want.1.to_string())), "{want:?}");
        }
        let responses: Vec<&(String, String)> = all.iter().filter(|(t, _)| t == "QuestionnaireResponse").collect();
        assert_eq!(responses.len(), 2);
        assert_eq!(all.iter().filter(|(t, _)| t == "Observation").count(), 3, "Ann's total and item 9, Ben's total");
        // A group's export: only its members' measures.
        let of_group = read_back(&app.client, &manifest(&app.client, &kick_off(&app, &app.client, "Group/only-ann/$export?_type=QuestionnaireResponse,Observation").await).await).await;
        assert!(of_group.contains(&("QuestionnaireResponse".to_string(), ann["id"].as_str().unwrap().to_string())));
        assert!(!of_group.contains(&("QuestionnaireResponse".to_string(), ben["id"].as_str().unwrap().to_string())));
        assert_eq!(of_group.iter().filter(|(t, _)| t == "Observation").count(), 2);
    }

    async fn a_client_sees_their_own_measures_and_a_therapist_those_of_their_clients(app: TestApp) {
        clients(&app).await;
        app.put_json("CareTeam/ann-team", &json!({"resourceType": "CareTeam", "id": "ann-team", "status": "active",
            "subject": {"reference": "Patient/ann"}, "participant": [{"member": {"reference": "Practitioner/moss"}}]})).await;
        // Ann answers her own PHQ-9 from her app.
        let ann = app.client_with("patient/*.cruds", Some("ann"));
        let res = ann.post(app.url("QuestionnaireResponse")).header("Content-Type", FHIR_JSON)
            .body(response("phq-9", "ann", "2027-05-01T09:00:00Z", &[2; 9]).to_string()).send().await.unwrap();
        assert_eq!(res.status(), 201);
        let ann_response = json(res).await;
        let ben_response = app.create(&response("phq-9", "ben", "2027-05-01T10:00:00Z", &[3; 9])).await;
        let ben_obs = one(&app, ben_response["id"].as_str().unwrap(), "44261-6").await;
        // Not for someone else.
        let res = ann.post(app.url("QuestionnaireResponse")).header("Content-Type", FHIR_JSON)
            .body(response("phq-9", "ben", "2027-05-01T09:00:00Z", &[0; 9]).to_string()).send().await.unwrap();
        assert_eq!(res.status(), 403);

        let search = |client: reqwest::Client, q: String| { let u = app.url(&q); async move { json(client.get(u).send().await.unwrap()).await } };
        let mine = search(ann.clone(), format!("Observation?code={LOINC}|44261-6")).await;
        assert_eq!(mine["total"], 1, "{mine}");
        assert_eq!(mine["entry"][0]["resource"]["subject"]["reference"], "Patient/ann");
        assert_eq!(search(ann.clone(), "Observation?subject=Patient/ben".into()).await["total"], 0);
        assert_eq!(search(ann.clone(), "QuestionnaireResponse".into()).await["total"], 1);
        assert_eq!(search(ann.clone(), "Observation?_revinclude=Observation:derived-from&_include=Observation:derived-from".into()).await["entry"]
            .as_array().unwrap().iter().filter(|e| e["resource"]["subject"]["reference"] == "Patient/ben").count(), 0);
        let status = ann.get(app.url(&format!("Observation/{}", ben_obs["id"].as_str().unwrap()))).send().await.unwrap().status();
        assert_eq!(status, 404);
        let status = ann.get(app.url(&format!("QuestionnaireResponse/{}", ben_response["id"].as_str().unwrap()))).send().await.unwrap().status();
        assert_eq!(status, 404);
        // History: hers only, type-level and of Ben's records by id.
        for path in ["Observation/_history", "QuestionnaireResponse/_history"] {
            let history = search(ann.clone(), path.into()).await;
            assert!(!entries(&history).is_empty(), "{path}");
            assert!(entries(&history).iter().all(|e| e["resource"]["subject"]["reference"] == "Patient/ann"), "{path}: {history}");
        }
        let status = ann.get(app.url(&format!("Observation/{}/_history", ben_obs["id"].as_str().unwrap()))).send().await.unwrap().status();
        assert_eq!(status, 404);
        let everything = search(ann.clone(), "Patient/ann/$everything".into()).await;
        let types: Vec<String> = entries(&everything).iter().map(|e| e["resource"]["resourceType"].as_str().unwrap().to_string()).collect();
        assert!(types.iter().any(|t| t == "Observation") && types.iter().any(|t| t == "QuestionnaireResponse"), "{types:?}");
        assert!(entries(&everything).iter().all(|e| e["resource"]["subject"]["reference"] != "Patient/ben"));
        // Her therapist sees hers, not Ben's (who is not his client).
        let token = tandem::auth::token::mint(&app.config, "user/*.cruds", None, "moss", Some("Practitioner/moss".into()), 600).unwrap();
        let moss = bearer_client(&token);
        let seen = search(moss.clone(), format!("Observation?code={LOINC}|44261-6")).await;
        assert_eq!(seen["total"], 1, "{seen}");
        assert_eq!(seen["entry"][0]["resource"]["derivedFrom"][0]["reference"], format!("QuestionnaireResponse/{}", ann_response["id"].as_str().unwrap()));
        let status = moss.get(app.url(&format!("Observation/{}", ben_obs["id"].as_str().unwrap()))).send().await.unwrap().status();
        assert_eq!(status, 404);
        let history = search(moss.clone(), "Observation/_history".into()).await;
        assert!(entries(&history).iter().all(|e| e["resource"]["subject"]["reference"] == "Patient/ann"), "{history}");
        let included = search(moss.clone(), "QuestionnaireResponse?_revinclude=Observation:derived-from".into()).await;
        assert!(entries(&included).iter().all(|e| e["resource"]["subject"]["reference"] == "Patient/ann"), "{included}");
        // The published Questionnaires are for everyone to read.
        assert_eq!(ann.get(app.url("Questionnaire/phq-9")).send().await.unwrap().status(), 200);
    }
}

/// Item scores of a PHQ-9 (nine items) or GAD-7 (seven) that add up to `total`.
fn answers_for(measure: &str, total: usize) -> Vec<usize> {
    let n = items_of(measure).len();
    assert!(total <= 3 * n);
    (0..n).map(|i| (total.saturating_sub(3 * i)).min(3)).collect()
}

fn encounter(id: &str, subject: &str, start: &str, part_of: Option<&str>) -> Value {
    let mut e = json!({"resourceType": "Encounter", "id": id, "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": subject}, "period": {"start": start, "end": start.replace("T10:00", "T11:00")}});
    if let Some(p) = part_of {
        e["partOf"] = json!({"reference": format!("Encounter/{p}")});
    }
    e
}

/// One member of the outcomes scenario: PHQ-9 totals in the quarter (dated), group sessions of
/// the grief group, individual sessions.
struct Member {
    id: &'static str,
    scores: &'static [(&'static str, usize)],
    grief_sessions: usize,
    individual: usize,
}

const QUARTER: (&str, &str) = ("2027-01-01", "2027-04-01");

const MEMBERS: [Member; 6] = [
    Member {
        id: "m1",
        scores: &[("2027-01-05", 18), ("2027-02-10", 12), ("2027-03-20", 9)],
        grief_sessions: 3,
        individual: 2,
    },
    Member {
        id: "m2",
        scores: &[("2027-01-06", 14), ("2027-03-21", 11)],
        grief_sessions: 2,
        individual: 1,
    },
    Member {
        id: "m3",
        scores: &[("2027-01-07", 20), ("2027-03-22", 15)],
        grief_sessions: 3,
        individual: 0,
    },
    Member {
        id: "m4",
        scores: &[("2027-01-08", 10)],
        grief_sessions: 1,
        individual: 0,
    },
    Member {
        id: "m5",
        scores: &[("2027-01-09", 16), ("2027-03-23", 17)],
        grief_sessions: 2,
        individual: 0,
    },
    // On the roster, no group session in the quarter: in neither cohort.
    Member {
        id: "m7",
        scores: &[("2027-02-01", 8), ("2027-03-01", 2)],
        grief_sessions: 0,
        individual: 1,
    },
];

/// The scenario: the grief group's quarter, with what must not count (a member who left before it,
/// a score after it, a score entered in error, a GAD-7, a session of another group).
async fn outcomes_scenario(app: &TestApp) {
    let mut roster = Vec::new();
    for id in ["m1", "m2", "m3", "m4", "m5", "m6", "m7"] {
        assert!(app
            .put_json(&format!("Patient/{id}"), &json!({"resourceType": "Patient", "id": id}))
            .await
            .status()
            .is_success());
        let period = if id == "m6" {
            json!({"start": "2026-06-01", "end": "2026-12-01"})
        } else {
            json!({"start": "2026-11-01"})
        };
        roster.push(json!({"entity": {"reference": format!("Patient/{id}")}, "period": period}));
    }
    for (id, members) in [
        ("grief", roster),
        ("other", vec![json!({"entity": {"reference": "Patient/m1"}})]),
    ] {
        let g = json!({"resourceType": "Group", "id": id, "type": "person", "actual": true, "member": members});
        assert!(app.put_json(&format!("Group/{id}"), &g).await.status().is_success());
    }
    for s in 1..=3 {
        let e = encounter(
            &format!("grief-{s}"),
            "Group/grief",
            &format!("2027-0{s}-15T10:00:00Z"),
            None,
        );
        assert!(app
            .put_json(&format!("Encounter/grief-{s}"), &e)
            .await
            .status()
            .is_success());
    }
    let e = encounter("other-1", "Group/other", "2027-02-20T10:00:00Z", None);
    assert!(app.put_json("Encounter/other-1", &e).await.status().is_success());
    for m in &MEMBERS {
        for s in 1..=m.grief_sessions {
            let id = format!("{}-grief-{s}", m.id);
            let e = encounter(
                &id,
                &format!("Patient/{}", m.id),
                &format!("2027-0{s}-15T10:00:00Z"),
                Some(&format!("grief-{s}")),
            );
            assert!(app.put_json(&format!("Encounter/{id}"), &e).await.status().is_success());
        }
        for s in 1..=m.individual {
            let id = format!("{}-solo-{s}", m.id);
            let e = encounter(
                &id,
                &format!("Patient/{}", m.id),
                &format!("2027-0{s}-25T10:00:00Z"),
                None,
            );
            assert!(app.put_json(&format!("Encounter/{id}"), &e).await.status().is_success());
        }
        for (date, total) in m.scores {
            app.create(&response(
                "phq-9",
                m.id,
                &format!("{date}T09:00:00Z"),
                &answers_for("phq-9", *total),
            ))
            .await;
        }
    }
    // m1: a session of the other group, an individual session and a score after the quarter, a
    // score entered in error, and a GAD-7.
    let e = encounter("m1-other-1", "Patient/m1", "2027-02-20T10:00:00Z", Some("other-1"));
    assert!(app.put_json("Encounter/m1-other-1", &e).await.status().is_success());
    let e = encounter("m1-solo-late", "Patient/m1", "2027-04-02T10:00:00Z", None);
    assert!(app.put_json("Encounter/m1-solo-late", &e).await.status().is_success());
    app.create(&response(
        "phq-9",
        "m1",
        "2027-04-15T09:00:00Z",
        &answers_for("phq-9", 3),
    ))
    .await;
    let mut wrong = app
        .create(&response(
            "phq-9",
            "m1",
            "2027-03-25T09:00:00Z",
            &answers_for("phq-9", 27),
        ))
        .await;
    wrong["status"] = json!("entered-in-error");
    assert_eq!(
        app.put_json(
            &format!("QuestionnaireResponse/{}", wrong["id"].as_str().unwrap()),
            &wrong
        )
        .await
        .status(),
        200
    );
    app.create(&response(
        "gad-7",
        "m1",
        "2027-02-11T09:00:00Z",
        &answers_for("gad-7", 11),
    ))
    .await;
    // m6 left before the quarter; her score in it does not make her a member then.
    app.create(&response(
        "phq-9",
        "m6",
        "2027-01-10T09:00:00Z",
        &answers_for("phq-9", 25),
    ))
    .await;
}

fn part<'a>(p: &'a Value, name: &str) -> Option<&'a Value> {
    p["part"].as_array().unwrap().iter().find(|x| x["name"] == name)
}

fn int(p: &Value, name: &str) -> Option<i64> {
    part(p, name).and_then(|x| x["valueInteger"].as_i64())
}

both_backends! {
    async fn group_outcomes_compare_the_two_cohorts(app: TestApp) {
        outcomes_scenario(&app).await;
        let res = app.get(&format!("Group/grief/$outcomes?measure=phq-9&start={}&end={}", QUARTER.0, QUARTER.1)).await;
        assert_eq!(res.status(), 200);
        let report = json(res).await;
        assert_eq!(report["resourceType"], "Parameters");
        let params = report["parameter"].as_array().unwrap();
        let top = |name: &str| params.iter().find(|p| p["name"] == name).unwrap().clone();
        assert_eq!(top("measure")["valueCanonical"], url("phq-9"));
        assert_eq!(top("mcid")["valueInteger"], 5, "Löwe et al. 2004");
        let members: Vec<&Value> = params.iter().filter(|p| p["name"] == "member").collect();
        let ids: Vec<&str> = members.iter().map(|m| part(m, "patient").unwrap()["valueReference"]["reference"].as_str().unwrap()).collect();
        assert_eq!(ids, ["Patient/m1", "Patient/m2", "Patient/m3", "Patient/m4", "Patient/m5", "Patient/m7"], "m6 left before the quarter");
        // Each member's figures, from the scenario's own table.
        for (m, got) in MEMBERS.iter().zip(&members) {
            let first = m.scores.first().unwrap().1 as i64;
            let latest = m.scores.last().unwrap().1 as i64;
            assert_eq!(int(got, "scores"), Some(m.scores.len() as i64), "{}", m.id);
            assert_eq!(int(got, "firstScore"), Some(first), "{}", m.id);
            assert_eq!(int(got, "latestScore"), Some(latest), "{}", m.id);
            assert_eq!(part(got, "firstDate").unwrap()["valueDateTime"], format!("{}T09:00:00Z", m.scores[0].0));
            let change = (m.scores.len() >= 2).then_some(latest - first);
            assert_eq!(int(got, "change"), change, "{}", m.id);
            assert_eq!(part(got, "improved").and_then(|p| p["valueBoolean"].as_bool()), change.map(|c| c <= -5), "{}", m.id);
            assert_eq!(int(got, "groupSessions"), Some(m.grief_sessions as i64), "{}", m.id);
            assert_eq!(int(got, "individualSessions"), Some(m.individual as i64), "{}", m.id);
        }
        // The cohorts, computed here from the same table.
        let expect = |combined: bool| {
            let cohort: Vec<&Member> = MEMBERS.iter().filter(|m| m.grief_sessions > 0 && (m.individual > 0) == combined).collect();
            let changes: Vec<i64> = cohort.iter().filter(|m| m.scores.len() >= 2)
                .map(|m| m.scores.last().unwrap().1 as i64 - m.scores[0].1 as i64).collect();
            let improved = changes.iter().filter(|c| **c <= -5).count();
            (cohort.len(), changes.len(), changes.iter().sum::<i64>() as f64 / changes.len() as f64, improved, improved as f64 / changes.len() as f64)
        };
        let cohorts: Vec<&Value> = params.iter().filter(|p| p["name"] == "cohort").collect();
        assert_eq!(cohorts.len(), 2);
        for (cohort, (name, combined)) in cohorts.iter().zip([("individual-and-group", true), ("group-only", false)]) {
            assert_eq!(part(cohort, "name").unwrap()["valueCode"], name);
            let (members, measured, mean, improved, share) = expect(combined);
            assert_eq!(int(cohort, "members"), Some(members as i64), "{name}");
            assert_eq!(int(cohort, "measured"), Some(measured as i64), "{name}");
            assert_eq!(part(cohort, "meanChange").unwrap()["valueDecimal"].as_f64(), Some((mean * 100.0).round() / 100.0), "{name}");
            assert_eq!(int(cohort, "improved"), Some(improved as i64), "{name}");
            assert_eq!(part(cohort, "shareImproved").unwrap()["valueDecimal"].as_f64(), Some((share * 1000.0).round() / 1000.0), "{name}");
        }
        // The figures the scenario was built to give, so that the table itself is checked too.
        assert_eq!(expect(true), (2, 2, -6.0, 1, 0.5));
        assert_eq!(expect(false), (3, 2, -2.0, 1, 0.5));

        // GAD-7 of the same group: only m1 has one score.
        let gad = json(app.get(&format!("Group/grief/$outcomes?measure=gad-7&start={}&end={}", QUARTER.0, QUARTER.1)).await).await;
        let gad_members: Vec<Value> = gad["parameter"].as_array().unwrap().iter().filter(|p| p["name"] == "member").cloned().collect();
        assert_eq!(gad_members.iter().map(|m| int(m, "scores").unwrap()).collect::<Vec<_>>(), [1, 0, 0, 0, 0, 0]);

        // Bad requests.
        assert_outcome(app.get("Group/grief/$outcomes").await, 400, "invalid").await;
        assert_outcome(app.get("Group/grief/$outcomes?measure=bdi-ii").await, 400, "invalid").await;
        assert_outcome(app.get("Group/grief/$outcomes?measure=phq-9&start=soon").await, 400, "invalid").await;
        assert_outcome(app.get("Group/nope/$outcomes?measure=phq-9").await, 404, "not-found").await;
        assert_outcome(app.client.post(app.url("Group/grief/$outcomes?measure=phq-9")).send().await.unwrap(), 405, "not-supported").await;
        assert_outcome(app.get("Group/grief/$outcomes?measure=phq-9,gad-7").await, 400, "invalid").await;
        assert_eq!(app.client.delete(app.url("Group/other")).send().await.unwrap().status(), 204);
        assert_outcome(app.get("Group/other/$outcomes?measure=phq-9").await, 404, "not-found").await;

        // A large group: its members are asked for in chunks, within a search's limit.
        let mut entries = Vec::new();
        let mut roster = Vec::new();
        for i in 0..250 {
            let id = format!("big-{i}");
            entries.push(json!({"resource": {"resourceType": "Patient", "id": id}, "request": {"method": "PUT", "url": format!("Patient/{id}")}}));
            roster.push(json!({"entity": {"reference": format!("Patient/{id}")}}));
        }
        entries.push(json!({"resource": {"resourceType": "Group", "id": "big", "type": "person", "actual": true, "member": roster}, "request": {"method": "PUT", "url": "Group/big"}}));
        let res = app.post_json("", &json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})).await;
        assert_eq!(res.status(), 200);
        app.create(&response("phq-9", "big-249", "2027-02-01T09:00:00Z", &answers_for("phq-9", 12))).await;
        let big = json(app.get("Group/big/$outcomes?measure=phq-9").await).await;
        let members: Vec<&Value> = big["parameter"].as_array().unwrap().iter().filter(|p| p["name"] == "member").collect();
        assert_eq!(members.len(), 250);
        assert_eq!(int(members.iter().find(|m| part(m, "patient").unwrap()["valueReference"]["reference"] == "Patient/big-249").unwrap(), "scores"), Some(1));
    }

    async fn group_outcomes_need_every_members_record(app: TestApp) {
        outcomes_scenario(&app).await;
        let path = &format!("Group/grief/$outcomes?measure=phq-9&start={}&end={}", QUARTER.0, QUARTER.1);
        // A member's own app: refused (it would speak of the other members).
        let m1 = app.client_with("patient/*.rs", Some("m1"));
        assert_eq!(m1.get(app.url(path)).send().await.unwrap().status(), 403);
        // A therapist assigned to one member only: refused; the group's own therapist: allowed.
        for (team, subject, who) in [("t-solo", "Patient/m1", "lee"), ("t-group", "Group/grief", "moss")] {
            app.put_json(&format!("Practitioner/{who}"), &json!({"resourceType": "Practitioner", "id": who})).await;
            let t = json!({"resourceType": "CareTeam", "id": team, "status": "active", "subject": {"reference": subject},
                "participant": [{"member": {"reference": format!("Practitioner/{who}")}}]});
            assert!(app.put_json(&format!("CareTeam/{team}"), &t).await.status().is_success());
        }
        let therapist = |who: &str| bearer_client(&tandem::auth::token::mint(&app.config, "user/*.rs", None, who, Some(format!("Practitioner/{who}")), 600).unwrap());
        let res = therapist("lee").get(app.url(path)).send().await.unwrap();
        assert_outcome(res, 403, "forbidden").await;
        let res = therapist("moss").get(app.url(path)).send().await.unwrap();
        assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
        // The group's own therapist sees the same report as the clinic (its session Encounters,
        // which are in no patient's compartment, included).
        assert_eq!(json(res).await["parameter"], json(app.get(path).await).await["parameter"]);
        // Scopes: without Observation search, refused.
        assert_eq!(app.client_with("system/Group.r system/Encounter.s", None).get(app.url(path)).send().await.unwrap().status(), 403);
        // Over all time the roster also holds m6, who left before the therapist took the group on.
        let res = therapist("moss").get(app.url("Group/grief/$outcomes?measure=phq-9")).send().await.unwrap();
        assert_outcome(res, 403, "forbidden").await;
    }

    async fn patient_outcomes_show_one_clients_trend(app: TestApp) {
        outcomes_scenario(&app).await;
        let report = json(app.get(&format!("Patient/m1/$outcomes?start={}&end={}", QUARTER.0, QUARTER.1)).await).await;
        let params = report["parameter"].as_array().unwrap();
        let top = |name: &str| params.iter().find(|p| p["name"] == name).unwrap().clone();
        // Group sessions of any group (three of grief, one of the other), individual ones in the quarter.
        assert_eq!(top("groupSessions")["valueInteger"], 4);
        assert_eq!(top("individualSessions")["valueInteger"], 2);
        let outcomes: Vec<&Value> = params.iter().filter(|p| p["name"] == "outcome").collect();
        assert_eq!(outcomes.len(), 2, "PHQ-9 and GAD-7");
        assert_eq!(part(outcomes[0], "measure").unwrap()["valueCanonical"], url("phq-9"));
        assert_eq!((int(outcomes[0], "firstScore"), int(outcomes[0], "latestScore"), int(outcomes[0], "change")), (Some(18), Some(9), Some(-9)));
        assert_eq!(part(outcomes[0], "improved").unwrap()["valueBoolean"], true);
        assert_eq!(part(outcomes[0], "latestBand").unwrap()["valueCode"], "mild");
        assert_eq!(part(outcomes[1], "measure").unwrap()["valueCanonical"], url("gad-7"));
        assert_eq!(int(outcomes[1], "scores"), Some(1));
        assert!(part(outcomes[1], "change").is_none(), "one score has no change");
        // The trend, in time order, each with its band and Observation.
        let trend: Vec<(i64, String)> = params.iter().filter(|p| p["name"] == "score" && part(p, "measure").unwrap()["valueCanonical"] == url("phq-9"))
            .map(|p| (int(p, "value").unwrap(), part(p, "band").unwrap()["valueCode"].as_str().unwrap().to_string())).collect();
        assert_eq!(trend, [(18, "moderately-severe".to_string()), (12, "moderate".to_string()), (9, "mild".to_string())]);
        // Her own app sees hers; not another client's (404, as if there were none).
        let m1 = app.client_with("patient/*.rs", Some("m1"));
        assert_eq!(m1.get(app.url("Patient/m1/$outcomes?measure=phq-9")).send().await.unwrap().status(), 200);
        let res = m1.get(app.url("Patient/m2/$outcomes?measure=phq-9")).send().await.unwrap();
        assert_outcome(res, 404, "not-found").await;
        assert_outcome(app.get("Patient/m1/$outcomes?measure=nope").await, 400, "invalid").await;
    }
}
