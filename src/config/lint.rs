//! Warnings: what a valid config most likely did not mean. `trident check`
//! prints them (and fails on them with `--strict`); the proxy runs anyway.

use super::file::{PoolFile, RouteFile};
use super::{Config, ConfigError};

/// Adds to `config.warnings` what is probably a mistake in a valid config.
pub(super) fn lint(config: &mut Config, pools: &[Option<PoolFile>], routes: &[Option<RouteFile>]) {
    let mut found = Vec::new();
    let mut warn = |path: String, message: String| {
        found.push(ConfigError {
            path,
            message,
            line: None,
        })
    };
    let routes: Vec<(usize, &RouteFile)> = routes
        .iter()
        .enumerate()
        .filter_map(|(i, r)| Some((i, r.as_ref()?)))
        .collect();
    for (i, route) in &routes {
        if let Some(mirror) = &route.mirror {
            if mirror.pool == route.pool && mirror.version.is_none() {
                warn(
                    format!("routes[{i}].mirror.pool"),
                    format!(
                        "mirrors to the route's own pool {:?}: the copies double its load and \
                         are compared with the same servers",
                        route.pool
                    ),
                );
            }
        }
    }
    for (p, pool) in pools.iter().enumerate() {
        let Some(pool) = pool else { continue };
        let used = routes.iter().any(|(_, route)| {
            route.pool == pool.name
                || route.mirror.as_ref().is_some_and(|m| m.pool == pool.name)
                || route
                    .splits
                    .iter()
                    .flatten()
                    .any(|s| s.pool.as_ref() == Some(&pool.name))
        });
        if !used {
            warn(
                format!("pools[{p}].name"),
                format!(
                    "no route uses pool {:?} (as its pool, a split or a mirror)",
                    pool.name
                ),
            );
        }
        for (j, endpoint) in pool.endpoints.iter().enumerate() {
            let addresses = [&endpoint.http, &endpoint.grpc];
            let earlier = pool.endpoints[..j].iter().position(|other| {
                let others = [&other.http, &other.grpc];
                addresses
                    .iter()
                    .flat_map(|a| a.as_deref())
                    .any(|a| others.iter().flat_map(|o| o.as_deref()).any(|o| o == a))
            });
            if let Some(earlier) = earlier {
                warn(
                    format!("pools[{p}].endpoints[{j}]"),
                    format!(
                        "same address as pools[{p}].endpoints[{earlier}]: one server listed \
                         twice gets a double share of the traffic"
                    ),
                );
            }
        }
    }
    let chained = |id: usize| {
        config
            .routes
            .targets
            .iter()
            .any(|t| t.filters.contains(&id))
    };
    let unused: Vec<String> = (0..config.filters.len())
        .filter(|&id| !chained(id))
        .map(|id| config.filters[id].name.clone())
        .collect();
    for name in unused {
        warn(
            format!("filters.{name}"),
            format!("filter {name:?} is in no chain (`server.filters` or a route's `filters`)"),
        );
    }
    let exposed_admin = config
        .server
        .admin_listen
        .filter(|a| !a.ip().is_loopback() && !config.server.admin_is_protected());
    if let Some(admin) = exposed_admin {
        warn(
            "server.admin_listen".to_owned(),
            format!(
                "admin listener on non-loopback address {admin} has no protection: anyone \
                 who reaches it can reload the config, read it and drain endpoints \
                 (set [server.admin_auth])"
            ),
        );
    }
    config.warnings.extend(found);
}
