//! Values of any length FHIR allows store and search exactly, on both backends. PostgreSQL's btree
//! refuses an index entry over 2,704 bytes that does not compress, so index columns hold a bounded
//! key of a long value (its start and its digest) and keep the whole value beside it.

use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;

/// `n` letters that do not compress (a fixed pseudo-random sequence), starting with `seed`.
fn letters(seed: &str, n: usize) -> String {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ seed.len() as u64;
    let mut out = String::from(seed);
    while out.chars().count() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(char::from(b'a' + (x % 26) as u8));
    }
    out
}

async fn ids(app: &TestApp, query: &str) -> Vec<String> {
    let res = app.get(query).await;
    assert_eq!(res.status(), 200, "{}", &query[..query.len().min(200)]);
    let bundle = json(res).await;
    entries(&bundle)
        .iter()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| e["resource"]["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn q(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

both_backends! {
    async fn long_strings_store_and_search_exactly(app: TestApp) {
        // A family name of 3,000 letters (over the btree's limit), a given name of 100,000 (FHIR
        // allows up to 1 MB), with accents so that the normalised form differs from the text.
        let family = letters("Élan", 3000);
        let given = letters("Zoë", 100_000);
        let mut body = patient("placeholder");
        body["id"] = json!("long");
        body["name"] = json!([{"family": family, "given": [given]}]);
        let res = app.put_json("Patient/long", &body).await;
        assert_eq!(res.status(), 201, "{:?}", res.text().await);
        let mut short = patient("Elan");
        short["id"] = json!("short");
        assert_eq!(app.put_json("Patient/short", &short).await.status(), 201);

        let norm = family.replace('É', "e").to_lowercase();
        // A short prefix reads the keys alone; both patients start with "elan".
        let mut found = ids(&app, "Patient?family=elan&_sort=_id").await;
        found.sort();
        assert_eq!(found, ["long", "short"]);
        // A prefix longer than the keys keep (2,000 characters) is decided by the whole value.
        let long_prefix: String = norm.chars().take(2000).collect();
        assert_eq!(ids(&app, &format!("Patient?family={}", q(&long_prefix))).await, ["long"]);
        let wrong: String = format!("{}{}", &long_prefix[..1999], if long_prefix.ends_with('q') { "r" } else { "q" });
        assert!(ids(&app, &format!("Patient?family={}", q(&wrong))).await.is_empty(), "a prefix that differs after the key's part");
        // :contains finds a part past the key; :exact the whole value, and not a part of it.
        let middle: String = norm.chars().skip(2500).take(200).collect();
        assert_eq!(ids(&app, &format!("Patient?family:contains={}", q(&middle))).await, ["long"]);
        assert!(ids(&app, &format!("Patient?family:exact={}", q(&family[..family.len() - 1]))).await.is_empty());
        let given_part: String = given.chars().skip(90_000).take(100).collect::<String>().to_lowercase();
        assert_eq!(ids(&app, &format!("Patient?given:contains={}", q(&given_part))).await, ["long"]);
        assert_eq!(ids(&app, &format!("Patient?family:exact={}", q(&family[..4000.min(family.len())]))).await, ["long"]);
    }

    async fn long_tokens_references_and_uris_match_exactly(app: TestApp) {
        // Each over the 1,000 bytes an index column keeps, together within a search value's 4,096.
        let system = format!("urn:x:{}", letters("s", 1500));
        let value = letters("v", 2500);
        let profile = format!("https://profiles.example.org/{}", letters("p", 3000));
        let ehr_patient = format!("https://ehr.example.org/fhir/Patient/{}", letters("id", 3000));
        let mut body = patient("Token");
        body["id"] = json!("tok");
        body["identifier"] = json!([{"system": system, "value": value}]);
        body["meta"] = json!({"profile": [profile]});
        let res = app.put_json("Patient/tok", &body).await;
        assert_eq!(res.status(), 201, "{:?}", res.text().await);
        let team = json!({"resourceType": "CareTeam", "id": "t1", "status": "active",
            "subject": {"reference": ehr_patient}});
        let res = app.put_json("CareTeam/t1", &team).await;
        assert_eq!(res.status(), 201, "{:?}", res.text().await);
        // An Appointment whose participant is the same far patient: its booking row holds the key too.
        let session = json!({"resourceType": "Appointment", "status": "booked",
            "start": "2026-12-01T10:00:00Z", "end": "2026-12-01T11:00:00Z",
            "participant": [{"actor": {"reference": ehr_patient}, "status": "accepted"}]});
        let res = app.post_json("Appointment", &session).await;
        assert_eq!(res.status(), 201, "{:?}", res.text().await);
        let clash = app.post_json("Appointment", &session).await;
        assert_eq!(clash.status(), 409, "the far patient is one actor, however long the reference");

        assert_eq!(ids(&app, &format!("Patient?identifier={}|{}", q(&system), q(&value))).await, ["tok"]);
        assert_eq!(ids(&app, &format!("Patient?identifier={}", q(&value))).await, ["tok"]);
        let shorter = &value[..value.len() - 1];
        assert!(ids(&app, &format!("Patient?identifier={}|{}", q(&system), q(shorter))).await.is_empty(), "a token matches whole");
        assert_eq!(ids(&app, &format!("Patient?_profile={}", q(&profile))).await, ["tok"]);
        assert_eq!(ids(&app, &format!("Patient?_profile:below={}", q(&profile[..1500]))).await, ["tok"]);
        assert!(ids(&app, &format!("Patient?_profile={}", q(&profile[..1500]))).await.is_empty());
        assert_eq!(ids(&app, &format!("CareTeam?subject={}", q(&ehr_patient))).await, ["t1"]);
        let far_id = ehr_patient.rsplit('/').next().unwrap_or_default().to_string();
        assert_eq!(ids(&app, &format!("CareTeam?subject:Patient={}", q(&far_id))).await, ["t1"]);
    }

    async fn search_values_are_bounded_and_refused_clearly(app: TestApp) {
        assert_eq!(app.post_json("Patient", &patient("Okafor")).await.status(), 201);
        let at_limit = "a".repeat(4096);
        assert_eq!(app.get(&format!("Patient?family={at_limit}")).await.status(), 200);
        for value in ["a".repeat(4097), "%".repeat(10_000), "x".repeat(60_000)] {
            for param in ["family", "family:contains", "identifier", "_profile:below"] {
                let res = app.get(&format!("Patient?{param}={}", q(&value))).await;
                let outcome = assert_outcome(res, 400, "too-costly").await;
                let text = outcome.to_string();
                assert!(text.contains("4096"), "{text}");
            }
        }
        // Nothing about the refusal reached the trail's store as a failure: the server still answers.
        let found: Value = json(app.get("Patient?family=okafor").await).await;
        assert_eq!(entries(&found).len(), 1);
    }
}
