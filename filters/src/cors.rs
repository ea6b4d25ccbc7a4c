//! The `cors` filter: Cross-Origin Resource Sharing for browser clients of the
//! HTTP API (Triton has none).
//!
//! A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is
//! answered here and never forwarded; an actual request from an allowed origin
//! gets `Access-Control-Allow-Origin` (and credentials / expose headers) on its
//! answer, whoever wrote it. Everything the answers carry is built at load.

use async_trait::async_trait;
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::chain::Filter;

/// One entry of `allow_origins`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OriginRule {
    /// `*`: any origin.
    Any,
    /// `https://app.example.com`, compared ignoring ASCII case.
    Exact(String),
    /// `https://*.example.com`: the scheme, then one or more labels, then the suffix
    /// (`.example.com`, port included if written); not `https://example.com` itself.
    Subdomain { scheme: String, suffix: String },
}

impl OriginRule {
    fn parse(rule: &str) -> Result<OriginRule, String> {
        if rule == "*" {
            return Ok(OriginRule::Any);
        }
        let Some((scheme, rest)) = rule.split_once("://") else {
            return Err(format!(
                "{rule:?} is not an origin: expected scheme://host[:port] (or \"*\")"
            ));
        };
        if scheme.is_empty() || rest.is_empty() || rest.contains('/') {
            return Err(format!(
                "{rule:?} is not an origin: expected scheme://host[:port], without a path"
            ));
        }
        let lower = rule.to_ascii_lowercase();
        match rest.strip_prefix('*') {
            Some(suffix) if suffix.starts_with('.') && !suffix[1..].contains('*') => {
                Ok(OriginRule::Subdomain {
                    scheme: format!("{}://", scheme.to_ascii_lowercase()),
                    suffix: suffix.to_ascii_lowercase(),
                })
            }
            _ if rest.contains('*') => Err(format!(
                "{rule:?}: a wildcard may only be the first label (https://*.example.com)"
            )),
            _ => Ok(OriginRule::Exact(lower)),
        }
    }

    fn matches(&self, origin: &str) -> bool {
        match self {
            OriginRule::Any => true,
            OriginRule::Exact(exact) => exact.eq_ignore_ascii_case(origin),
            OriginRule::Subdomain { scheme, suffix } => {
                let len = origin.len();
                len > scheme.len() + suffix.len()
                    && origin.is_char_boundary(scheme.len())
                    && origin.is_char_boundary(len - suffix.len())
                    && origin[..scheme.len()].eq_ignore_ascii_case(scheme)
                    && origin[len - suffix.len()..].eq_ignore_ascii_case(suffix)
                    && !origin[scheme.len()..len - suffix.len()].contains(['/', ':'])
            }
        }
    }
}

/// A `[filters.NAME]` section of `kind = "cors"`, as written.
#[derive(Debug, Clone)]
pub struct CorsSettings {
    pub allow_origins: Vec<String>,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub max_age_s: u64,
    pub allow_credentials: bool,
}

/// Which setting a [`Cors::new`] error is about, for the key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsKey {
    AllowOrigins,
    AllowMethods,
    AllowHeaders,
    ExposeHeaders,
    AllowCredentials,
}

/// Why a preflight is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreflightRefusal {
    Origin,
    Method,
    Header,
}

impl PreflightRefusal {
    /// The message of the 403 answer.
    pub fn message(self) -> &'static str {
        match self {
            PreflightRefusal::Origin => "CORS preflight refused: origin not allowed",
            PreflightRefusal::Method => "CORS preflight refused: method not allowed",
            PreflightRefusal::Header => "CORS preflight refused: a request header is not allowed",
        }
    }
}

/// The validated policy, with its answer headers ready.
#[derive(Debug)]
pub struct Cors {
    origins: Vec<OriginRule>,
    /// Allowed with `*` and without credentials: answers say `*`, whatever the origin.
    any_origin: bool,
    credentials: bool,
    methods: Vec<Method>,
    allow_methods: HeaderValue,
    /// Lowercase, as `Access-Control-Request-Headers` is compared.
    headers: Vec<HeaderName>,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    max_age: HeaderValue,
}

const STAR: HeaderValue = HeaderValue::from_static("*");
const TRUE: HeaderValue = HeaderValue::from_static("true");
const VARY_ORIGIN: HeaderValue = HeaderValue::from_static("origin");
const VARY_PREFLIGHT: HeaderValue = HeaderValue::from_static(
    "origin, access-control-request-method, access-control-request-headers",
);

impl Cors {
    pub fn new(settings: CorsSettings) -> Result<Cors, (CorsKey, String)> {
        if settings.allow_origins.is_empty() {
            return Err((
                CorsKey::AllowOrigins,
                "must name at least one origin".into(),
            ));
        }
        let origins = settings
            .allow_origins
            .iter()
            .map(|o| OriginRule::parse(o))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| (CorsKey::AllowOrigins, e))?;
        let any_origin = origins.contains(&OriginRule::Any);
        if any_origin && settings.allow_credentials {
            return Err((
                CorsKey::AllowCredentials,
                "cannot be true with allow_origins = [\"*\"]: browsers refuse credentials \
                 for a wildcard origin; list the origins"
                    .into(),
            ));
        }
        let methods = settings
            .allow_methods
            .iter()
            .map(|m| {
                Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| (CorsKey::AllowMethods, format!("invalid method {m:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if methods.is_empty() {
            return Err((
                CorsKey::AllowMethods,
                "must name at least one method".into(),
            ));
        }
        let names = |key: CorsKey, list: &[String]| {
            list.iter()
                .map(|h| {
                    HeaderName::from_bytes(h.as_bytes())
                        .map_err(|_| (key.clone(), format!("invalid header name {h:?}")))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let headers = names(CorsKey::AllowHeaders, &settings.allow_headers)?;
        let expose = names(CorsKey::ExposeHeaders, &settings.expose_headers)?;
        let joined = |list: Vec<&str>| {
            (!list.is_empty()).then(|| {
                HeaderValue::from_str(&list.join(", ")).expect("validated names and methods")
            })
        };
        Ok(Cors {
            origins,
            any_origin,
            credentials: settings.allow_credentials,
            allow_methods: joined(methods.iter().map(Method::as_str).collect())
                .expect("at least one method"),
            methods,
            allow_headers: joined(headers.iter().map(HeaderName::as_str).collect()),
            expose_headers: joined(expose.iter().map(HeaderName::as_str).collect()),
            headers,
            max_age: HeaderValue::from(settings.max_age_s),
        })
    }

    /// Whether `request` is a preflight: `OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`. Other `OPTIONS` requests are forwarded.
    pub fn is_preflight(method: &Method, request: &HeaderMap) -> bool {
        method == Method::OPTIONS
            && request.contains_key(ORIGIN)
            && request.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
    }

    fn allowed_origin(&self, origin: &HeaderValue) -> bool {
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        self.origins.iter().any(|rule| rule.matches(origin))
    }

    /// The `Access-Control-Allow-Origin` (and credentials) headers for `origin`.
    fn allow_origin(&self, origin: &HeaderValue, out: &mut Vec<(HeaderName, HeaderValue)>) {
        if self.any_origin {
            out.push((ACCESS_CONTROL_ALLOW_ORIGIN, STAR));
            return;
        }
        out.push((ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()));
        if self.credentials {
            out.push((ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE));
        }
    }

    /// The answer headers of a preflight (see [`Cors::is_preflight`]), or why it
    /// is refused.
    pub fn preflight(
        &self,
        request: &HeaderMap,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, PreflightRefusal> {
        let origin = request.get(ORIGIN).filter(|o| self.allowed_origin(o));
        let Some(origin) = origin else {
            return Err(PreflightRefusal::Origin);
        };
        let method = request
            .get(ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok());
        if !method.is_some_and(|m| self.methods.contains(&m)) {
            return Err(PreflightRefusal::Method);
        }
        let asked = request
            .get_all(ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("\u{0}").split(','))
            .map(str::trim)
            .filter(|h| !h.is_empty());
        for header in asked {
            if !self
                .headers
                .iter()
                .any(|h| h.as_str().eq_ignore_ascii_case(header))
            {
                return Err(PreflightRefusal::Header);
            }
        }
        let mut out = Vec::with_capacity(6);
        self.allow_origin(origin, &mut out);
        out.push((ACCESS_CONTROL_ALLOW_METHODS, self.allow_methods.clone()));
        if let Some(headers) = &self.allow_headers {
            out.push((ACCESS_CONTROL_ALLOW_HEADERS, headers.clone()));
        }
        out.push((ACCESS_CONTROL_MAX_AGE, self.max_age.clone()));
        out.push((VARY, VARY_PREFLIGHT));
        Ok(out)
    }

    /// Adds the CORS headers an actual request's answer carries to `out`: none
    /// without an `Origin` or from an origin not allowed (the browser then keeps
    /// the answer from the page).
    pub fn actual(&self, request: &HeaderMap, out: &mut Vec<(HeaderName, HeaderValue)>) {
        if !self.any_origin {
            // The answer depends on the origin: caches must keep one per origin.
            out.push((VARY, VARY_ORIGIN));
        }
        let Some(origin) = request.get(ORIGIN).filter(|o| self.allowed_origin(o)) else {
            return;
        };
        self.allow_origin(origin, out);
        if let Some(expose) = &self.expose_headers {
            out.push((ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone()));
        }
    }
}

/// In a chain it lets every request through: the proxy runs it before the whole
/// chain (see [`Cors::preflight`], [`Cors::actual`]), so that a preflight never
/// meets an authentication filter and refusals carry CORS headers.
#[async_trait]
impl Filter for Cors {}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(origins: &[&str]) -> CorsSettings {
        CorsSettings {
            allow_origins: origins.iter().map(|o| o.to_string()).collect(),
            allow_methods: vec!["GET".into(), "post".into()],
            allow_headers: vec!["content-type".into(), "Authorization".into()],
            expose_headers: vec!["inference-header-content-length".into()],
            max_age_s: 600,
            allow_credentials: false,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| {
                (
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    fn value<'a>(out: &'a [(HeaderName, HeaderValue)], name: &str) -> Option<&'a str> {
        out.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.to_str().unwrap())
    }

    fn expect(out: &[(HeaderName, HeaderValue)], expected: &[(&str, Option<&str>)]) {
        for (name, want) in expected {
            assert_eq!(value(out, name), *want, "{name}");
        }
    }

    #[test]
    fn origins_match_exactly_by_wildcard_or_by_subdomain() {
        let cors = Cors::new(settings(&[
            "https://app.example.com",
            "https://*.corp.example",
        ]))
        .unwrap();
        let allowed = |o: &str| cors.allowed_origin(&HeaderValue::from_str(o).unwrap());
        assert!(allowed("https://app.example.com"));
        assert!(allowed("HTTPS://App.Example.com"));
        assert!(!allowed("http://app.example.com"));
        assert!(!allowed("https://app.example.com.evil"));
        assert!(allowed("https://a.corp.example"));
        assert!(allowed("https://a.b.corp.example"));
        assert!(!allowed("https://corp.example"));
        assert!(!allowed("https://evilcorp.example"));
        assert!(!allowed("https://a.corp.example:8443"));
        let any = Cors::new(settings(&["*"])).unwrap();
        assert!(any.allowed_origin(&HeaderValue::from_static("null")));
    }

    #[test]
    fn bad_settings_are_refused_with_their_key() {
        let err = |s: CorsSettings| Cors::new(s).unwrap_err().0;
        assert_eq!(err(settings(&[])), CorsKey::AllowOrigins);
        assert_eq!(err(settings(&["app.example.com"])), CorsKey::AllowOrigins);
        assert_eq!(
            err(settings(&["https://a.*.example"])),
            CorsKey::AllowOrigins
        );
        assert_eq!(err(settings(&["https://x/path"])), CorsKey::AllowOrigins);
        let mut credentials = settings(&["*"]);
        credentials.allow_credentials = true;
        assert_eq!(err(credentials), CorsKey::AllowCredentials);
        let mut methods = settings(&["*"]);
        methods.allow_methods = vec!["GE T".into()];
        assert_eq!(err(methods), CorsKey::AllowMethods);
        let mut names = settings(&["*"]);
        names.allow_headers = vec!["bad header".into()];
        assert_eq!(err(names), CorsKey::AllowHeaders);
    }

    #[test]
    fn preflight_answers_allowed_origin_method_and_headers() {
        let cors = Cors::new(settings(&["https://app.example.com"])).unwrap();
        let out = cors
            .preflight(&headers(&[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "Content-Type, authorization",
                ),
            ]))
            .unwrap();
        expect(
            &out,
            &[
                (
                    "access-control-allow-origin",
                    Some("https://app.example.com"),
                ),
                ("access-control-allow-methods", Some("GET, POST")),
                (
                    "access-control-allow-headers",
                    Some("content-type, authorization"),
                ),
                ("access-control-max-age", Some("600")),
            ],
        );
        assert!(value(&out, "vary").unwrap().contains("origin"));
        assert_eq!(value(&out, "access-control-allow-credentials"), None);
    }

    #[test]
    fn preflight_refusals_say_why() {
        let cors = Cors::new(settings(&["https://app.example.com"])).unwrap();
        let ask = |origin: &str, method: &str, asked: &str| {
            cors.preflight(&headers(&[
                ("origin", origin),
                ("access-control-request-method", method),
                ("access-control-request-headers", asked),
            ]))
            .unwrap_err()
        };
        assert_eq!(
            ask("https://evil.example", "POST", ""),
            PreflightRefusal::Origin
        );
        assert_eq!(
            ask("https://app.example.com", "DELETE", ""),
            PreflightRefusal::Method
        );
        assert_eq!(
            ask("https://app.example.com", "POST", "content-type, x-secret"),
            PreflightRefusal::Header
        );
    }

    #[test]
    fn actual_requests_get_origin_credentials_and_expose_headers() {
        let mut with_credentials = settings(&["https://app.example.com"]);
        with_credentials.allow_credentials = true;
        let cors = Cors::new(with_credentials).unwrap();
        let mut out = Vec::new();
        cors.actual(&headers(&[("origin", "https://app.example.com")]), &mut out);
        expect(
            &out,
            &[
                ("vary", Some("origin")),
                (
                    "access-control-allow-origin",
                    Some("https://app.example.com"),
                ),
                ("access-control-allow-credentials", Some("true")),
                (
                    "access-control-expose-headers",
                    Some("inference-header-content-length"),
                ),
            ],
        );
        let mut other = Vec::new();
        cors.actual(&headers(&[("origin", "https://evil.example")]), &mut other);
        assert_eq!(value(&other, "access-control-allow-origin"), None);

        let any = Cors::new(settings(&["*"])).unwrap();
        let mut out = Vec::new();
        any.actual(&headers(&[("origin", "https://x.example")]), &mut out);
        assert_eq!(value(&out, "access-control-allow-origin"), Some("*"));
        assert_eq!(value(&out, "vary"), None);
    }

    #[test]
    fn only_options_with_origin_and_request_method_is_a_preflight() {
        let full = headers(&[
            ("origin", "https://a.example"),
            ("access-control-request-method", "POST"),
        ]);
        assert!(Cors::is_preflight(&Method::OPTIONS, &full));
        assert!(!Cors::is_preflight(&Method::POST, &full));
        let no_method = headers(&[("origin", "https://a.example")]);
        assert!(!Cors::is_preflight(&Method::OPTIONS, &no_method));
    }
}
