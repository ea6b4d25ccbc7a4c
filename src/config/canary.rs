//! A route's canary sections: `[[routes.splits]]` and `[routes.mirror]`.

use std::collections::HashMap;
use std::time::Duration;

use filters::mirror::compare::Tolerance;
use filters::split::{Rule, Selector, Split};
use http::HeaderName;

use super::file::{MirrorFile, RouteFile, SplitFile};
use super::{Errors, Mirror, PoolId, RouteSplit, Side};

/// What a canary section needs to know about the rest of the file.
pub(super) struct Context<'a> {
    pub pool_ids: &'a HashMap<&'a str, PoolId>,
    /// Pools that exist but failed their own checks: not reported again.
    pub declared_pools: &'a [String],
    /// Whether the route's chain verifies a JWT (claim rules need one).
    pub verifies_jwt: bool,
}

impl Context<'_> {
    fn pool(&self, path: &str, name: &str, errors: &mut Errors) -> Option<PoolId> {
        let id = self.pool_ids.get(name).copied();
        if id.is_none() && !self.declared_pools.iter().any(|p| p == name) {
            errors.push(path, format!("no pool named {name:?}"));
        }
        id
    }
}

/// The fields a split side and a mirror share.
struct SelectFields<'a> {
    percent: Option<f64>,
    header: &'a Option<String>,
    header_value: &'a Option<String>,
    claim: &'a Option<String>,
    claim_value: &'a Option<String>,
    version: &'a Option<String>,
}

impl<'a> From<&'a SplitFile> for SelectFields<'a> {
    fn from(f: &'a SplitFile) -> Self {
        SelectFields {
            percent: Some(f.percent),
            header: &f.header,
            header_value: &f.header_value,
            claim: &f.claim,
            claim_value: &f.claim_value,
            version: &f.version,
        }
    }
}

impl<'a> From<&'a MirrorFile> for SelectFields<'a> {
    fn from(f: &'a MirrorFile) -> Self {
        SelectFields {
            percent: f.percent,
            header: &f.header,
            header_value: &f.header_value,
            claim: &f.claim,
            claim_value: &f.claim_value,
            version: &f.version,
        }
    }
}

/// Checks the rule, share and version of a side or mirror; `default_percent`
/// applies when no share is set (given whether a rule is).
fn selector(
    path: &str,
    fields: SelectFields<'_>,
    default_percent: impl Fn(bool) -> f64,
    context: &Context<'_>,
    errors: &mut Errors,
) -> Selector {
    let header =
        fields
            .header
            .as_deref()
            .and_then(|name| match HeaderName::from_bytes(name.as_bytes()) {
                Ok(name) => Some(Rule::Header {
                    name,
                    value: fields.header_value.clone(),
                }),
                Err(_) => {
                    errors.push(
                        &format!("{path}.header"),
                        format!("invalid header name {name:?}"),
                    );
                    None
                }
            });
    if fields.header.is_none() && fields.header_value.is_some() {
        errors.push(&format!("{path}.header_value"), "set `header` too");
    }
    if fields.claim.is_none() && fields.claim_value.is_some() {
        errors.push(&format!("{path}.claim_value"), "set `claim` too");
    }
    let claim = fields.claim.as_ref().map(|name| Rule::Claim {
        name: name.clone(),
        value: fields.claim_value.clone(),
    });
    if claim.is_some() && !context.verifies_jwt {
        errors.push(
            &format!("{path}.claim"),
            "reads JWT claims: put a `jwt` filter in this route's chain (or in server.filters)",
        );
    }
    if header.is_some() && claim.is_some() {
        errors.push(path, "set `header` or `claim`, not both");
    }
    if fields.version.as_deref() == Some("") {
        errors.push(&format!("{path}.version"), "must not be empty");
    }
    if let Some(version) = fields.version.as_deref() {
        if version.contains(['/', '?', '#']) || version.chars().any(char::is_whitespace) {
            errors.push(
                &format!("{path}.version"),
                format!("{version:?} is not a model version"),
            );
        }
    }
    let rule = header.or(claim);
    let percent = fields
        .percent
        .unwrap_or_else(|| default_percent(rule.is_some()));
    if !(0.0..=100.0).contains(&percent) {
        errors.push(
            &format!("{path}.percent"),
            format!("must be between 0 and 100, found {percent}"),
        );
    }
    Selector {
        rule,
        percent: percent.clamp(0.0, 100.0),
    }
}

pub(super) fn split(
    path: &str,
    route: &RouteFile,
    route_pool: PoolId,
    context: &Context<'_>,
    errors: &mut Errors,
) -> Option<RouteSplit> {
    let files = route.splits.as_ref()?;
    let mut choose = Split::default();
    let mut sides = Vec::new();
    let mut total = 0.0;
    for (i, file) in files.iter().enumerate() {
        let path = format!("{path}.splits[{i}]");
        let pool = match &file.pool {
            Some(name) => context.pool(&format!("{path}.pool"), name, errors),
            None => Some(route_pool),
        };
        let select = selector(&path, file.into(), |_| 0.0, context, errors);
        total += select.percent;
        if select.rule.is_none() && select.percent == 0.0 {
            errors.push(
                &path,
                "takes no request: set `percent`, `header` or `claim`",
            );
        }
        if file.pool.is_none() && file.version.is_none() {
            errors.push(
                &path,
                "sends requests where the route already does: set `pool`, `version` or both",
            );
        }
        let Some(pool) = pool else { continue };
        let pool_name = file.pool.as_deref().unwrap_or(&route.pool);
        sides.push(Side {
            pool,
            version: file.version.as_deref().map(Into::into),
            label: match &file.version {
                Some(v) => format!("{pool_name}@{v}").into(),
                None => pool_name.into(),
            },
        });
        choose.sides.push(select);
    }
    if total > 100.0 + 1e-9 {
        errors.push(
            &format!("{path}.splits"),
            format!("shares add up to {total}%, more than 100"),
        );
    }
    (!sides.is_empty()).then_some(RouteSplit { choose, sides })
}

pub(super) fn mirror(
    path: &str,
    file: &MirrorFile,
    context: &Context<'_>,
    errors: &mut Errors,
) -> Option<Mirror> {
    let path = format!("{path}.mirror");
    let pool = context.pool(&format!("{path}.pool"), &file.pool, errors);
    let select = selector(
        &path,
        file.into(),
        |has_rule| if has_rule { 0.0 } else { 100.0 },
        context,
        errors,
    );
    let positive = |key: &str, value: usize, errors: &mut Errors| {
        if value == 0 {
            errors.push(&format!("{path}.{key}"), "must be at least 1");
        }
        value.max(1)
    };
    let tolerance = |key: &str, value: f64, errors: &mut Errors| {
        if !(value >= 0.0 && value.is_finite()) {
            errors.push(
                &format!("{path}.{key}"),
                format!("must be a finite number ≥ 0, found {value}"),
            );
        }
        value.max(0.0)
    };
    let compare = Tolerance {
        absolute: tolerance("absolute_tolerance", file.absolute_tolerance, errors),
        relative: tolerance("relative_tolerance", file.relative_tolerance, errors),
    };
    if file.timeout_ms == 0 {
        errors.push(&format!("{path}.timeout_ms"), "must be at least 1");
    }
    let mirror = Mirror {
        pool: pool?,
        version: file.version.clone(),
        select,
        compare: file.compare.then_some(compare),
        max_concurrent: positive("max_concurrent", file.max_concurrent, errors),
        queue: file.queue,
        buffer_bytes: positive("buffer_bytes", file.buffer_bytes, errors),
        max_response_bytes: positive("max_response_bytes", file.max_response_bytes, errors),
        timeout: Duration::from_millis(file.timeout_ms.max(1)),
        log_mismatches_per_minute: file.log_mismatches_per_minute,
    };
    Some(mirror)
}
