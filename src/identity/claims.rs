//! From a login to what a consumer token says: the subject (the upstream `sub`, or a stable
//! pseudonym) and the profile claims the configured mapping copies from upstream claims,
//! each checked against the type the platform expects (`lp_sdes` entries `ctmrinfo` and
//! `personal`).
//!
//! A claim of the wrong type is left out and named in the log (by claim name, never value):
//! a brand's login adding an odd attribute must not stop its consumers from chatting.

use aws_lc_rs::hmac;
use base64::Engine;
use serde_json::{Map, Value, json};

use crate::config::{ClaimsConfig, IdentityConfig, Problems, SubjectMode};
use crate::secret::{Secret, read_secret_for};

/// Longest string copied into a token; longer values are left out (tokens travel in headers).
const MAX_TEXT: usize = 512;

/// What kind of value a target claim holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Number,
    Integer,
    /// `{"day", "month", "year"}` from `YYYY-MM-DD` or Unix seconds.
    Date,
    /// `{"age"}` from a number, or `{"year", "month", "day"}` from a birth date.
    Age,
    /// `MALE`, `FEMALE` or `OTHER`.
    Gender,
}

/// Maps upstream identities to consumer claims. Built once per config.
pub struct ClaimMapper {
    mode: SubjectMode,
    pseudonym_key: Option<hmac::Key>,
    mapping: ClaimsConfig,
}

impl ClaimMapper {
    pub fn build(cfg: &IdentityConfig, problems: &mut Problems) -> ClaimMapper {
        let key_name = "identity.subject.pseudonym_key_file";
        let pseudonym_key = match (&cfg.subject.mode, &cfg.subject.pseudonym_key_file) {
            (SubjectMode::Pseudonym, Some(file)) => {
                match read_secret_for(key_name, file, problems) {
                    Some(key) if key.expose().len() >= 32 => {
                        Some(hmac::Key::new(hmac::HMAC_SHA256, key.expose()))
                    }
                    Some(_) => {
                        problems.push(
                            key_name,
                            "the key must be at least 32 bytes (head -c32 /dev/urandom | base64 > FILE)",
                        );
                        None
                    }
                    None => None,
                }
            }
            _ => None,
        };
        ClaimMapper {
            mode: cfg.subject.mode,
            pseudonym_key,
            mapping: cfg.claims.clone(),
        }
    }

    /// The consumer's `sub` for the upstream `iss` + `sub`.
    pub fn subject(&self, issuer: &str, subject: &str) -> String {
        match (&self.mode, &self.pseudonym_key) {
            (SubjectMode::Pseudonym, Some(key)) => {
                // The issuer is part of the input so the same `sub` at two providers gives two
                // consumers; the NUL keeps "a"+"bc" and "ab"+"c" apart.
                let mut ctx = hmac::Context::with_key(key);
                ctx.update(issuer.as_bytes());
                ctx.update(&[0]);
                ctx.update(subject.as_bytes());
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(ctx.sign().as_ref())
            }
            _ => subject.to_string(),
        }
    }

    /// The profile claims for a consumer token, from upstream claims.
    pub fn profile(&self, upstream: &Map<String, Value>) -> Map<String, Value> {
        let mut out = Map::new();
        let mut info = Map::new();
        let mut personal = Map::new();
        let mut contact = Map::new();
        for (place, target, source, kind) in mapped(&self.mapping) {
            let Some(v) = take(upstream, source, kind, target) else {
                continue;
            };
            let into = match place {
                Place::Top => &mut out,
                Place::Ctmrinfo => &mut info,
                Place::Personal => &mut personal,
                Place::Contact => &mut contact,
            };
            into.insert(target.into(), v);
        }
        if !contact.is_empty() {
            personal.insert("contacts".into(), json!([contact]));
        }
        let mut sdes = Vec::new();
        if !info.is_empty() {
            sdes.push(json!({"type": "ctmrinfo", "info": info}));
        }
        if !personal.is_empty() {
            sdes.push(json!({"type": "personal", "personal": personal}));
        }
        if !sdes.is_empty() {
            out.insert("lp_sdes".into(), Value::Array(sdes));
        }
        out
    }

    /// What consumer tokens carry besides the subject, one `claim <- upstream claim` per
    /// mapped claim (for `check-config`: a privacy review reads it there).
    pub fn describe(&self) -> Vec<String> {
        mapped(&self.mapping)
            .filter_map(|(place, target, source, _)| {
                let source = source.as_deref()?;
                let path = match place {
                    Place::Top => target.to_string(),
                    Place::Ctmrinfo => format!("lp_sdes ctmrinfo.{target}"),
                    Place::Personal => format!("lp_sdes personal.{target}"),
                    Place::Contact => format!("lp_sdes personal.contacts.{target}"),
                };
                Some(format!("{path} <- {source}"))
            })
            .collect()
    }
}

/// Where a mapped claim goes in the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Top,
    Ctmrinfo,
    Personal,
    Contact,
}

/// Every claim a mapping can fill: where it goes, its name, the upstream claim configured for
/// it (if any) and its kind.
fn mapped(m: &ClaimsConfig) -> impl Iterator<Item = (Place, &'static str, &Option<String>, Kind)> {
    let c = &m.ctmrinfo;
    let p = &m.personal;
    [
        (Place::Top, "given_name", &m.given_name, Kind::Text),
        (Place::Top, "family_name", &m.family_name, Kind::Text),
        (Place::Top, "email", &m.email, Kind::Text),
        (Place::Top, "phone_number", &m.phone_number, Kind::Text),
        (
            Place::Top,
            "preferred_username",
            &m.preferred_username,
            Kind::Text,
        ),
        (Place::Top, "gender", &m.gender, Kind::Text),
        (Place::Ctmrinfo, "cstatus", &c.cstatus, Kind::Text),
        (Place::Ctmrinfo, "ctype", &c.ctype, Kind::Text),
        (Place::Ctmrinfo, "customerId", &c.customerId, Kind::Text),
        (Place::Ctmrinfo, "balance", &c.balance, Kind::Number),
        (Place::Ctmrinfo, "currency", &c.currency, Kind::Text),
        (Place::Ctmrinfo, "socialId", &c.socialId, Kind::Text),
        (Place::Ctmrinfo, "imei", &c.imei, Kind::Text),
        (Place::Ctmrinfo, "userName", &c.userName, Kind::Text),
        (
            Place::Ctmrinfo,
            "companySize",
            &c.companySize,
            Kind::Integer,
        ),
        (
            Place::Ctmrinfo,
            "companyBranch",
            &c.companyBranch,
            Kind::Text,
        ),
        (Place::Ctmrinfo, "accountName", &c.accountName, Kind::Text),
        (Place::Ctmrinfo, "role", &c.role, Kind::Text),
        (Place::Ctmrinfo, "storeId", &c.storeId, Kind::Text),
        (Place::Ctmrinfo, "storeNumber", &c.storeNumber, Kind::Text),
        (
            Place::Ctmrinfo,
            "lastPaymentDate",
            &c.lastPaymentDate,
            Kind::Date,
        ),
        (
            Place::Ctmrinfo,
            "registrationDate",
            &c.registrationDate,
            Kind::Date,
        ),
        (Place::Personal, "firstname", &p.firstname, Kind::Text),
        (Place::Personal, "lastname", &p.lastname, Kind::Text),
        (Place::Personal, "age", &p.age, Kind::Age),
        (Place::Personal, "gender", &p.gender, Kind::Gender),
        (Place::Personal, "company", &p.company, Kind::Text),
        (Place::Personal, "language", &p.language, Kind::Text),
        (Place::Contact, "email", &p.email, Kind::Text),
        (Place::Contact, "phone", &p.phone, Kind::Text),
    ]
    .into_iter()
}

/// The upstream claim named by `source`, converted to `kind`; `None` (and a log line naming
/// the claims) when it is absent or cannot be converted.
fn take(
    upstream: &Map<String, Value>,
    source: &Option<String>,
    kind: Kind,
    target: &str,
) -> Option<Value> {
    let name = source.as_deref()?;
    let value = upstream.get(name)?;
    if value.is_null() {
        return None;
    }
    let converted = convert(value, kind);
    if converted.is_none() {
        tracing::info!(
            upstream_claim = name,
            claim = target,
            "an upstream claim has a type the consumer claim cannot take; left out"
        );
    }
    converted
}

fn convert(value: &Value, kind: Kind) -> Option<Value> {
    match kind {
        Kind::Text => match value {
            Value::String(s)
                if !s.is_empty() && s.len() <= MAX_TEXT && super::subject::is_printable(s) =>
            {
                Some(Value::from(s.as_str()))
            }
            Value::Number(n) => Some(Value::from(n.to_string())),
            _ => None,
        },
        Kind::Number => match value {
            Value::Number(_) => Some(value.clone()),
            Value::String(s) => s
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(Value::from),
            _ => None,
        },
        Kind::Integer => match value {
            Value::Number(n) => n.as_i64().map(Value::from),
            Value::String(s) => s.trim().parse::<i64>().ok().map(Value::from),
            _ => None,
        },
        Kind::Date => date(value).map(|(y, m, d)| json!({"day": d, "month": m, "year": y})),
        Kind::Age => match value {
            Value::Number(n) => n
                .as_u64()
                .filter(|a| *a <= 150)
                .map(|a| json!({ "age": a })),
            Value::String(s) => match s.trim().parse::<u64>() {
                Ok(a) if a <= 150 => Some(json!({ "age": a })),
                _ => date(value).map(|(y, m, d)| json!({"year": y, "month": m, "day": d})),
            },
            _ => None,
        },
        Kind::Gender => match value.as_str()?.trim().to_ascii_uppercase().as_str() {
            g @ ("MALE" | "FEMALE" | "OTHER") => Some(Value::from(g)),
            _ => None,
        },
    }
}

/// (year, month, day) from `YYYY-MM-DD` (optionally followed by a time) or Unix seconds.
fn date(value: &Value) -> Option<(i32, u8, u8)> {
    match value {
        Value::Number(n) => {
            let t = time::OffsetDateTime::from_unix_timestamp(n.as_i64()?).ok()?;
            Some((t.year(), t.month() as u8, t.day()))
        }
        Value::String(s) => {
            let day = s.get(..10)?;
            if s.len() > 10 && !s[10..].starts_with(['T', 't', ' ']) {
                return None;
            }
            let mut parts = day.splitn(3, '-');
            let year: i32 = parts.next()?.parse().ok()?;
            let month: u8 = parts.next()?.parse().ok()?;
            let dom: u8 = parts.next()?.parse().ok()?;
            let d = time::Date::from_calendar_date(year, time::Month::try_from(month).ok()?, dom)
                .ok()?;
            Some((d.year(), d.month() as u8, d.day()))
        }
        _ => None,
    }
}

/// Keeps a pseudonym key out of `Debug` output.
impl std::fmt::Debug for ClaimMapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimMapper")
            .field("mode", &self.mode)
            .field(
                "pseudonym_key",
                &self.pseudonym_key.as_ref().map(|_| Secret::new(())),
            )
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CtmrinfoClaims, PersonalClaims};

    fn config(toml_claims: ClaimsConfig) -> IdentityConfig {
        let mut cfg: IdentityConfig =
            serde_json::from_value(json!({"issuer": "https://id.brand.example"})).unwrap();
        cfg.claims = toml_claims;
        cfg
    }

    #[test]
    fn claims_are_mapped_with_their_types() {
        let mapping = ClaimsConfig {
            ctmrinfo: CtmrinfoClaims {
                customerId: Some("customer_id".into()),
                balance: Some("balance".into()),
                companySize: Some("size".into()),
                registrationDate: Some("registered".into()),
                ctype: Some("tier".into()),
                ..Default::default()
            },
            personal: PersonalClaims {
                firstname: Some("given_name".into()),
                age: Some("birthdate".into()),
                email: Some("email".into()),
                gender: Some("gender".into()),
                ..Default::default()
            },
            given_name: Some("given_name".into()),
            email: Some("email".into()),
            phone_number: Some("phone_number".into()),
            ..ClaimsConfig::default()
        };
        let mapper = ClaimMapper::build(&config(mapping), &mut Problems::default());
        let upstream = json!({
            "sub": "u1", "given_name": "Alice", "email": "alice@example.test",
            "customer_id": 4711, "balance": "12.5", "size": "x-large",
            "registered": "2020-02-01", "tier": {"nested": true},
            "birthdate": "1996-01-31", "gender": "female", "phone_number": ["not", "text"]
        });
        let profile = mapper.profile(upstream.as_object().unwrap());
        assert_eq!(profile["given_name"], "Alice");
        assert_eq!(profile["email"], "alice@example.test");
        // An array is not a phone number: left out.
        assert!(profile.get("phone_number").is_none());
        let sdes = profile["lp_sdes"].as_array().unwrap();
        let info = &sdes[0]["info"];
        assert_eq!(sdes[0]["type"], "ctmrinfo");
        assert_eq!(info["customerId"], "4711");
        assert_eq!(info["balance"], 12.5);
        assert!(info.get("companySize").is_none(), "not an integer");
        assert!(info.get("ctype").is_none(), "an object is not text");
        assert_eq!(
            info["registrationDate"],
            json!({"day": 1, "month": 2, "year": 2020})
        );
        let personal = &sdes[1]["personal"];
        assert_eq!(sdes[1]["type"], "personal");
        assert_eq!(personal["firstname"], "Alice");
        assert_eq!(personal["gender"], "FEMALE");
        assert_eq!(
            personal["age"],
            json!({"year": 1996, "month": 1, "day": 31})
        );
        assert_eq!(
            personal["contacts"],
            json!([{"email": "alice@example.test"}])
        );
    }

    #[test]
    fn only_the_lines_written_are_sent_and_described() {
        // The shipped config's lines, with email and phone_number removed.
        let cfg: IdentityConfig = figment::Figment::new()
            .merge(
                <figment::providers::Toml as figment::providers::Format>::string(
                    "issuer = \"https://id.brand.example\"\n[claims]\ngiven_name = \"given_name\"\n\
                 family_name = \"family_name\"\n[claims.personal]\nphone = \"mobile\"\n",
                ),
            )
            .extract()
            .unwrap();
        let mapper = ClaimMapper::build(&cfg, &mut Problems::default());
        let upstream = json!({
            "given_name": "Alice", "family_name": "Liddell", "email": "alice@example.test",
            "phone_number": "+4412345", "preferred_username": "al", "mobile": "+4499"
        });
        let profile = mapper.profile(upstream.as_object().unwrap());
        let keys: Vec<&str> = profile.keys().map(String::as_str).collect();
        assert_eq!(keys, ["family_name", "given_name", "lp_sdes"]);
        assert_eq!(
            mapper.describe(),
            [
                "given_name <- given_name",
                "family_name <- family_name",
                "lp_sdes personal.contacts.phone <- mobile"
            ]
        );
        // No table at all: nothing but the subject.
        let cfg: IdentityConfig =
            serde_json::from_value(json!({"issuer": "https://id.brand.example"})).unwrap();
        let mapper = ClaimMapper::build(&cfg, &mut Problems::default());
        assert!(mapper.profile(upstream.as_object().unwrap()).is_empty());
        assert!(mapper.describe().is_empty());
    }

    #[test]
    fn text_with_control_characters_is_left_out() {
        let mapping = ClaimsConfig {
            given_name: Some("given_name".into()),
            family_name: Some("family_name".into()),
            ..ClaimsConfig::default()
        };
        let mapper = ClaimMapper::build(&config(mapping), &mut Problems::default());
        let upstream = json!({"given_name": "Eve\nINFO forged", "family_name": "O\u{202E}gnirts"});
        assert!(mapper.profile(upstream.as_object().unwrap()).is_empty());
    }

    #[test]
    fn no_mapped_claims_no_lp_sdes() {
        let mapper = ClaimMapper::build(&config(ClaimsConfig::default()), &mut Problems::default());
        let profile = mapper.profile(json!({"sub": "u"}).as_object().unwrap());
        assert!(profile.is_empty());
    }

    #[test]
    fn pseudonyms_are_stable_keyed_and_per_issuer() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k");
        std::fs::write(&key, [7u8; 32]).unwrap();
        let mut cfg = config(ClaimsConfig::default());
        cfg.subject.mode = SubjectMode::Pseudonym;
        cfg.subject.pseudonym_key_file = Some(key.clone());
        let mut problems = Problems::default();
        let mapper = ClaimMapper::build(&cfg, &mut problems);
        assert!(problems.is_empty(), "{problems}");
        let a = mapper.subject("https://idp", "alice");
        assert_eq!(a, mapper.subject("https://idp", "alice"));
        assert_ne!(a, "alice");
        assert_ne!(a, mapper.subject("https://other-idp", "alice"));
        assert_ne!(mapper.subject("https://idpa", "lice"), a);

        std::fs::write(&key, [8u8; 32]).unwrap();
        let other = ClaimMapper::build(&cfg, &mut Problems::default());
        assert_ne!(other.subject("https://idp", "alice"), a);

        std::fs::write(&key, [8u8; 31]).unwrap();
        let mut problems = Problems::default();
        ClaimMapper::build(&cfg, &mut problems);
        assert_eq!(problems.0[0].key, "identity.subject.pseudonym_key_file");
    }
}
