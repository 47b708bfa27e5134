//! R4 Subscriptions with the rest-hook channel (subscription.html).
//!
//! A client registers a Subscription whose `criteria` is a search (`Appointment?status=booked`).
//! Every write of a resource of that type is matched against it in the write's own transaction; a
//! match leaves a notification in the database (an outbox), and a background notifier (any replica)
//! sends it (crate::notifier): without `channel.payload`, an empty POST to the endpoint; with
//! `application/fhir+json`, the resource PUT to `[endpoint]/[type]/[id]` (R4 rest-hook). Failures
//! are retried with exponential backoff; after [`MAX_ATTEMPTS`] the Subscription is set to `error`.
//! Endpoints must be on an allowed host (TANDEM_SUBSCRIPTION_ALLOWED_HOSTS); redirects are not
//! followed. Delivery is at least once: a notifier that dies mid-send leaves the notification to be
//! sent again.

use serde_json::Value;

use crate::error::Error;
use crate::resources::{dates, ResourceType};
use crate::search::plan::{plan, see_everything, Planned};
use crate::search::Search;

/// Attempts before a notification is given up and its Subscription set to `error`.
pub const MAX_ATTEMPTS: i32 = 8;

/// What the server keeps of a Subscription to match and notify.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub res_type: ResourceType,
    /// The query of the criteria (after `?`).
    pub criteria: String,
    pub endpoint: String,
    pub payload: Option<String>,
    pub headers: Vec<String>,
    pub active: bool,
    pub end_ms: Option<i64>,
}

fn refuse(m: String) -> Error {
    Error::Unprocessable(m)
}

/// `Type?query` planned against `Type`, strictly (an unknown parameter is refused, not ignored).
pub fn plan_criteria(criteria: &str) -> Result<(ResourceType, String, Planned), Error> {
    let (type_name, query) = criteria.split_once('?').unwrap_or((criteria, ""));
    let rt = ResourceType::parse(type_name).ok_or_else(|| {
        refuse(format!(
            "criteria '{criteria}' must search a type hosted here, such as Appointment?status=booked"
        ))
    })?;
    let pairs = crate::search::pairs(query.as_bytes());
    let search = Search::parse(&pairs).map_err(|e| refuse(format!("criteria: {e}")))?;
    let planned = plan(&[rt], &search, true, &see_everything).map_err(|e| refuse(format!("criteria: {e}")))?;
    Ok((rt, query.to_string(), planned))
}

/// `host` or `host:port` of an endpoint URL, lower case.
fn host_of(url: &url::Url) -> Option<(String, Option<u16>)> {
    Some((url.host_str()?.to_ascii_lowercase(), url.port_or_known_default()))
}

/// Whether `endpoint` is on one of the allowed hosts.
pub fn allowed(endpoint: &str, hosts: &[String]) -> bool {
    let Ok(url) = url::Url::parse(endpoint) else {
        return false;
    };
    let Some((host, port)) = host_of(&url) else {
        return false;
    };
    hosts.iter().any(|h| match h.rsplit_once(':') {
        Some((name, p)) if p.chars().all(|c| c.is_ascii_digit()) => name == host && p.parse().ok() == port,
        _ => *h == host,
    })
}

/// The Subscription as the server keeps it, without checking the endpoint's host.
pub fn spec_of(resource: &Value) -> Result<Spec, Error> {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    let criteria = text(resource.get("criteria")).ok_or_else(|| refuse("a Subscription needs criteria".into()))?;
    let (res_type, query, _) = plan_criteria(&criteria)?;
    let channel = resource.get("channel").cloned().unwrap_or(Value::Null);
    match channel.get("type").and_then(Value::as_str) {
        Some("rest-hook") => {}
        other => {
            return Err(refuse(format!(
                "channel.type '{}' is not supported; tandem notifies by rest-hook",
                other.unwrap_or("")
            )))
        }
    }
    let endpoint = text(channel.get("endpoint")).ok_or_else(|| refuse("a rest-hook needs channel.endpoint".into()))?;
    let url =
        url::Url::parse(&endpoint).map_err(|e| refuse(format!("channel.endpoint '{endpoint}' is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(refuse(format!("channel.endpoint '{endpoint}' must be an http(s) URL")));
    }
    let payload = text(channel.get("payload"));
    if let Some(p) = &payload {
        if p != "application/fhir+json" && p != "application/json" {
            return Err(refuse(format!(
                "channel.payload '{p}' is not supported; use application/fhir+json, or none for an empty notification"
            )));
        }
    }
    let headers: Vec<String> = channel
        .get("header")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    for h in &headers {
        let valid = h
            .split_once(':')
            .is_some_and(|(name, _)| !name.trim().is_empty() && name.bytes().all(|b| b.is_ascii_graphic()))
            && !h.contains(['\r', '\n']);
        if !valid {
            return Err(refuse(format!("channel.header '{h}' is not 'Name: value'")));
        }
    }
    let end_ms = match text(resource.get("end")) {
        Some(e) => Some(
            dates::parse_range(&e)
                .ok_or_else(|| refuse(format!("end '{e}' is not an instant")))?
                .high,
        ),
        None => None,
    };
    let status = resource.get("status").and_then(Value::as_str).unwrap_or("");
    Ok(Spec {
        res_type,
        criteria: query,
        endpoint,
        payload,
        headers,
        active: status == "active",
        end_ms,
    })
}

/// Checks a Subscription being written and activates it: a `requested` (or `active`) Subscription
/// whose endpoint is on an allowed host becomes `active`; one on another host is refused (422).
pub fn accept(resource: &mut Value, hosts: &[String]) -> Result<(), Error> {
    let wants_on = matches!(
        resource.get("status").and_then(Value::as_str),
        Some("requested" | "active")
    );
    let spec = spec_of(resource)?;
    if wants_on {
        if !allowed(&spec.endpoint, hosts) {
            return Err(refuse(format!(
                "channel.endpoint '{}' is not on a host this server may notify (TANDEM_SUBSCRIPTION_ALLOWED_HOSTS)",
                spec.endpoint
            )));
        }
        if let Some(map) = resource.as_object_mut() {
            map.insert("status".into(), Value::String("active".into()));
            map.remove("error");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sub(status: &str, endpoint: &str) -> Value {
        json!({"resourceType": "Subscription", "status": status, "reason": "sync", "criteria": "Appointment?status=booked",
               "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json",
                           "header": ["Authorization: Bearer x"]}})
    }

    #[test]
    fn only_allowed_hosts_can_be_notified() {
        let hosts = vec!["hooks.ehr.example".to_string(), "127.0.0.1:9000".to_string()];
        assert!(allowed("https://hooks.ehr.example/fhir", &hosts));
        assert!(allowed("http://127.0.0.1:9000/x", &hosts));
        assert!(!allowed("http://127.0.0.1:9001/x", &hosts));
        assert!(!allowed("http://169.254.169.254/latest/meta-data", &hosts));
        assert!(!allowed("https://hooks.ehr.example.evil.com/", &hosts));
        assert!(!allowed("not a url", &hosts));
    }

    #[test]
    fn a_requested_subscription_becomes_active_and_others_are_refused() {
        let hosts = vec!["hooks.ehr.example".to_string()];
        let mut ok = sub("requested", "https://hooks.ehr.example/fhir");
        accept(&mut ok, &hosts).unwrap();
        assert_eq!(ok["status"], "active");
        assert!(accept(&mut sub("requested", "https://elsewhere.example/"), &hosts).is_err());
        // Off is kept off, wherever it points.
        let mut off = sub("off", "https://elsewhere.example/");
        accept(&mut off, &hosts).unwrap();
        assert_eq!(off["status"], "off");
        let mut bad = sub("requested", "https://hooks.ehr.example/fhir");
        bad["criteria"] = json!("MedicationRequest?code=x");
        assert!(accept(&mut bad, &hosts).is_err());
        bad["criteria"] = json!("Appointment?colour=blue");
        assert!(accept(&mut bad, &hosts).is_err());
        let mut email = sub("requested", "https://hooks.ehr.example/fhir");
        email["channel"]["type"] = json!("email");
        assert!(accept(&mut email, &hosts).is_err());
    }
}
