//! Time reserved for groups (issue 26, DESIGN.md "Time reserved for groups"): a Slot marked
//! group-therapy on a practitioner's or room's Schedule keeps individual sessions out of that time,
//! on every write path and with two server processes racing; group sessions may use it.

use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;
use crate::scheduling::{appointment, clinic, put_ok};

const CANON: &str = "https://tandem.example.org/fhir";
const SUBJECT: &str = "http://hl7.org/fhir/5.0/StructureDefinition/extension-Appointment.subject";

fn schedule(id: &str, actor: &str) -> Value {
    json!({"resourceType": "Schedule", "id": id, "active": true, "actor": [{"reference": actor}]})
}

/// A Slot of `schedule` from `start` to `end`, marked for group therapy.
fn reserved(id: &str, schedule: &str, status: &str, start: &str, end: &str) -> Value {
    json!({"resourceType": "Slot", "id": id, "schedule": {"reference": format!("Schedule/{schedule}")}, "status": status,
           "serviceCategory": [{"coding": [{"system": format!("{CANON}/CodeSystem/slot-purpose"), "code": "group-therapy"}]}],
           "start": start, "end": end})
}

fn group_session(id: &str, start: &str, end: &str, actors: &[&str]) -> Value {
    let mut a = appointment(id, "booked", start, end, actors);
    a["extension"] = json!([{"url": SUBJECT, "valueReference": {"reference": "Group/grief"}}]);
    a
}

async fn refused(res: reqwest::Response, names: &str) {
    let outcome = assert_outcome(res, 409, "conflict").await;
    let text = outcome["issue"][0]["diagnostics"].as_str().unwrap().to_string();
    assert!(
        text.contains(names) && text.contains("reserved for group sessions"),
        "{text}"
    );
}

const TUE: (&str, &str) = ("2026-12-08T17:00:00Z", "2026-12-08T21:00:00Z");

both_backends! {
    async fn reserved_time_keeps_individual_sessions_out_on_every_write_path(app: TestApp) {
        clinic(&app).await;
        put_ok(&app, schedule("moss-cal", "Practitioner/moss")).await;
        put_ok(&app, schedule("room-cal", "Location/room-1")).await;
        put_ok(&app, reserved("moss-tue", "moss-cal", "busy-unavailable", TUE.0, TUE.1)).await;
        let before = app.version_count().await;
        let inside = appointment("ind-1", "booked", "2026-12-08T18:00:00Z", "2026-12-08T19:00:00Z", &["Practitioner/moss", "Patient/p1"]);
        // POST, PUT, PATCH (moving a session in) and a transaction: each 409 naming the Slot.
        refused(app.post_json("Appointment", &inside).await, "Slot/moss-tue").await;
        refused(app.put_json("Appointment/ind-1", &inside).await, "Slot/moss-tue").await;
        let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
            {"resource": inside, "request": {"method": "POST", "url": "Appointment"}}]});
        refused(app.post_json("", &tx).await, "Slot/moss-tue").await;
        assert_eq!(app.version_count().await, before, "nothing refused was written");
        // Back to back with the reserved time is free; moved into it by a PATCH, refused.
        put_ok(&app, appointment("ind-2", "booked", "2026-12-08T16:00:00Z", "2026-12-08T17:00:00Z", &["Practitioner/moss", "Patient/p2"])).await;
        let patch = app.client.patch(app.url("Appointment/ind-2")).header("Content-Type", "application/json-patch+json")
            .body(json!([{"op": "replace", "path": "/start", "value": "2026-12-08T16:30:00Z"},
                         {"op": "replace", "path": "/end", "value": "2026-12-08T17:30:00Z"}]).to_string()).send().await.unwrap();
        refused(patch, "Slot/moss-tue").await;
        // Another therapist is not held by moss's reservation.
        put_ok(&app, appointment("ind-3", "booked", "2026-12-08T18:00:00Z", "2026-12-08T19:00:00Z", &["Practitioner/ngata", "Patient/p3"])).await;
        // A group session inside it is booked; a second overlapping one is still a double booking.
        put_ok(&app, group_session("grp-1", "2026-12-08T18:00:00Z", "2026-12-08T19:30:00Z", &["Practitioner/moss", "Patient/p1", "Patient/p2"])).await;
        let res = app.put_json("Appointment/grp-2", &group_session("grp-2", "2026-12-08T19:00:00Z", "2026-12-08T20:00:00Z", &["Practitioner/moss", "Patient/p4"])).await;
        let outcome = assert_outcome(res, 409, "conflict").await;
        assert!(outcome["issue"][0]["diagnostics"].as_str().unwrap().contains("Appointment/grp-1"), "{outcome}");
        // $book-session uses it too.
        let book = json!({"resourceType": "Parameters", "parameter": [
            {"name": "start", "valueDateTime": "2026-12-08T19:30:00Z"}, {"name": "end", "valueDateTime": "2026-12-08T20:00:00Z"},
            {"name": "practitioner", "valueReference": {"reference": "Practitioner/moss"}}, {"name": "member", "valueReference": {"reference": "Patient/p3"}}]});
        assert_eq!(app.post_json("Group/grief/$book-session", &book).await.status(), 201);

        // A room's reservation holds the room.
        put_ok(&app, reserved("room-tue", "room-cal", "free", TUE.0, TUE.1)).await;
        let in_room = appointment("ind-4", "booked", "2026-12-08T20:00:00Z", "2026-12-08T20:50:00Z", &["Practitioner/ngata", "Patient/p4", "Location/room-1"]);
        refused(app.put_json("Appointment/ind-4", &in_room).await, "Slot/room-tue").await;
        // Not reserving: another status, or no group-therapy code.
        let mut busy = reserved("room-tue", "room-cal", "busy", TUE.0, TUE.1);
        put_ok(&app, busy.clone()).await;
        put_ok(&app, in_room.clone()).await;
        busy["status"] = json!("free");
        busy["serviceCategory"] = json!([{"text": "group therapy"}]);
        put_ok(&app, busy).await;
        // Reserving time that already holds an individual session: 409 naming it; it stands.
        let res = app.put_json("Slot/room-tue", &reserved("room-tue", "room-cal", "free", TUE.0, TUE.1)).await;
        let outcome = assert_outcome(res, 409, "conflict").await;
        assert!(outcome["issue"][0]["diagnostics"].as_str().unwrap().contains("Appointment/ind-4"), "{outcome}");
        assert_eq!(json(app.get("Appointment/ind-4").await).await["status"], "booked");

        // Changing the Slot frees what it held; the sessions booked stay as they are.
        put_ok(&app, reserved("moss-tue", "moss-cal", "busy-unavailable", "2026-12-08T19:00:00Z", TUE.1)).await;
        put_ok(&app, appointment("ind-5", "booked", "2026-12-08T17:00:00Z", "2026-12-08T17:50:00Z", &["Practitioner/moss", "Patient/p5"])).await;
        refused(app.put_json("Appointment/ind-6", &appointment("ind-6", "booked", "2026-12-08T20:00:00Z", "2026-12-08T20:50:00Z", &["Practitioner/moss", "Patient/p6"])).await, "Slot/moss-tue").await;
        // Deleting it frees the rest.
        assert_eq!(app.client.delete(app.url("Slot/moss-tue")).send().await.unwrap().status(), 204);
        put_ok(&app, appointment("ind-6", "booked", "2026-12-08T20:00:00Z", "2026-12-08T20:50:00Z", &["Practitioner/moss", "Patient/p6"])).await;
        assert_eq!(json(app.get("Appointment/grp-1").await).await["status"], "booked");

        // The Schedule decides whose time it is: moved to another practitioner, the time moves.
        put_ok(&app, schedule("cal-2", "Practitioner/moss")).await;
        put_ok(&app, reserved("wed", "cal-2", "busy-unavailable", "2026-12-09T17:00:00Z", "2026-12-09T21:00:00Z")).await;
        let wed = |id: &str, who: &str, p: &str| appointment(id, "booked", "2026-12-09T18:00:00Z", "2026-12-09T18:50:00Z", &[who, p]);
        refused(app.put_json("Appointment/w1", &wed("w1", "Practitioner/moss", "Patient/p1")).await, "Slot/wed").await;
        put_ok(&app, schedule("cal-2", "Practitioner/ngata")).await;
        put_ok(&app, wed("w1", "Practitioner/moss", "Patient/p1")).await;
        refused(app.put_json("Appointment/w2", &wed("w2", "Practitioner/ngata", "Patient/p2")).await, "Slot/wed").await;
        // The slot-purpose code is served like our other CodeSystems.
        let cs = json(app.get("CodeSystem/slot-purpose").await).await;
        assert_eq!(cs["concept"][0]["code"], "group-therapy");
    }

    async fn two_processes_never_book_an_individual_session_into_reserved_time(app: TestApp) {
        assert_eq!(app.put_json("Practitioner/moss", &json!({"resourceType": "Practitioner", "id": "moss"})).await.status(), 201);
        put_ok(&app, schedule("moss-cal", "Practitioner/moss")).await;
        let n = 24;
        for i in 0..n {
            assert_eq!(app.put_json(&format!("Patient/p{i}"), &json!({"resourceType": "Patient", "id": format!("p{i}")})).await.status(), 201);
        }
        let servers = [ServerProcess::start(&app.db, &[]).await, ServerProcess::start(&app.db, &[]).await];
        // Evening blocks, one per day, each reserved by one request while four clients race to book
        // an individual hour inside it, through either process.
        let days = 6;
        let mut requests = Vec::new();
        for d in 0..days {
            let day = format!("2026-12-{:02}", 14 + d);
            let slot = reserved(&format!("s{d}"), "moss-cal", "busy-unavailable", &format!("{day}T17:00:00Z"), &format!("{day}T21:00:00Z"));
            requests.push((format!("Slot/s{d}"), slot));
            for k in 0..4 {
                let i = d * 4 + k;
                let a = appointment(&format!("a{i}"), "booked", &format!("{day}T{}:00:00Z", 17 + k), &format!("{day}T{}:50:00Z", 17 + k),
                    &["Practitioner/moss", &format!("Patient/p{i}")]);
                requests.push((format!("Appointment/a{i}"), a));
            }
        }
        let sent = requests.into_iter().enumerate().map(|(j, (path, body))| {
            let url = format!("{}/{path}", servers[j % 2].address);
            let client = app.client.clone();
            async move {
                let res = client.put(url).header("Content-Type", FHIR_JSON).body(body.to_string()).send().await.unwrap();
                let status = res.status().as_u16();
                (path, status, res.json::<Value>().await.unwrap_or(Value::Null))
            }
        });
        let results = join_all(sent).await;
        for (path, status, body) in &results {
            assert!(*status == 201 || *status == 409, "{path}: {status} {body}");
        }
        // Afterwards, per day: the reservation stands and no individual session is in it, or it was
        // refused because a session was booked first.
        for d in 0..days {
            let slot_ok = results.iter().any(|(p, s, _)| *p == format!("Slot/s{d}") && *s == 201);
            let booked: Vec<&String> = results.iter()
                .filter(|(p, s, _)| p.starts_with("Appointment/") && *s == 201)
                .filter(|(p, _, _)| { let i: usize = p.trim_start_matches("Appointment/a").parse().unwrap(); i / 4 == d })
                .map(|(p, _, _)| p).collect();
            if slot_ok {
                assert!(booked.is_empty(), "day {d}: reserved, yet {booked:?} booked");
            } else {
                assert!(!booked.is_empty(), "day {d}: the reservation was refused with nothing in its way");
            }
            assert_eq!(app.get(&format!("Slot/s{d}")).await.status().as_u16(), if slot_ok { 200 } else { 404 });
        }
        drop(servers);
    }
}
