//! Search semantics (search.html) on a small clinic: modifiers, prefixes, chains, _has, includes,
//! sorting, result parameters and handling.

use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;

/// Ids of the matches of a search, in order.
async fn matches(app: &TestApp, path_and_query: &str) -> Vec<String> {
    let res = app.get(path_and_query).await;
    assert_eq!(res.status(), 200, "{path_and_query}");
    let bundle: Value = res.json().await.unwrap();
    assert_eq!(bundle["type"], "searchset");
    mode_ids(&bundle, "match")
}

fn mode_ids(bundle: &Value, mode: &str) -> Vec<String> {
    bundle["entry"].as_array().map_or(vec![], |e| {
        e.iter()
            .filter(|e| e["search"]["mode"] == mode)
            .map(|e| {
                format!(
                    "{}/{}",
                    e["resource"]["resourceType"].as_str().unwrap(),
                    e["resource"]["id"].as_str().unwrap()
                )
            })
            .collect()
    })
}

async fn put(app: &TestApp, body: Value) {
    let path = format!(
        "{}/{}",
        body["resourceType"].as_str().unwrap(),
        body["id"].as_str().unwrap()
    );
    let res = app.put_json(&path, &body).await;
    assert!(res.status().is_success(), "{path}: {}", res.text().await.unwrap());
}

/// Two therapists, three clients, a support group with its care team and sessions.
async fn clinic(app: &TestApp) {
    put(
        app,
        json!({"resourceType": "Organization", "id": "clinic", "name": "Harbour Counselling"}),
    )
    .await;
    put(app, json!({"resourceType": "Location", "id": "room-1", "name": "Room One", "managingOrganization": {"reference": "Organization/clinic"}})).await;
    put(app, json!({"resourceType": "Practitioner", "id": "moss", "name": [{"family": "Moss", "given": ["Dana"]}], "active": true})).await;
    put(app, json!({"resourceType": "Practitioner", "id": "ngata", "name": [{"family": "Ngata", "given": ["Hemi"]}], "active": false})).await;
    put(app, json!({"resourceType": "Patient", "id": "ann", "active": true, "gender": "female", "birthDate": "1980-05-17",
        "name": [{"family": "Ökafor", "given": ["Ann"]}], "managingOrganization": {"reference": "Organization/clinic"},
        "identifier": [{"system": "urn:mrn", "value": "A-1", "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}}],
        "generalPractitioner": [{"reference": "Practitioner/moss"}]})).await;
    put(
        app,
        json!({"resourceType": "Patient", "id": "bob", "active": true, "gender": "male", "birthDate": "1990-01-02",
        "name": [{"family": "Brandt", "given": ["Bob"]}], "identifier": [{"system": "urn:mrn", "value": "B-2"}],
        "generalPractitioner": [{"reference": "Practitioner/ngata"}]}),
    )
    .await;
    put(
        app,
        json!({"resourceType": "Patient", "id": "cy", "gender": "other", "birthDate": "2001",
        "name": [{"family": "Okafor-Smith", "given": ["Cy"]}]}),
    )
    .await;
    put(
        app,
        json!({"resourceType": "Group", "id": "grief", "type": "person", "actual": true, "name": "Grief support",
        "managingEntity": {"reference": "Practitioner/moss"},
        "member": [{"entity": {"reference": "Patient/ann"}}, {"entity": {"reference": "Patient/bob"}}]}),
    )
    .await;
    put(app, json!({"resourceType": "CareTeam", "id": "grief-team", "status": "active", "subject": {"reference": "Group/grief"},
        "participant": [{"member": {"reference": "Practitioner/moss"}}]})).await;
    let session = |id: &str, start: &str, end: &str, status: &str, patient: &str, practitioner: &str| {
        json!({
        "resourceType": "Appointment", "id": id, "status": status, "start": start, "end": end,
        "participant": [
            {"actor": {"reference": format!("Patient/{patient}")}, "status": "accepted"},
            {"actor": {"reference": format!("Practitioner/{practitioner}")}, "status": "accepted"},
            {"actor": {"reference": "Location/room-1"}, "status": "accepted"}
        ]})
    };
    put(
        app,
        session(
            "s1",
            "2026-11-02T10:00:00Z",
            "2026-11-02T10:50:00Z",
            "fulfilled",
            "ann",
            "moss",
        ),
    )
    .await;
    put(
        app,
        session(
            "s2",
            "2026-11-23T10:00:00Z",
            "2026-11-23T10:50:00Z",
            "booked",
            "ann",
            "moss",
        ),
    )
    .await;
    put(
        app,
        session(
            "s3",
            "2026-12-01T09:00:00Z",
            "2026-12-01T09:50:00Z",
            "booked",
            "bob",
            "ngata",
        ),
    )
    .await;
}

both_backends! {
    async fn string_search_is_case_and_accent_insensitive_prefix_with_exact_and_contains(app: TestApp) {
        clinic(&app).await;
        assert_eq!(matches(&app, "Patient?family=okafor").await, ["Patient/ann", "Patient/cy"]);
        assert_eq!(matches(&app, "Patient?family=OKA").await, ["Patient/ann", "Patient/cy"]);
        assert_eq!(matches(&app, "Patient?family:exact=Ökafor").await, ["Patient/ann"]);
        assert!(matches(&app, "Patient?family:exact=okafor").await.is_empty());
        assert_eq!(matches(&app, "Patient?family:contains=smi").await, ["Patient/cy"]);
        assert_eq!(matches(&app, "Patient?name=bob").await, ["Patient/bob"]);
        // Several values are OR; repeating the parameter is AND.
        assert_eq!(matches(&app, "Patient?family=brandt,okafor-s").await, ["Patient/bob", "Patient/cy"]);
        assert_eq!(matches(&app, "Patient?family=okafor&given=cy").await, ["Patient/cy"]);
        // % and _ are literal characters, not wildcards.
        assert!(matches(&app, "Patient?family=%25").await.is_empty());
    }

    async fn token_search_forms_and_modifiers(app: TestApp) {
        clinic(&app).await;
        assert_eq!(matches(&app, "Patient?gender=male").await, ["Patient/bob"]);
        assert_eq!(matches(&app, "Patient?identifier=urn:mrn|A-1").await, ["Patient/ann"]);
        assert_eq!(matches(&app, "Patient?identifier=urn:mrn|").await, ["Patient/ann", "Patient/bob"]);
        assert!(matches(&app, "Patient?identifier=|A-1").await.is_empty(), "A-1 has a system");
        assert_eq!(matches(&app, "Patient?gender=%7Cmale").await, ["Patient/bob"], "gender codes carry no system");
        assert_eq!(matches(&app, "Patient?identifier=B-2").await, ["Patient/bob"]);
        assert_eq!(matches(&app, "Patient?gender:not=male").await, ["Patient/ann", "Patient/cy"]);
        assert_eq!(matches(&app, "Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|A-1").await, ["Patient/ann"]);
        assert_eq!(matches(&app, "Patient?active=true").await, ["Patient/ann", "Patient/bob"]);
        assert_eq!(matches(&app, "Practitioner?active=false").await, ["Practitioner/ngata"]);
        assert_eq!(matches(&app, "Appointment?status=booked,fulfilled&_sort=_id").await, ["Appointment/s1", "Appointment/s2", "Appointment/s3"]);
    }

    async fn composite_components_must_come_from_the_same_characteristic(app: TestApp) {
        let c = |code: &str, value: Value| json!({"code": {"coding": [{"system": "urn:char", "code": code}]}, "exclude": false, "valueCodeableConcept": value});
        put(&app, json!({"resourceType": "Group", "id": "g1", "type": "person", "actual": true, "characteristic": [
            c("focus", json!({"coding": [{"system": "urn:focus", "code": "grief"}]})),
            c("age", json!({"coding": [{"system": "urn:age", "code": "adult"}]}))]})).await;
        put(&app, json!({"resourceType": "Group", "id": "g2", "type": "person", "actual": true, "characteristic": [
            c("focus", json!({"coding": [{"system": "urn:focus", "code": "anxiety"}]})),
            c("age", json!({"coding": [{"system": "urn:age", "code": "grief"}]}))]})).await;
        assert_eq!(matches(&app, "Group?characteristic-value=focus$grief").await, ["Group/g1"]);
        assert_eq!(matches(&app, "Group?characteristic-value=urn:char|focus$urn:focus|grief").await, ["Group/g1"]);
        assert_eq!(matches(&app, "Group?characteristic-value=focus$anxiety,age$adult&_sort=_id").await, ["Group/g1", "Group/g2"]);
        // g2 has focus and has grief, but not on one characteristic.
        assert!(matches(&app, "Group?characteristic-value=age$anxiety").await.is_empty());
        assert_eq!(matches(&app, "Group?characteristic=focus&value=grief&_sort=_id").await, ["Group/g1", "Group/g2"]);
        assert_outcome(app.get("Group?characteristic-value=focus").await, 400, "invalid").await;
    }

    async fn token_text_and_uri_modifiers(app: TestApp) {
        put(&app, json!({"resourceType": "CareTeam", "id": "t1", "status": "active",
            "category": [{"text": "Grief support team", "coding": [{"system": "urn:cat", "code": "g"}]}],
            "meta": {"profile": ["https://tandem.example.org/fhir/StructureDefinition/group-team"]}})).await;
        put(&app, json!({"resourceType": "CareTeam", "id": "t2", "status": "active", "category": [{"text": "Individual therapy"}]})).await;
        assert_eq!(matches(&app, "CareTeam?category:text=grief").await, ["CareTeam/t1"]);
        assert_eq!(matches(&app, "CareTeam?category:text=THERAPY").await, ["CareTeam/t2"]);
        assert_eq!(matches(&app, "CareTeam?_profile=https://tandem.example.org/fhir/StructureDefinition/group-team").await, ["CareTeam/t1"]);
        assert_eq!(matches(&app, "CareTeam?_profile:below=https://tandem.example.org/fhir/").await, ["CareTeam/t1"]);
        assert!(matches(&app, "CareTeam?_profile:below=https://other.example.org/").await.is_empty());
        assert_eq!(matches(&app, "CareTeam?_profile:above=https://tandem.example.org/fhir/StructureDefinition/group-team/v2").await, ["CareTeam/t1"]);
        assert!(matches(&app, "CareTeam?_profile=https://tandem.example.org/fhir/").await.is_empty());
    }

    async fn near_finds_locations_within_a_great_circle_distance(app: TestApp) {
        let at = |id: &str, lat: f64, lon: f64| json!({"resourceType": "Location", "id": id, "position": {"latitude": lat, "longitude": lon}});
        put(&app, at("akl", -36.8485, 174.7633)).await; // Auckland
        put(&app, at("wlg", -41.2865, 174.7762)).await; // Wellington, about 493 km south
        put(&app, at("suva", -18.1416, 178.4419)).await; // Suva, across the dateline side of the sea
        assert_eq!(matches(&app, "Location?near=-36.85|174.76|10|km").await, ["Location/akl"]);
        assert_eq!(matches(&app, "Location?near=-36.85|174.76|480|km").await, ["Location/akl"]);
        assert_eq!(matches(&app, "Location?near=-36.85|174.76|500|km&_sort=_id").await, ["Location/akl", "Location/wlg"]);
        assert_eq!(matches(&app, "Location?near=-36.85|174.76|320|[mi_i]&_sort=_id").await, ["Location/akl", "Location/wlg"]);
        assert_eq!(matches(&app, "Location?near=-36.85|174.76|5000|m").await, ["Location/akl"]);
        assert_eq!(matches(&app, "Location?near=-36.85|174.76").await, ["Location/akl"], "default distance");
        assert_outcome(app.get("Location?near=north").await, 400, "invalid").await;
        assert_outcome(app.get("Location?near=95|0|1|km").await, 400, "invalid").await;
        assert_outcome(app.get("Location?near=0|0|1|parsec").await, 400, "invalid").await;
    }

    async fn missing_finds_resources_with_and_without_a_value(app: TestApp) {
        clinic(&app).await;
        assert_eq!(matches(&app, "Patient?active:missing=true").await, ["Patient/cy"]);
        assert_eq!(matches(&app, "Patient?active:missing=false").await, ["Patient/ann", "Patient/bob"]);
        assert_eq!(matches(&app, "Patient?general-practitioner:missing=true").await, ["Patient/cy"]);
        assert_eq!(matches(&app, "Patient?birthdate:missing=false&_sort=_id").await, ["Patient/ann", "Patient/bob", "Patient/cy"]);
    }

    async fn date_prefixes_compare_implicit_ranges(app: TestApp) {
        clinic(&app).await;
        // cy's birthDate is the whole year 2001.
        assert_eq!(matches(&app, "Patient?birthdate=2001").await, ["Patient/cy"]);
        assert!(matches(&app, "Patient?birthdate=2001-06-01").await.is_empty(), "2001 is not within a day");
        assert_eq!(matches(&app, "Patient?birthdate=1980-05").await, ["Patient/ann"]);
        assert_eq!(matches(&app, "Patient?birthdate=eq1980-05-17").await, ["Patient/ann"]);
        assert_eq!(matches(&app, "Patient?birthdate=ne1980-05-17&_sort=_id").await, ["Patient/bob", "Patient/cy"]);
        assert_eq!(matches(&app, "Patient?birthdate=lt1990&_sort=_id").await, ["Patient/ann"]);
        assert_eq!(matches(&app, "Patient?birthdate=le1990-01-02&_sort=_id").await, ["Patient/ann", "Patient/bob"]);
        assert_eq!(matches(&app, "Patient?birthdate=gt1990-01-02").await, ["Patient/cy"]);
        assert_eq!(matches(&app, "Patient?birthdate=ge1990-01-02&_sort=_id").await, ["Patient/bob", "Patient/cy"]);
        assert_eq!(matches(&app, "Patient?birthdate=sa1990-01-01").await, ["Patient/bob", "Patient/cy"]);
        assert_eq!(matches(&app, "Patient?birthdate=eb1990-01-01").await, ["Patient/ann"]);
        assert_eq!(matches(&app, "Patient?birthdate=ap1980-05-18").await, ["Patient/ann"]);
        // Ranges: sessions on one day, and in a window.
        assert_eq!(matches(&app, "Appointment?date=2026-11-23").await, ["Appointment/s2"]);
        assert_eq!(matches(&app, "Appointment?date=ge2026-11-10&date=lt2026-12-31&_sort=date").await, ["Appointment/s2", "Appointment/s3"]);
        assert_eq!(matches(&app, "Appointment?date=2026-11-23T10:00:00Z").await, ["Appointment/s2"]);
        assert_eq!(matches(&app, "Patient?_lastUpdated=gt2000-01-01&_sort=_id").await.len(), 3);
        assert!(matches(&app, "Patient?_lastUpdated=lt2000-01-01").await.is_empty());
    }

    async fn reference_forms_and_modifiers(app: TestApp) {
        clinic(&app).await;
        assert_eq!(matches(&app, "Appointment?patient=Patient/ann&_sort=_id").await, ["Appointment/s1", "Appointment/s2"]);
        assert_eq!(matches(&app, "Appointment?patient=ann&_sort=_id").await, ["Appointment/s1", "Appointment/s2"]);
        assert_eq!(matches(&app, "Appointment?actor:Practitioner=ngata").await, ["Appointment/s3"]);
        assert!(matches(&app, "Appointment?actor:Patient=ngata").await.is_empty());
        assert_eq!(matches(&app, "Appointment?location=Location/room-1&_sort=_id").await.len(), 3);
        assert_eq!(matches(&app, "CareTeam?subject=Group/grief").await, ["CareTeam/grief-team"]);
        assert_eq!(matches(&app, "Group?member=Patient/bob").await, ["Group/grief"]);
        put(&app, json!({"resourceType": "CareTeam", "id": "remote", "status": "active",
            "subject": {"reference": "https://ehr.example.org/fhir/Patient/7", "identifier": {"system": "urn:ehr", "value": "7"}}})).await;
        assert_eq!(matches(&app, "CareTeam?subject=https://ehr.example.org/fhir/Patient/7").await, ["CareTeam/remote"]);
        assert_eq!(matches(&app, "CareTeam?subject:identifier=urn:ehr|7").await, ["CareTeam/remote"]);
    }

    async fn chains_and_reverse_chains(app: TestApp) {
        clinic(&app).await;
        assert_eq!(matches(&app, "Appointment?patient.identifier=urn:mrn|B-2").await, ["Appointment/s3"]);
        assert_eq!(matches(&app, "Appointment?actor:Practitioner.name=moss&_sort=_id").await, ["Appointment/s1", "Appointment/s2"]);
        assert_eq!(matches(&app, "Appointment?patient.family=okafor&_sort=_id").await, ["Appointment/s1", "Appointment/s2"]);
        assert_eq!(matches(&app, "Patient?organization.name=harbour").await, ["Patient/ann"]);
        assert_eq!(matches(&app, "Patient?_has:Appointment:patient:status=booked&_sort=_id").await, ["Patient/ann", "Patient/bob"]);
        assert_eq!(matches(&app, "Patient?_has:Appointment:patient:date=2026-12-01").await, ["Patient/bob"]);
        assert_eq!(matches(&app, "Practitioner?_has:Group:managing-entity:type=person").await, ["Practitioner/moss"]);
        assert!(matches(&app, "Patient?_has:Appointment:patient:status=cancelled").await.is_empty());
        assert_outcome(app.get("Appointment?status.name=x").await, 400, "invalid").await;
        assert_outcome(app.get("Patient?_has:Spaceship:patient:status=x").await, 400, "invalid").await;
    }

    async fn include_and_revinclude_with_iterate(app: TestApp) {
        clinic(&app).await;
        let bundle = json(app.get("Appointment?_id=s3&_include=Appointment:patient&_include=Appointment:actor:Practitioner").await).await;
        assert_eq!(mode_ids(&bundle, "match"), ["Appointment/s3"]);
        let mut included = mode_ids(&bundle, "include");
        included.sort();
        assert_eq!(included, ["Patient/bob", "Practitioner/ngata"]);
        assert_eq!(bundle["total"], 1, "included resources do not count");

        let all = json(app.get("Appointment?_id=s3&_include=*").await).await;
        let mut included = mode_ids(&all, "include");
        included.sort();
        assert_eq!(included, ["Location/room-1", "Patient/bob", "Practitioner/ngata"]);

        let rev = json(app.get("Patient?_id=ann&_revinclude=Appointment:patient").await).await;
        let mut included = mode_ids(&rev, "include");
        included.sort();
        assert_eq!(included, ["Appointment/s1", "Appointment/s2"]);

        // Without :iterate the practitioner of the included sessions is not reached; with it, it is.
        let once = json(app.get("Patient?_id=ann&_revinclude=Appointment:patient&_include=Appointment:practitioner").await).await;
        assert!(!mode_ids(&once, "include").contains(&"Practitioner/moss".to_string()));
        let iterated = json(app.get("Patient?_id=ann&_revinclude=Appointment:patient&_include:iterate=Appointment:practitioner").await).await;
        assert!(mode_ids(&iterated, "include").contains(&"Practitioner/moss".to_string()));
        // Each resource appears once.
        let ids = mode_ids(&iterated, "include");
        let mut unique = ids.clone();
        unique.dedup();
        assert_eq!(ids.len(), unique.len());
    }

    async fn sort_by_parameters_ids_and_last_updated(app: TestApp) {
        clinic(&app).await;
        assert_eq!(matches(&app, "Patient?_sort=birthdate").await, ["Patient/ann", "Patient/bob", "Patient/cy"]);
        assert_eq!(matches(&app, "Patient?_sort=-birthdate").await, ["Patient/cy", "Patient/bob", "Patient/ann"]);
        assert_eq!(matches(&app, "Patient?_sort=family").await, ["Patient/bob", "Patient/ann", "Patient/cy"]);
        assert_eq!(matches(&app, "Patient?_sort=-_id").await, ["Patient/cy", "Patient/bob", "Patient/ann"]);
        assert_eq!(matches(&app, "Patient?_sort=active,-_id").await, ["Patient/bob", "Patient/ann", "Patient/cy"], "no value sorts last");
        assert_eq!(matches(&app, "Appointment?_sort=-date").await, ["Appointment/s3", "Appointment/s2", "Appointment/s1"]);
        assert_eq!(matches(&app, "Patient?_sort=-_lastUpdated").await, ["Patient/cy", "Patient/bob", "Patient/ann"]);
        assert_outcome(app.get("Patient?_sort=colour").await, 400, "invalid").await;
    }

    async fn result_parameters_shape_the_bundle(app: TestApp) {
        clinic(&app).await;
        let count = json(app.get("Patient?_summary=count").await).await;
        assert_eq!(count["total"], 3);
        assert!(count.get("entry").is_none());
        let none = json(app.get("Patient?_total=none").await).await;
        assert!(none.get("total").is_none());
        let elements = json(app.get("Patient?_id=ann&_elements=gender").await).await;
        let r = &elements["entry"][0]["resource"];
        assert_eq!(r["gender"], "female");
        assert!(r.get("name").is_none() && r.get("birthDate").is_none());
        assert_eq!(r["id"], "ann");
        assert!(r["meta"]["tag"].as_array().unwrap().iter().any(|t| t["code"] == "SUBSETTED"));
        let data = json(app.get("Appointment?_id=s1&_summary=data").await).await;
        assert!(data["entry"][0]["resource"].get("text").is_none());
        assert!(data["entry"][0]["resource"].get("participant").is_some());
        let summary = json(app.get("Patient?_id=ann&_summary=true").await).await;
        let r = &summary["entry"][0]["resource"];
        assert_eq!(r["name"][0]["family"], "Ökafor");
        assert_eq!(r["birthDate"], "1980-05-17");
        assert!(r.get("generalPractitioner").is_none(), "not a summary element in R4");
        assert!(r["meta"]["tag"].as_array().unwrap().iter().any(|t| t["code"] == "SUBSETTED"));
        assert_outcome(app.get("Patient?_summary=maybe").await, 400, "invalid").await;
        assert_outcome(app.get("Patient?_count=-1").await, 400, "invalid").await;
    }

    async fn post_search_and_system_search(app: TestApp) {
        clinic(&app).await;
        let res = app.client.post(app.url("Patient/_search")).header("Content-Type", "application/x-www-form-urlencoded")
            .body("family=okafor&_sort=_id").send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(mode_ids(&res.json().await.unwrap(), "match"), ["Patient/ann", "Patient/cy"]);
        let res = app.client.post(app.url("Patient/_search")).header("Content-Type", FHIR_JSON).body("{}").send().await.unwrap();
        assert_outcome(res, 415, "not-supported").await;

        let system = matches(&app, "?_type=Patient,Practitioner&_sort=_id").await;
        assert_eq!(system, ["Patient/ann", "Patient/bob", "Patient/cy", "Practitioner/moss", "Practitioner/ngata"]);
        assert_eq!(matches(&app, "?_id=moss").await, ["Practitioner/moss"]);
        assert_outcome(app.get("?_type=Spaceship").await, 404, "not-supported").await;
    }

    async fn unknown_parameters_are_reported_or_refused(app: TestApp) {
        clinic(&app).await;
        let lenient = json(app.get("Patient?colour=blue&gender=male").await).await;
        assert_eq!(mode_ids(&lenient, "match"), ["Patient/bob"]);
        let outcome = lenient["entry"].as_array().unwrap().iter().find(|e| e["search"]["mode"] == "outcome").unwrap();
        assert!(outcome["resource"]["issue"][0]["diagnostics"].as_str().unwrap().contains("colour"));
        let self_link = lenient["link"][0]["url"].as_str().unwrap();
        assert!(self_link.contains("gender=male") && !self_link.contains("colour"), "{self_link}");

        let strict = app.client.get(app.url("Patient?colour=blue")).header("Prefer", "handling=strict").send().await.unwrap();
        let body = assert_outcome(strict, 400, "invalid").await;
        assert!(body["issue"][0]["diagnostics"].as_str().unwrap().contains("colour"));
        // A malformed value names its parameter.
        let body = assert_outcome(app.get("Appointment?date=gt2026-13-45").await, 400, "invalid").await;
        assert!(body["issue"][0]["diagnostics"].as_str().unwrap().contains("date"));
        assert_outcome(app.get("Patient?family:below=x").await, 400, "invalid").await;
    }

    async fn deleted_resources_are_not_found(app: TestApp) {
        clinic(&app).await;
        app.client.delete(app.url("Patient/cy")).send().await.unwrap();
        assert_eq!(matches(&app, "Patient?family=okafor").await, ["Patient/ann"]);
        assert!(matches(&app, "Patient?_id=cy").await.is_empty());
    }

    async fn search_results_render_as_xml(app: TestApp) {
        clinic(&app).await;
        let res = app.get("Patient?_id=ann&_format=xml").await;
        assert_eq!(res.status(), 200);
        let text = res.text().await.unwrap();
        assert!(text.contains("<Bundle xmlns=\"http://hl7.org/fhir\">") && text.contains("<type value=\"searchset\"/>"), "{text}");
        assert!(text.contains("<mode value=\"match\"/>"));
    }
}

both_backends! {
    async fn a_reference_and_a_date_find_short_long_and_open_ranges_and_follow_updates(app: TestApp) {
        // The reference rows carry their resource's date, and a search by both reads one window of
        // them: every answer here must equal what the date and reference criteria say separately.
        clinic(&app).await;
        let at = |id: &str, start: &str, practitioner: &str| {
            json!({"resourceType": "Appointment", "id": id, "status": "booked", "start": start, "end": start,
                "participant": [{"actor": {"reference": format!("Practitioner/{practitioner}")}, "status": "accepted"}]})
        };
        put(&app, at("before", "2026-03-01T23:59:59Z", "moss")).await;
        put(&app, at("first", "2026-03-02T00:00:00Z", "moss")).await;
        put(&app, at("last", "2026-03-08T23:59:59Z", "moss")).await;
        put(&app, at("after", "2026-03-09T00:00:00Z", "moss")).await;
        put(&app, at("other", "2026-03-04T10:00:00Z", "ngata")).await;
        put(&app, json!({"resourceType": "Appointment", "id": "unplaced", "status": "proposed",
            "participant": [{"actor": {"reference": "Practitioner/moss"}, "status": "needs-action"}]})).await;
        let week = "date=ge2026-03-02T00:00:00Z&date=lt2026-03-09T00:00:00Z";
        assert_eq!(matches(&app, &format!("Appointment?actor=Practitioner/moss&{week}&_sort=date")).await, ["Appointment/first", "Appointment/last"]);
        // The same with a bare id, which no window serves, and with a type modifier, which one does.
        assert_eq!(matches(&app, &format!("Appointment?actor=moss&{week}&_sort=date")).await, ["Appointment/first", "Appointment/last"]);
        assert_eq!(matches(&app, &format!("Appointment?actor:Practitioner=moss&{week}&_sort=date")).await, ["Appointment/first", "Appointment/last"]);
        assert_eq!(
            matches(&app, &format!("Appointment?actor=Practitioner/moss,Practitioner/ngata&{week}&_sort=date")).await,
            ["Appointment/first", "Appointment/other", "Appointment/last"]
        );
        assert_eq!(matches(&app, "Appointment?practitioner=Practitioner/moss&date=eb2026-03-02").await, ["Appointment/before"]);
        // (s1 and s2, moss's sessions of the clinic, are in November.)
        assert_eq!(
            matches(&app, "Appointment?practitioner=Practitioner/moss&date=sa2026-03-08&_sort=date").await,
            ["Appointment/after", "Appointment/s1", "Appointment/s2"]
        );
        assert_eq!(matches(&app, "Appointment?actor=Practitioner/moss&date=2026-03-08").await, ["Appointment/last"]);
        // Alternatives: two days bound the window by the first and the last; le or ge alone leave it
        // open on one side each, so no window (the plan without one answers the same).
        assert_eq!(
            matches(&app, "Appointment?actor=Practitioner/moss&date=2026-03-08,2026-03-01&_sort=date").await,
            ["Appointment/before", "Appointment/last"]
        );
        assert_eq!(
            matches(&app, "Appointment?actor=Practitioner/moss&date=le2026-03-01T23:59:59Z,ge2026-03-09&_sort=date").await,
            ["Appointment/before", "Appointment/after", "Appointment/s1", "Appointment/s2"]
        );
        // No date, no match by date; still a match by actor.
        assert_eq!(matches(&app, "Appointment?actor=Practitioner/moss&status=proposed").await, ["Appointment/unplaced"]);
        let unplaced = "SELECT COUNT(*) AS n FROM idx_reference WHERE res_type = 'Appointment' AND res_id = 'unplaced'";
        assert!(app.count(unplaced) > 0);
        assert_eq!(app.count(&format!("{unplaced} AND date_low IS NOT NULL")), 0);

        // A rescheduled session moves in the window with its next write.
        put(&app, at("first", "2026-03-10T09:00:00Z", "moss")).await;
        put(&app, at("after", "2026-03-03T09:00:00Z", "moss")).await;
        assert_eq!(matches(&app, &format!("Appointment?actor=Practitioner/moss&{week}&_sort=date")).await, ["Appointment/after", "Appointment/last"]);
        app.client.delete(app.url("Appointment/last")).send().await.unwrap();
        assert_eq!(matches(&app, &format!("Appointment?actor=Practitioner/moss&{week}")).await, ["Appointment/after"]);

        // Care teams are placed by their period: open, a month (long) or a day (short).
        let team = |id: &str, period: Value, practitioner: &str| {
            json!({"resourceType": "CareTeam", "id": id, "status": "active", "period": period,
                "participant": [{"member": {"reference": format!("Practitioner/{practitioner}")}}]})
        };
        put(&app, team("open", json!({"start": "2020-01-01"}), "moss")).await;
        put(&app, team("open-before", json!({"end": "2026-03-01"}), "moss")).await;
        put(&app, team("march", json!({"start": "2026-03", "end": "2026-03"}), "moss")).await;
        put(&app, team("day", json!({"start": "2026-03-05", "end": "2026-03-05"}), "moss")).await;
        put(&app, team("ended", json!({"start": "2019-01-01", "end": "2025-12-31"}), "moss")).await;
        put(&app, team("elsewhere", json!({"start": "2020-01-01"}), "ngata")).await;
        // Ends before it starts: R4's per-1 forbids it, and the server refuses it (422).
        let inverted = team("inverted", json!({"start": "2026-03-10", "end": "2026-03-01"}), "moss");
        let outcome = assert_outcome(app.put_json("CareTeam/inverted", &inverted).await, 422, "invariant").await;
        assert_eq!(outcome["issue"][0]["expression"][0], "CareTeam.period", "{outcome}");
        assert_eq!(
            matches(&app, &format!("CareTeam?participant=Practitioner/moss&{week}&_sort=_id")).await,
            ["CareTeam/day", "CareTeam/march", "CareTeam/open"]
        );
        assert_eq!(
            matches(&app, "CareTeam?participant=Practitioner/moss&date=eq2026-03&_sort=_id").await,
            ["CareTeam/day", "CareTeam/march"]
        );
        assert_eq!(
            matches(&app, "CareTeam?participant=Practitioner/moss&date=lt2026-01-01&_sort=_id").await,
            ["CareTeam/ended", "CareTeam/open", "CareTeam/open-before"]
        );
        assert_eq!(
            matches(&app, "CareTeam?participant=Practitioner/moss&date=ge2026-03-06&_sort=_id").await,
            ["CareTeam/march", "CareTeam/open"]
        );
        // The rows say which ranges are long: the open ones, the month and the years, not the day.
        assert_eq!(
            app.count("SELECT COUNT(*) AS n FROM idx_reference WHERE res_type = 'CareTeam' AND param = 'participant' AND target_id = 'moss' AND date_long = true"),
            4
        );
    }
}
