//! Bearer tokens: verification against configured keys (a JWKS file or a PEM public key for RS256 and
//! ES256; an HS256 shared secret only when explicitly allowed), and the local development key.
//!
//! When no key is configured and the server listens on loopback only, it creates an ES256 signing key
//! under its data directory on first start and accepts only tokens signed by it; `tandem token` mints
//! them. On any other address it refuses to start without a configured key: there is no switch that
//! turns authentication off.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::{parse_scope, Principal};
use crate::config::Config;

/// The issuer of tokens signed by the local development key, unless TANDEM_AUTH_ISSUER names another.
pub const LOCAL_ISSUER: &str = "urn:tandem:local";
/// The audience of tokens minted for the local development key, unless TANDEM_AUTH_AUDIENCE names another.
pub const LOCAL_AUDIENCE: &str = "tandem";
/// The file, under the data directory, that holds the local development key.
pub const LOCAL_KEY_FILE: &str = "tandem-signing-key.pem";
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY_SECONDS: u64 = 30;
/// The longest bearer token accepted. Real access tokens take 1–4 KB (a SMART token with many
/// scopes and claims); a longer one is refused before any decoding. A request head over 128 KB
/// never reaches tandem: actix-http answers it with a bare 431 and closes the connection.
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// The shortest HS256 secret accepted (RFC 7518 §3.2: at least the hash size).
const MIN_HS256_SECRET_BYTES: usize = 32;

/// One key that may have signed a token.
struct VerifyKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// How many verified tokens the verifier remembers.
const VERIFIED_CACHE_ENTRIES: usize = 4_096;

/// A token that verified: who it names and the time window it is valid in (seconds since the epoch).
struct Verified {
    principal: Principal,
    exp: f64,
    nbf: Option<f64>,
}

/// Checks bearer tokens: signature, algorithm, `exp`, `nbf`, `iss`, `aud`.
///
/// Checking a signature costs far more than answering a read by id (ES256 and RS256 verification
/// took most of a read's time under load), and an integration sends the same token with every
/// request until it expires. So tokens that verified are remembered, keyed by the SHA-256 of the
/// whole token (signature included: a token altered in any byte is a different key and is verified
/// afresh). A remembered token still has its `exp` and `nbf` checked on every use. Keys are fixed for
/// the life of the process, so nothing else can change the answer. Refused tokens are not remembered.
pub struct Verifier {
    keys: Vec<VerifyKey>,
    verified: quick_cache::sync::Cache<[u8; 32], std::sync::Arc<Verified>>,
    issuer: String,
    audience: String,
    /// Where the keys come from, for the log and the docs.
    pub source: String,
}

/// The local development signing key, when the server runs with one.
pub struct LocalKey {
    pub path: PathBuf,
    pub kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

/// Why a token was refused; the message goes to the caller (RFC 6750 error_description).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

/// The claims tandem reads.
#[derive(Debug, Deserialize)]
struct Claims {
    iss: String,
    sub: Option<String>,
    /// Seconds since the epoch: a NumericDate, "a JSON numeric value … it can contain fractional
    /// seconds" (RFC 7519 §2), so `exp`, `nbf` (and `iat`, not read) may be fractional. Required.
    exp: Option<f64>,
    nbf: Option<f64>,
    #[serde(default)]
    scope: Option<ScopeClaim>,
    /// Some issuers (Okta, Azure AD) put scopes in `scp`.
    #[serde(default)]
    scp: Option<ScopeClaim>,
    patient: Option<String>,
    #[serde(rename = "fhirUser")]
    fhir_user: Option<String>,
    client_id: Option<String>,
    azp: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ScopeClaim {
    Text(String),
    List(Vec<String>),
}

impl ScopeClaim {
    fn items(&self) -> Vec<&str> {
        match self {
            ScopeClaim::Text(s) => s.split_whitespace().collect(),
            ScopeClaim::List(l) => l.iter().map(String::as_str).collect(),
        }
    }
}

/// What `tandem token` puts in a token.
#[derive(Debug, Serialize)]
pub struct MintedClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub jti: String,
    pub scope: String,
    pub client_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    #[serde(rename = "fhirUser", skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
}

fn is_loopback(listen: &str) -> bool {
    listen.parse::<SocketAddr>().is_ok_and(|a| a.ip().is_loopback())
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))
}

impl Verifier {
    /// The verifier the configuration asks for, and the local key when it uses one (created on
    /// first use, with a log line saying so).
    pub fn from_config(config: &Config) -> Result<(Verifier, Option<LocalKey>), String> {
        let mut keys = Vec::new();
        let mut sources = Vec::new();
        if let Some(path) = &config.auth_jwks_file {
            keys.extend(jwks_keys(&read(path, "TANDEM_AUTH_JWKS_FILE")?, path)?);
            sources.push(format!("JWKS {}", path.display()));
        }
        if let Some(path) = &config.auth_public_key_file {
            keys.push(pem_key(&read(path, "TANDEM_AUTH_PUBLIC_KEY_FILE")?, path)?);
            sources.push(format!("public key {}", path.display()));
        }
        match (&config.auth_hs256_secret_file, config.auth_allow_hs256) {
            (Some(path), true) => {
                let secret = read(path, "TANDEM_AUTH_HS256_SECRET_FILE")?;
                let secret = secret.trim_ascii();
                if secret.len() < MIN_HS256_SECRET_BYTES {
                    return Err(format!(
                        "TANDEM_AUTH_HS256_SECRET_FILE holds {} bytes; HS256 needs at least {MIN_HS256_SECRET_BYTES}",
                        secret.len()
                    ));
                }
                keys.push(VerifyKey {
                    kid: None,
                    algorithm: Algorithm::HS256,
                    key: DecodingKey::from_secret(secret),
                });
                sources.push("HS256 shared secret".into());
            }
            (Some(_), false) => return Err(
                "TANDEM_AUTH_HS256_SECRET_FILE is set but HS256 is off; set TANDEM_AUTH_ALLOW_HS256=true to accept \
                     tokens signed with a shared secret"
                    .into(),
            ),
            (None, true) => {
                return Err("TANDEM_AUTH_ALLOW_HS256 is on but TANDEM_AUTH_HS256_SECRET_FILE is not set".into())
            }
            (None, false) => {}
        }
        if !keys.is_empty() {
            let issuer = config
                .auth_issuer
                .clone()
                .ok_or("TANDEM_AUTH_ISSUER must name the issuer of the tokens the configured keys verify")?;
            let audience = config
                .auth_audience
                .clone()
                .ok_or("TANDEM_AUTH_AUDIENCE must name the audience (aud) the tokens are issued for")?;
            let verifier = Verifier {
                keys,
                verified: verified_cache(),
                issuer,
                audience,
                source: sources.join(", "),
            };
            return Ok((verifier, None));
        }
        if !is_loopback(&config.listen) {
            return Err(format!(
                "no token verification key is configured (TANDEM_AUTH_JWKS_FILE or TANDEM_AUTH_PUBLIC_KEY_FILE) and \
                 TANDEM_LISTEN '{}' is not a loopback address: refusing to serve health records without \
                 authentication",
                config.listen
            ));
        }
        let local = LocalKey::load_or_create(&config.data_dir)?;
        let verifier = Verifier {
            keys: vec![VerifyKey {
                kid: Some(local.kid.clone()),
                algorithm: Algorithm::ES256,
                key: local.decoding.clone(),
            }],
            verified: verified_cache(),
            issuer: config.auth_issuer.clone().unwrap_or_else(|| LOCAL_ISSUER.into()),
            audience: config.auth_audience.clone().unwrap_or_else(|| LOCAL_AUDIENCE.into()),
            source: format!("local development key {}", local.path.display()),
        };
        Ok((verifier, Some(local)))
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Verifies a bearer token and reads the caller from it.
    pub fn verify(&self, token: &str) -> Result<Principal, Refused> {
        use sha2::Digest;
        let key: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Refused(format!("the token is longer than {MAX_TOKEN_BYTES} bytes")));
        }
        if let Some(hit) = self.verified.get(&key) {
            if let Err(refused) = check_window(hit.exp, hit.nbf) {
                if now_seconds() > hit.exp {
                    self.verified.remove(&key);
                }
                return Err(refused);
            }
            return Ok(hit.principal.clone());
        }
        let verified = self.verify_signature(token)?;
        let principal = verified.principal.clone();
        self.verified.insert(key, std::sync::Arc::new(verified));
        Ok(principal)
    }

    /// The full check, without the cache.
    fn verify_signature(&self, token: &str) -> Result<Verified, Refused> {
        let refuse = |m: &str| Refused(m.to_string());
        // `alg: none` and unknown algorithms do not parse as a header.
        let header = jsonwebtoken::decode_header(token).map_err(|_| refuse("the token is not a signed JWT"))?;
        let candidates: Vec<&VerifyKey> = self
            .keys
            .iter()
            .filter(|k| k.algorithm == header.alg)
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                // A key without a kid (a PEM key, a shared secret) stands for whatever kid.
                (_, None) => true,
                (None, Some(_)) => self.keys.len() == 1,
            })
            .collect();
        if candidates.is_empty() {
            let known_alg = self.keys.iter().any(|k| k.algorithm == header.alg);
            return Err(match (&header.kid, known_alg) {
                (_, false) => refuse(&format!("tokens signed with {:?} are not accepted", header.alg)),
                (Some(_), true) => refuse("the token's key id (kid) is not one of the configured keys"),
                (None, true) => refuse("the token has no key id (kid) and several keys could have signed it"),
            });
        }
        let mut validation = Validation::new(header.alg);
        // jsonwebtoken reads `exp` and `nbf` as whole seconds (u64) and refuses a fractional one,
        // which RFC 7519 allows: they are checked here instead, as numbers ([`check_window`]).
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["iss", "aud"]);
        let mut last = refuse("the token's signature does not verify");
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => {
                    let Some(exp) = data.claims.exp else {
                        return Err(Refused(
                            describe(&jsonwebtoken::errors::ErrorKind::MissingRequiredClaim("exp".into())).into(),
                        ));
                    };
                    let nbf = data.claims.nbf;
                    check_window(exp, nbf)?;
                    return Ok(Verified {
                        principal: principal(data.claims),
                        exp,
                        nbf,
                    });
                }
                Err(e) => last = Refused(describe(e.kind()).into()),
            }
        }
        Err(last)
    }
}

fn now_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Checks `exp` and `nbf` (seconds since the epoch, whole or not) against the clock, with the leeway.
fn check_window(exp: f64, nbf: Option<f64>) -> Result<(), Refused> {
    let now = now_seconds();
    let leeway = LEEWAY_SECONDS as f64;
    if now > exp + leeway {
        return Err(Refused(
            describe(&jsonwebtoken::errors::ErrorKind::ExpiredSignature).into(),
        ));
    }
    if nbf.is_some_and(|nbf| now < nbf - leeway) {
        return Err(Refused(
            describe(&jsonwebtoken::errors::ErrorKind::ImmatureSignature).into(),
        ));
    }
    Ok(())
}

fn verified_cache() -> quick_cache::sync::Cache<[u8; 32], std::sync::Arc<Verified>> {
    quick_cache::sync::Cache::new(VERIFIED_CACHE_ENTRIES)
}

fn describe(kind: &jsonwebtoken::errors::ErrorKind) -> &'static str {
    use jsonwebtoken::errors::ErrorKind;
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired",
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
        ErrorKind::InvalidIssuer => "the token's issuer (iss) is not the accepted one",
        ErrorKind::InvalidAudience => "the token's audience (aud) is not this server",
        ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim (exp, iss, aud)",
        ErrorKind::InvalidSignature => "the token's signature does not verify",
        ErrorKind::InvalidAlgorithm => "the token's algorithm does not match its key",
        _ => "the token is malformed",
    }
}

fn principal(c: Claims) -> Principal {
    let mut scopes = Vec::new();
    for claim in [&c.scope, &c.scp].into_iter().flatten() {
        scopes.extend(claim.items().into_iter().filter_map(parse_scope));
    }
    Principal {
        issuer: c.iss,
        subject: c.sub,
        fhir_user: c.fhir_user,
        client_id: c.client_id.or(c.azp),
        patient: c.patient.filter(|p| crate::resources::is_valid_id(p)),
        scopes,
        assigned: None,
    }
}

/// The signing keys of a JWKS: RSA keys verify RS256, P-256 keys ES256; encryption keys and other
/// algorithms are left out (with a log line). None usable is an error.
fn jwks_keys(bytes: &[u8], path: &Path) -> Result<Vec<VerifyKey>, String> {
    let set: JwkSet = serde_json::from_slice(bytes)
        .map_err(|e| format!("TANDEM_AUTH_JWKS_FILE {}: not a JWKS: {e}", path.display()))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let algorithm = match (&jwk.algorithm, &jwk.common.key_algorithm) {
            (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
            (AlgorithmParameters::EllipticCurve(ec), None | Some(KeyAlgorithm::ES256))
                if ec.curve == EllipticCurve::P256 =>
            {
                Algorithm::ES256
            }
            _ => {
                tracing::warn!(kid = ?jwk.common.key_id, "a JWKS key is neither RS256 nor ES256; it is not used");
                continue;
            }
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| {
            format!(
                "TANDEM_AUTH_JWKS_FILE {}: key {:?}: {e}",
                path.display(),
                jwk.common.key_id
            )
        })?;
        keys.push(VerifyKey {
            kid: jwk.common.key_id.clone(),
            algorithm,
            key,
        });
    }
    if keys.is_empty() {
        return Err(format!(
            "TANDEM_AUTH_JWKS_FILE {} holds no RS256 or ES256 signing key",
            path.display()
        ));
    }
    Ok(keys)
}

/// A PEM public key: P-256 (ES256) or RSA (RS256).
fn pem_key(bytes: &[u8], path: &Path) -> Result<VerifyKey, String> {
    let text = std::str::from_utf8(bytes).unwrap_or("");
    let is_ec = text.contains("BEGIN PUBLIC KEY") && p256_public_key(text).is_some();
    let (algorithm, key) = if is_ec {
        (Algorithm::ES256, DecodingKey::from_ec_pem(bytes))
    } else {
        (Algorithm::RS256, DecodingKey::from_rsa_pem(bytes))
    };
    let key = key.map_err(|e| {
        format!(
            "TANDEM_AUTH_PUBLIC_KEY_FILE {}: not an RSA or P-256 public key in PEM: {e}",
            path.display()
        )
    })?;
    Ok(VerifyKey {
        kid: None,
        algorithm,
        key,
    })
}

fn p256_public_key(pem: &str) -> Option<p256::PublicKey> {
    use p256::pkcs8::DecodePublicKey;
    p256::PublicKey::from_public_key_pem(pem).ok()
}

impl LocalKey {
    /// Reads the local key from the data directory, creating it (mode 0600) on first use.
    pub fn load_or_create(data_dir: &Path) -> Result<LocalKey, String> {
        use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
        let path = data_dir.join(LOCAL_KEY_FILE);
        let secret = if path.exists() {
            let pem = std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
            p256::SecretKey::from_pkcs8_pem(&pem).map_err(|e| format!("{} is not a P-256 key: {e}", path.display()))?
        } else {
            std::fs::create_dir_all(data_dir).map_err(|e| format!("creating {}: {e}", data_dir.display()))?;
            let secret = p256::SecretKey::random(&mut rand_core::OsRng);
            let pem = secret
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| format!("encoding the local key: {e}"))?;
            write_private(&path, pem.as_bytes())?;
            tracing::warn!(
                path = %path.display(),
                "no token key is configured: created a local development signing key; only tokens it signs \
                 (`tandem token`) are accepted"
            );
            secret
        };
        let private_pem = secret
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| format!("encoding the local key: {e}"))?;
        let public_pem = secret
            .public_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| format!("encoding the local public key: {e}"))?;
        let encoding = EncodingKey::from_ec_pem(private_pem.as_bytes()).map_err(|e| format!("local key: {e}"))?;
        let decoding = DecodingKey::from_ec_pem(public_pem.as_bytes()).map_err(|e| format!("local key: {e}"))?;
        // The key id names the public key, so a replaced key file never verifies old tokens by accident.
        let kid = {
            use p256::elliptic_curve::sec1::ToEncodedPoint;
            use sha2::Digest;
            let point = secret.public_key().to_encoded_point(false);
            let digest = sha2::Sha256::digest(point.as_bytes());
            let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
            format!("local-{hex}")
        };
        Ok(LocalKey {
            path,
            kid,
            encoding,
            decoding,
        })
    }

    /// Signs `claims` with the local key (ES256, with its kid).
    pub fn sign(&self, claims: &MintedClaims) -> Result<String, String> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(|e| format!("signing the token: {e}"))
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| format!("creating {}: {e}", path.display()))?;
    file.write_all(bytes)
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

/// `tandem token`: a short-lived token signed with the local development key.
pub fn mint(
    config: &Config,
    scope: &str,
    patient: Option<String>,
    subject: &str,
    fhir_user: Option<String>,
    lifetime_seconds: u64,
) -> Result<String, String> {
    if config.auth_jwks_file.is_some()
        || config.auth_public_key_file.is_some()
        || config.auth_hs256_secret_file.is_some()
    {
        return Err(
            "`tandem token` mints with the local development key only; this configuration names other keys \
                    (ask their issuer for a token)"
                .into(),
        );
    }
    if scope.split_whitespace().filter_map(parse_scope).next().is_none() {
        return Err(format!(
            "'{scope}' holds no SMART scope such as system/*.cruds or patient/*.rs"
        ));
    }
    if let Some(p) = &patient {
        if !crate::resources::is_valid_id(p) {
            return Err(format!("--patient '{p}' is not a FHIR id"));
        }
    }
    let key = LocalKey::load_or_create(&config.data_dir)?;
    let now = jsonwebtoken::get_current_timestamp();
    let claims = MintedClaims {
        iss: config.auth_issuer.clone().unwrap_or_else(|| LOCAL_ISSUER.into()),
        aud: config.auth_audience.clone().unwrap_or_else(|| LOCAL_AUDIENCE.into()),
        sub: subject.to_string(),
        iat: now,
        nbf: now,
        exp: now + lifetime_seconds,
        jti: uuid::Uuid::new_v4().to_string(),
        scope: scope.to_string(),
        client_id: "tandem-cli".into(),
        patient,
        fhir_user,
    };
    key.sign(&claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A verifier of the local key's tokens with the local issuer and audience, as tests build it.
    fn local_verifier(key: &LocalKey) -> Verifier {
        Verifier {
            keys: vec![VerifyKey {
                kid: Some(key.kid.clone()),
                algorithm: Algorithm::ES256,
                key: key.decoding.clone(),
            }],
            verified: verified_cache(),
            issuer: LOCAL_ISSUER.into(),
            audience: LOCAL_AUDIENCE.into(),
            source: String::new(),
        }
    }

    #[test]
    fn only_loopback_addresses_count_as_local() {
        assert!(is_loopback("127.0.0.1:8080"));
        assert!(is_loopback("[::1]:8080"));
        assert!(!is_loopback("0.0.0.0:8080"));
        assert!(!is_loopback("10.1.2.3:8080"));
    }

    #[test]
    fn the_local_key_is_created_once_and_verifies_what_it_signs() {
        let dir = tempfile::tempdir().unwrap();
        let first = LocalKey::load_or_create(dir.path()).unwrap();
        let again = LocalKey::load_or_create(dir.path()).unwrap();
        assert_eq!(first.kid, again.kid);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&first.path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let verifier = local_verifier(&first);
        let now = jsonwebtoken::get_current_timestamp();
        let claims = MintedClaims {
            iss: LOCAL_ISSUER.into(),
            aud: LOCAL_AUDIENCE.into(),
            sub: "me".into(),
            iat: now,
            nbf: now,
            exp: now + 60,
            jti: "j".into(),
            scope: "system/*.rs openid".into(),
            client_id: "c".into(),
            patient: None,
            fhir_user: None,
        };
        let principal = verifier.verify(&again.sign(&claims).unwrap()).unwrap();
        assert_eq!(principal.subject.as_deref(), Some("me"));
        assert_eq!(principal.scopes.len(), 1);
    }

    #[test]
    fn a_remembered_token_is_still_checked_for_expiry_and_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let key = LocalKey::load_or_create(dir.path()).unwrap();
        let verifier = local_verifier(&key);
        let now = jsonwebtoken::get_current_timestamp();
        let claims = MintedClaims {
            iss: LOCAL_ISSUER.into(),
            aud: LOCAL_AUDIENCE.into(),
            sub: "me".into(),
            iat: now,
            nbf: now,
            exp: now + 60,
            jti: "j".into(),
            scope: "system/*.rs".into(),
            client_id: "c".into(),
            patient: None,
            fhir_user: None,
        };
        let token = key.sign(&claims).unwrap();
        assert!(verifier.verify(&token).is_ok());
        assert!(verifier.verify(&token).is_ok());
        assert_eq!(verifier.verified.len(), 1);

        // The same token with one signature character changed is a different key: refused.
        let at = token.rfind('.').unwrap() + 10;
        let mut tampered = token.clone();
        let swap = if &token[at..=at] == "A" { "B" } else { "A" };
        tampered.replace_range(at..=at, swap);
        assert!(verifier.verify(&tampered).is_err());
        assert_eq!(verifier.verified.len(), 1);

        // Time passes beyond exp (and the leeway) while the token is remembered: refused, forgotten.
        use sha2::Digest;
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let mut past = verifier.verify_signature(&token).unwrap();
        past.exp = now as f64 - LEEWAY_SECONDS as f64 - 1.0;
        verifier.verified.insert(digest, std::sync::Arc::new(past));
        assert_eq!(verifier.verify(&token).unwrap_err().0, "the token has expired");
        assert_eq!(verifier.verified.len(), 0);
    }

    #[test]
    fn numeric_dates_may_be_fractional_and_tokens_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let key = LocalKey::load_or_create(dir.path()).unwrap();
        let verifier = local_verifier(&key);
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(key.kid.clone());
        let sign = |claims: serde_json::Value| jsonwebtoken::encode(&header, &claims, &key.encoding).unwrap();
        let now = now_seconds();
        let claims = |exp: serde_json::Value, nbf: serde_json::Value| {
            let mut c = serde_json::json!({"iss": LOCAL_ISSUER, "aud": LOCAL_AUDIENCE, "sub": "me",
                "iat": now - 0.25, "scope": "system/*.rs", "exp": exp, "nbf": nbf});
            c.as_object_mut().unwrap().retain(|_, v| !v.is_null());
            c
        };
        // RFC 7519 §2 NumericDate: fractional seconds are allowed in exp, nbf and iat.
        let ok = sign(claims(serde_json::json!(now + 60.5), serde_json::json!(now - 0.5)));
        assert!(verifier.verify(&ok).is_ok());
        // Fractional or not, the window is checked (with the leeway), and exp is required.
        let expired = sign(claims(serde_json::json!(now - 90.5), serde_json::Value::Null));
        assert_eq!(verifier.verify(&expired).unwrap_err().0, "the token has expired");
        let early = sign(claims(serde_json::json!(now + 600.0), serde_json::json!(now + 120.5)));
        assert_eq!(
            verifier.verify(&early).unwrap_err().0,
            "the token is not valid yet (nbf)"
        );
        let no_exp = sign(claims(serde_json::Value::Null, serde_json::Value::Null));
        assert!(verifier.verify(&no_exp).unwrap_err().0.contains("required claim"));
        let text_exp = sign(claims(serde_json::json!("tomorrow"), serde_json::Value::Null));
        assert!(verifier.verify(&text_exp).is_err());
        // A token over the limit is refused before it is decoded.
        let huge = format!("{ok}{}", "A".repeat(MAX_TOKEN_BYTES));
        assert!(verifier.verify(&huge).unwrap_err().0.contains("longer than"));
    }
}
