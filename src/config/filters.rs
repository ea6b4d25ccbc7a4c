//! `[filters.*]` sections and the chains routes build from them.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

use filters::api_key::{self, ApiKeySettings, KeyTable};
use filters::claims::ClaimsFilter;
use filters::cors::{Cors, CorsKey, CorsSettings};
use filters::jwt::jwks::parse_ca_pem;
use filters::jwt::{
    Algorithm, JwksUrlSettings, JwtSettings, KeySet, KeySource, TokenSource, ValidationSettings,
};
use filters::rate_limit::gcra::Quota;
use filters::rate_limit::{Cost, KeyPart, RateLimitSettings};

use super::file::{
    ApiKeyEntry, ApiKeyFile, ApiKeysFile, ClaimsFile, CorsFile, CostFile, FilterFile, JwtFile,
    RateLimitFile,
};
use super::{Errors, FilterDef, FilterId, FilterSpec};

/// What a filter provides to, and needs from, the filters before it in a chain.
struct Role {
    /// Sets `identity.claims`.
    verifies_jwt: bool,
    /// Sets `identity.tenant`.
    sets_tenant: bool,
    needs_jwt: bool,
    needs_tenant: bool,
}

/// The filters declared in the file, by name, with what chain checks need to know.
#[derive(Default)]
pub(super) struct Declared {
    ids: HashMap<String, FilterId>,
    roles: Vec<Role>,
    /// Names whose section failed to parse: routes naming them are not reported again.
    broken: Vec<String>,
    pub defs: Vec<FilterDef>,
}

impl Declared {
    /// Checks every `[filters.NAME]` section; paths in files are relative to `base`.
    pub fn parse(value: toml::Value, base: &Path, errors: &mut Errors) -> Declared {
        let mut declared = Declared::default();
        let toml::Value::Table(table) = value else {
            errors.push(
                "filters",
                "expected a table of named filters ([filters.NAME])",
            );
            return declared;
        };
        for (name, section) in table {
            let path = format!("filters.{name}");
            let fingerprint = fingerprint(&section, base);
            let before = errors.0.len();
            let Some(file) = errors.typed::<FilterFile>(&path, section) else {
                declared.broken.push(name);
                continue;
            };
            let (spec, role) = match file {
                FilterFile::Jwt(jwt) => jwt_spec(&path, *jwt, base, errors),
                FilterFile::Claims(claims) => claims_spec(claims),
                FilterFile::ApiKey(keys) => api_key_spec(&path, keys, base, errors),
                FilterFile::RateLimit(limit) => rate_limit_spec(&path, limit, errors),
                FilterFile::Cors(cors) => cors_spec(&path, cors, errors),
            };
            let Some(spec) = spec.filter(|_| errors.0.len() == before) else {
                declared.broken.push(name);
                continue;
            };
            declared.ids.insert(name.clone(), declared.defs.len());
            declared.roles.push(role);
            declared.defs.push(FilterDef {
                name,
                spec,
                fingerprint,
            });
        }
        declared
    }

    fn is_cors(&self, id: FilterId) -> bool {
        matches!(self.defs[id].spec, FilterSpec::Cors(_))
    }

    /// Whether `chain` verifies a JWT, so later steps may read its claims.
    pub fn verifies_jwt(&self, chain: &[FilterId]) -> bool {
        chain.iter().any(|&id| self.roles[id].verifies_jwt)
    }

    /// Resolves the filter names at `path` into a chain that starts with
    /// `prefix` (an already checked chain), checking that every name exists,
    /// appears once, and follows the filters it depends on.
    pub fn chain(
        &self,
        prefix: &[FilterId],
        path: &str,
        names: &[String],
        errors: &mut Errors,
    ) -> Vec<FilterId> {
        let mut chain = prefix.to_vec();
        let mut jwt = self.verifies_jwt(prefix);
        let mut tenant = prefix.iter().any(|&id| self.roles[id].sets_tenant);
        for (i, name) in names.iter().enumerate() {
            let at = format!("{path}[{i}]");
            let Some(&id) = self.ids.get(name) else {
                if !self.broken.contains(name) {
                    errors.push(&at, format!("no filter named {name:?}"));
                }
                continue;
            };
            if chain.contains(&id) {
                errors.push(&at, format!("filter {name:?} is already in this chain"));
                continue;
            }
            if self.is_cors(id) && chain.iter().any(|&other| self.is_cors(other)) {
                errors.push(
                    &at,
                    format!("filter {name:?}: this chain already has a `cors` filter"),
                );
                continue;
            }
            let role = &self.roles[id];
            if role.needs_jwt && !jwt {
                errors.push(
                    &at,
                    format!("filter {name:?} reads JWT claims: put a `jwt` filter before it"),
                );
            }
            if role.needs_tenant && !tenant {
                errors.push(
                    &at,
                    format!(
                        "filter {name:?} is keyed by tenant: put an `api_key` filter (or a `jwt` \
                         filter with `tenant_claim`) before it"
                    ),
                );
            }
            jwt |= role.verifies_jwt;
            tenant |= role.sets_tenant;
            chain.push(id);
        }
        chain
    }
}

/// What a `[filters.NAME]` section says, with the files it names: a reload
/// keeps the running filter (its buckets, caches, key sets) when this is unchanged.
fn fingerprint(section: &toml::Value, base: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    section.to_string().hash(&mut hasher);
    if let toml::Value::Table(keys) = section {
        for (key, value) in keys.iter().filter(|(key, _)| key.ends_with("_file")) {
            key.hash(&mut hasher);
            value
                .as_str()
                .and_then(|file| std::fs::read(base.join(file)).ok())
                .hash(&mut hasher);
        }
        // A secret from the environment changes with it (read again at each reload).
        for (key, value) in keys.iter().filter(|(key, _)| key.ends_with("_env")) {
            key.hash(&mut hasher);
            value.as_str().and_then(std::env::var_os).hash(&mut hasher);
        }
    }
    hasher.finish()
}

fn header_name(path: &str, value: &str, errors: &mut Errors) -> Option<HeaderName> {
    match HeaderName::from_bytes(value.as_bytes()) {
        Ok(name) => Some(name),
        Err(_) => {
            errors.push(path, format!("invalid header name {value:?}"));
            None
        }
    }
}

pub(super) fn read_file(
    path: &str,
    file: &str,
    base: &Path,
    errors: &mut Errors,
) -> Option<String> {
    let full: PathBuf = base.join(file);
    match std::fs::read_to_string(&full) {
        Ok(text) => Some(text),
        Err(e) => {
            errors.push(path, format!("cannot read {}: {e}", full.display()));
            None
        }
    }
}

/// The HMAC secret of a jwt filter, with the key path it came from: inline,
/// from a file (one trailing newline, as editors and `echo` add, is not part of
/// it) or from an environment variable. `None` when none is set or it cannot be
/// read (an error then).
fn hmac_secret(
    path: &str,
    file: &JwtFile,
    base: &Path,
    errors: &mut Errors,
) -> Option<(String, String)> {
    let (key, secret) = if let Some(secret) = &file.hmac_secret {
        ("hmac_secret", Some(secret.clone()))
    } else if let Some(name) = &file.hmac_secret_file {
        let at = format!("{path}.hmac_secret_file");
        let text = read_file(&at, name, base, errors);
        let secret = text.map(|text| {
            let line = text.strip_suffix('\n').unwrap_or(&text);
            line.strip_suffix('\r').unwrap_or(line).to_owned()
        });
        ("hmac_secret_file", secret)
    } else if let Some(variable) = &file.hmac_secret_env {
        let secret = match std::env::var(variable) {
            Ok(secret) => Some(secret),
            Err(e) => {
                errors.push(
                    &format!("{path}.hmac_secret_env"),
                    format!("environment variable {variable}: {e}"),
                );
                None
            }
        };
        ("hmac_secret_env", secret)
    } else {
        return None;
    };
    let at = format!("{path}.{key}");
    let secret = secret?;
    if secret.is_empty() {
        errors.push(&at, "must not be empty");
    } else if secret.len() < 32 {
        errors.push(
            &at,
            "must be at least 32 bytes (HS256 needs 256 bits of key)",
        );
    }
    Some((at, secret))
}

fn jwt_spec(
    path: &str,
    file: JwtFile,
    base: &Path,
    errors: &mut Errors,
) -> (Option<FilterSpec>, Role) {
    let at = |key: &str| format!("{path}.{key}");
    let sources = [
        file.jwks_file.is_some(),
        file.jwks.is_some(),
        file.hmac_secret.is_some(),
        file.hmac_secret_file.is_some(),
        file.hmac_secret_env.is_some(),
        file.jwks_url.is_some(),
    ];
    let keys = match sources.iter().filter(|set| **set).count() {
        1 => {
            let parsed = if let Some(jwks_file) = &file.jwks_file {
                read_file(&at("jwks_file"), jwks_file, base, errors)
                    .map(|text| (at("jwks_file"), KeySet::from_jwks(&text)))
            } else if let Some(jwks) = &file.jwks {
                Some((at("jwks"), KeySet::from_jwks(jwks)))
            } else {
                hmac_secret(path, &file, base, errors)
                    .map(|(key_path, secret)| (key_path, Ok(KeySet::hmac(secret.as_bytes()))))
            };
            match parsed {
                Some((_, Ok(keys))) => Some(KeySource::Static(keys)),
                Some((key_path, Err(e))) => {
                    errors.push(&key_path, format!("invalid JWKS: {e}"));
                    None
                }
                None => file.jwks_url.as_ref().and_then(|url| {
                    let extra_roots = match &file.jwks_ca_file {
                        None => Vec::new(),
                        Some(ca_file) => {
                            let at = at("jwks_ca_file");
                            let pem = read_file(&at, ca_file, base, errors)?;
                            match parse_ca_pem(pem.as_bytes()) {
                                Ok(roots) => roots,
                                Err(e) => {
                                    errors.push(&at, e);
                                    return None;
                                }
                            }
                        }
                    };
                    let settings = JwksUrlSettings {
                        url: url.clone(),
                        extra_roots,
                        refresh_interval: Duration::from_secs(file.jwks_refresh_secs.max(1)),
                        min_refresh_interval: Duration::from_secs(file.jwks_min_refresh_secs),
                        timeout: Duration::from_millis(file.jwks_timeout_ms.max(1)),
                    };
                    match settings.validate() {
                        Ok(()) => Some(KeySource::Url(settings)),
                        Err(e) => {
                            errors.push(&at("jwks_url"), e);
                            None
                        }
                    }
                }),
            }
        }
        _ => {
            errors.push(
                path,
                "set exactly one of `jwks_file`, `jwks`, `hmac_secret`, `hmac_secret_file`, \
                 `hmac_secret_env` or `jwks_url`",
            );
            None
        }
    };
    let algorithms = file
        .algorithms
        .iter()
        .enumerate()
        .filter_map(|(i, name)| match Algorithm::from_str(name) {
            Ok(algorithm) => Some(algorithm),
            Err(_) => {
                errors.push(
                    &format!("{path}.algorithms[{i}]"),
                    format!(
                        "unknown algorithm {name:?} (expected HS256/384/512, RS256/384/512, \
                         PS256/384/512, ES256/384 or EdDSA)"
                    ),
                );
                None
            }
        })
        .collect();
    let token = header_name(&at("header"), &file.header, errors).map(|name| {
        if name == http::header::AUTHORIZATION {
            TokenSource::Bearer(name)
        } else {
            TokenSource::Header(name)
        }
    });
    let claims_to_headers = file
        .claims_to_headers
        .into_iter()
        .filter_map(|(claim, header)| {
            let name = header_name(
                &format!("{path}.claims_to_headers.{claim}"),
                &header,
                errors,
            )?;
            Some((claim, name))
        })
        .collect();
    let spec = match (keys, token) {
        (Some(keys), Some(token)) => Some(JwtSettings {
            keys,
            validation: ValidationSettings {
                algorithms,
                issuers: file.issuers,
                audiences: file.audiences,
                leeway_secs: file.leeway_secs,
                required_claims: file.required_claims,
                cache_capacity: file.cache_capacity,
            },
            token,
            forward_token: file.forward_token,
            claims_to_headers,
            tenant_claim: file.tenant_claim.clone(),
        }),
        _ => None,
    };
    let role = Role {
        verifies_jwt: true,
        sets_tenant: file.tenant_claim.is_some(),
        needs_jwt: false,
        needs_tenant: false,
    };
    (spec.map(FilterSpec::Jwt), role)
}

fn claims_spec(file: ClaimsFile) -> (Option<FilterSpec>, Role) {
    let require: Vec<(String, String)> = file.require.into_iter().collect();
    (
        Some(FilterSpec::Claims(ClaimsFilter::new(
            file.model_claim,
            require,
        ))),
        Role {
            verifies_jwt: false,
            sets_tenant: false,
            needs_jwt: true,
            needs_tenant: false,
        },
    )
}

fn api_key_spec(
    path: &str,
    file: ApiKeyFile,
    base: &Path,
    errors: &mut Errors,
) -> (Option<FilterSpec>, Role) {
    let mut entries: Vec<(String, ApiKeyEntry)> = Vec::new();
    for (i, entry) in file.keys.into_iter().flatten().enumerate() {
        entries.push((format!("{path}.keys[{i}]"), entry));
    }
    if let Some(keys_file) = &file.keys_file {
        let at = format!("{path}.keys_file");
        if let Some(text) = read_file(&at, keys_file, base, errors) {
            let mut inner = Errors::default();
            match toml::from_str::<toml::Table>(&text) {
                Ok(table) => {
                    if let Some(parsed) = inner.typed::<ApiKeysFile>("", toml::Value::Table(table))
                    {
                        for (i, entry) in parsed.keys.into_iter().enumerate() {
                            entries.push((format!("{at}: keys[{i}]"), entry));
                        }
                    }
                }
                Err(e) => inner.push("", format!("invalid TOML: {}", e.to_string().trim_end())),
            }
            for error in inner.0 {
                let inner_path = error.path.trim_start_matches('.');
                let separator = if inner_path.is_empty() { "" } else { ": " };
                errors.push(&at, format!("{inner_path}{separator}{}", error.message));
            }
        }
    }
    if entries.is_empty() {
        errors.push(path, "no keys: set `keys`, `keys_file` or both");
    }
    let mut digests = Vec::new();
    let mut seen = BTreeMap::new();
    for (at, entry) in entries {
        if entry.tenant.is_empty() || HeaderValue::from_str(&entry.tenant).is_err() {
            errors.push(
                &format!("{at}.tenant"),
                "must be a non-empty, printable ASCII name",
            );
        }
        let digest = match (&entry.key, &entry.sha256) {
            (Some(key), None) if !key.is_empty() => Some(api_key::digest(key.as_bytes())),
            (None, Some(hex)) => match api_key::parse_digest(hex) {
                Ok(digest) => Some(digest),
                Err(e) => {
                    errors.push(&format!("{at}.sha256"), e);
                    None
                }
            },
            _ => {
                errors.push(&at, "set exactly one of `key` (non-empty) or `sha256`");
                None
            }
        };
        if let Some(digest) = digest {
            if let Some(other) = seen.insert(digest, at.clone()) {
                errors.push(&at, format!("the same key as {other}"));
            }
            digests.push((digest, entry.tenant));
        }
    }
    let header = header_name(&format!("{path}.header"), &file.header, errors);
    let tenant_header = file
        .tenant_header
        .as_deref()
        .and_then(|name| header_name(&format!("{path}.tenant_header"), name, errors));
    let spec = header.map(|header| {
        FilterSpec::ApiKey(ApiKeySettings {
            keys: KeyTable::new(digests),
            header,
            forward_key: file.forward_key,
            tenant_header,
        })
    });
    (
        spec,
        Role {
            verifies_jwt: false,
            sets_tenant: true,
            needs_jwt: false,
            needs_tenant: false,
        },
    )
}

fn rate_limit_spec(
    path: &str,
    file: RateLimitFile,
    errors: &mut Errors,
) -> (Option<FilterSpec>, Role) {
    if file.fleet_size == 0 {
        errors.push(&format!("{path}.fleet_size"), "must be at least 1");
    }
    let fleet_size = file.fleet_size.max(1);
    let rate = file.rate_per_second / f64::from(fleet_size);
    let burst = file
        .burst
        .unwrap_or_else(|| file.rate_per_second.ceil().clamp(1.0, f64::from(u32::MAX)) as u32);
    let quota = match Quota::new(rate, burst.div_ceil(fleet_size)) {
        Ok(quota) => Some(quota),
        Err(e) => {
            errors.push(path, e);
            None
        }
    };
    let (mut needs_jwt, mut needs_tenant) = (false, false);
    let key = file
        .key
        .iter()
        .enumerate()
        .filter_map(|(i, part)| {
            let at = format!("{path}.key[{i}]");
            match part.split_once(':') {
                None if part == "client_ip" => Some(KeyPart::ClientIp),
                None if part == "model" => Some(KeyPart::Model),
                None if part == "tenant" => {
                    needs_tenant = true;
                    Some(KeyPart::Tenant)
                }
                Some(("header", name)) => header_name(&at, name, errors).map(KeyPart::Header),
                Some(("claim", name)) if !name.is_empty() => {
                    needs_jwt = true;
                    Some(KeyPart::Claim(name.to_owned()))
                }
                _ => {
                    errors.push(
                        &at,
                        format!(
                            "unknown key part {part:?} (expected \"client_ip\", \"tenant\", \
                             \"model\", \"header:NAME\" or \"claim:NAME\")"
                        ),
                    );
                    None
                }
            }
        })
        .collect();
    let max_keys = file.max_keys;
    if max_keys == 0 {
        errors.push(&format!("{path}.max_keys"), "must be at least 1");
    }
    let spec = quota.map(|quota| {
        FilterSpec::RateLimit(RateLimitSettings {
            quota,
            key,
            cost: match file.cost {
                CostFile::Request => Cost::Request,
                CostFile::BatchSize => Cost::BatchSize,
            },
            max_keys,
            headers: file.headers,
        })
    });
    (
        spec,
        Role {
            verifies_jwt: false,
            sets_tenant: false,
            needs_jwt,
            needs_tenant,
        },
    )
}

fn cors_spec(path: &str, file: CorsFile, errors: &mut Errors) -> (Option<FilterSpec>, Role) {
    let settings = CorsSettings {
        allow_origins: file.allow_origins,
        allow_methods: file.allow_methods,
        allow_headers: file.allow_headers,
        expose_headers: file.expose_headers,
        max_age_s: file.max_age_s,
        allow_credentials: file.allow_credentials,
    };
    let spec = match Cors::new(settings) {
        Ok(cors) => Some(FilterSpec::Cors(std::sync::Arc::new(cors))),
        Err((key, message)) => {
            let key = match key {
                CorsKey::AllowOrigins => "allow_origins",
                CorsKey::AllowMethods => "allow_methods",
                CorsKey::AllowHeaders => "allow_headers",
                CorsKey::ExposeHeaders => "expose_headers",
                CorsKey::AllowCredentials => "allow_credentials",
            };
            errors.push(&format!("{path}.{key}"), message);
            None
        }
    };
    (
        spec,
        Role {
            verifies_jwt: false,
            sets_tenant: false,
            needs_jwt: false,
            needs_tenant: false,
        },
    )
}
