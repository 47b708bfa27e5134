//! R4 rest-hook Subscriptions: notifications of matching changes to a local receiver, retries, a
//! restart between the change and the delivery, and endpoints limited to allowed hosts.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;

/// What the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub body: String,
}

/// A local HTTP receiver that records every request and answers with the next of `answers`
/// (then 200).
pub struct Receiver {
    pub port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    handle: actix_web::dev::ServerHandle,
}

impl Receiver {
    /// A receiver on `listener`: a port held from the moment it was chosen, so that no other test's
    /// server can take it in between (a port freed and bound again later raced them).
    async fn start_on(listener: std::net::TcpListener, answers: Vec<u16>) -> Receiver {
        let port = listener.local_addr().unwrap().port();
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let answers = Arc::new(Mutex::new(answers));
        let (r, a) = (received.clone(), answers.clone());
        let server = HttpServer::new(move || {
            let (r, a) = (r.clone(), a.clone());
            App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
                let (r, a) = (r.clone(), a.clone());
                async move {
                    r.lock().unwrap().push(Received {
                        method: req.method().to_string(),
                        path: req.path().to_string(),
                        authorization: req
                            .headers()
                            .get("authorization")
                            .map(|v| v.to_str().unwrap().to_string()),
                        body: String::from_utf8_lossy(&body).to_string(),
                    });
                    let status = {
                        let mut a = a.lock().unwrap();
                        if a.is_empty() {
                            200
                        } else {
                            a.remove(0)
                        }
                    };
                    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).finish()
                }
            }))
        })
        .workers(1)
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Receiver { port, received, handle }
    }

    pub async fn start(answers: Vec<u16>) -> Receiver {
        Receiver::start_on(std::net::TcpListener::bind("127.0.0.1:0").unwrap(), answers).await
    }

    pub fn got(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        for _ in 0..300 {
            let got = self.got();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the receiver got {} notifications, expected {n}", self.got().len());
    }
}

fn subscription(endpoint: &str, payload: bool) -> Value {
    let mut s = json!({"resourceType": "Subscription", "status": "requested", "reason": "keep the EHR in sync",
        "criteria": "Appointment?status=booked&actor=Practitioner/rivera",
        "channel": {"type": "rest-hook", "endpoint": endpoint, "header": ["Authorization: Bearer hook-secret"]}});
    if payload {
        s["channel"]["payload"] = json!("application/fhir+json");
    }
    s
}

fn session(status: &str, practitioner: &str, hour: u32) -> Value {
    json!({"resourceType": "Appointment", "status": status,
           "start": format!("2026-12-01T{hour:02}:00:00Z"), "end": format!("2026-12-01T{hour:02}:50:00Z"),
           "participant": [{"actor": {"reference": format!("Practitioner/{practitioner}")}, "status": "accepted"}]})
}

pub async fn spawn_allowing(backend: Backend, port: u16, workers: bool) -> TestApp {
    let app = TestApp::spawn_configured(backend, |c| {
        c.subscription_allowed_hosts = vec![format!("127.0.0.1:{port}")];
        c.background_workers = workers;
    })
    .await;
    for id in ["rivera", "moss"] {
        app.put_json(
            &format!("Practitioner/{id}"),
            &json!({"resourceType": "Practitioner", "id": id}),
        )
        .await;
    }
    app
}

both_backends! {
    async fn matching_changes_are_put_to_the_endpoint_with_the_resource(app: TestApp) {
        let receiver = Receiver::start(vec![]).await;
        let app = spawn_allowing(app.backend, receiver.port, true).await;
        let created = app.create(&subscription(&format!("http://127.0.0.1:{}/hook", receiver.port), true)).await;
        assert_eq!(created["status"], "active", "the server activates a requested Subscription");
        // A match, and two that do not match (another status, another therapist).
        let booked = app.create(&session("booked", "rivera", 10)).await;
        app.create(&session("proposed", "rivera", 11)).await;
        app.create(&session("booked", "moss", 12)).await;
        let got = receiver.wait_for(1).await;
        let id = booked["id"].as_str().unwrap();
        assert_eq!(got[0].method, "PUT");
        assert_eq!(got[0].path, format!("/hook/Appointment/{id}"));
        assert_eq!(got[0].authorization.as_deref(), Some("Bearer hook-secret"));
        let body: Value = serde_json::from_str(&got[0].body).unwrap();
        assert_eq!(body["id"], id);
        // An update that still matches notifies again; one that no longer matches does not.
        let mut cancelled = booked.clone();
        cancelled["status"] = json!("cancelled");
        let mut moved = booked.clone();
        moved["description"] = json!("moved rooms");
        assert_eq!(app.put_json(&format!("Appointment/{id}"), &moved).await.status(), 200);
        let got = receiver.wait_for(2).await;
        assert_eq!(serde_json::from_str::<Value>(&got[1].body).unwrap()["description"], "moved rooms");
        assert_eq!(app.put_json(&format!("Appointment/{id}"), &cancelled).await.status(), 200);
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(receiver.got().len(), 2, "{:?}", receiver.got());
        // A Subscription can be found by its search parameters.
        let found = json(app.get("Subscription?type=rest-hook&status=active&url=http://127.0.0.1").await).await;
        assert_eq!(entries(&found).len(), 0, "url is matched whole, not as a prefix");
        let found = json(app.get(&format!("Subscription?status=active&url=http://127.0.0.1:{}/hook", receiver.port)).await).await;
        assert_eq!(entries(&found).len(), 1);
    }

    async fn without_a_payload_the_notification_is_an_empty_post_retried_until_accepted(app: TestApp) {
        // The endpoint fails twice, then accepts: the notification is retried with backoff.
        let receiver = Receiver::start(vec![500, 503]).await;
        let app = spawn_allowing(app.backend, receiver.port, true).await;
        app.create(&subscription(&format!("http://127.0.0.1:{}/ping", receiver.port), false)).await;
        app.create(&session("booked", "rivera", 9)).await;
        let got = receiver.wait_for(3).await;
        for r in &got {
            assert_eq!((r.method.as_str(), r.path.as_str(), r.body.as_str()), ("POST", "/ping", ""));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(receiver.got().len(), 3, "accepted on the third try, then no more");
    }

    async fn a_notification_outlives_a_restart_between_the_change_and_its_delivery(app: TestApp) {
        // The receiver's port, held until it comes up.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // The server that takes the change runs no background work, and stops before any delivery.
        let first = spawn_allowing(app.backend, port, false).await;
        first.create(&subscription(&format!("http://127.0.0.1:{port}/hook"), true)).await;
        let booked = first.create(&session("booked", "rivera", 14)).await;
        let db = first.stop().await;
        // The receiver comes up, and a new server on the same database delivers.
        let receiver = Receiver::start_on(listener, vec![]).await;
        let mut config = test_config(&db);
        config.subscription_allowed_hosts = vec![format!("127.0.0.1:{port}")];
        let second = TestApp::spawn_configured_on(app.backend, db, |c| *c = config).await;
        let got = receiver.wait_for(1).await;
        assert_eq!(got[0].path, format!("/hook/Appointment/{}", booked["id"].as_str().unwrap()));
        drop(second);
        receiver.handle.stop(false).await;
    }

    async fn endpoints_are_limited_to_allowed_hosts(app: TestApp) {
        let app2 = spawn_allowing(app.backend, 9, true).await;
        for endpoint in ["http://169.254.169.254/latest/meta-data", "http://127.0.0.1:10/hook", "file:///etc/passwd", "https://hooks.evil.example/"] {
            let res = app2.post_json("Subscription", &subscription(endpoint, true)).await;
            assert_outcome(res, 422, "processing").await;
        }
        // With no allowed host configured, no Subscription can be switched on; off is stored as it is.
        let res = app.post_json("Subscription", &subscription("http://127.0.0.1:9/hook", true)).await;
        assert_outcome(res, 422, "processing").await;
        let mut off = subscription("https://anywhere.example/hook", true);
        off["status"] = json!("off");
        assert_eq!(app.post_json("Subscription", &off).await.status(), 201);
        // Criteria must be a search the server understands, and the channel a rest-hook.
        let mut bad = subscription("http://127.0.0.1:9/hook", true);
        bad["criteria"] = json!("Appointment?colour=blue");
        assert_outcome(app2.post_json("Subscription", &bad).await, 422, "processing").await;
        let mut email = subscription("http://127.0.0.1:9/hook", true);
        email["channel"]["type"] = json!("email");
        assert_outcome(app2.post_json("Subscription", &email).await, 422, "processing").await;
    }
}
