//! A route's `apis` allow-list, and its `repository` mode: the model
//! repository calls Trident answers itself ([`crate::repository`]) or refuses.

use pingora::http::RequestHeader;
use pingora::proxy::Session;
use pingora::Result;

use super::{peek, RequestCtx, Shared, TridentProxy};
use crate::config::{RepositoryMode, RouteTarget, SERVER_ROUTE};
use crate::protocol::api::{Api, RepositoryCall};
use crate::protocol::grpc::GrpcCode;
use crate::protocol::reply::ErrorReply;
use crate::protocol::Protocol;
use crate::repository::{self, Answer, Call};

/// The `filter` label of `trident_filter_denials_total` for calls a route's `apis` refuses.
const APIS_DENIAL: &str = "_apis";
/// The same for repository calls a route's `repository = "deny"` refuses.
const REPOSITORY_DENIAL: &str = "_repository";
/// The `reason` label of both.
const DENIED: &str = "permission_denied";

impl TridentProxy {
    /// Refuses a call of an API the route's `apis` leaves out. Checked after the
    /// filters: a client is authenticated before it is told what it may not call.
    pub(super) fn allow_api(
        &self,
        shared: &Shared,
        target: &RouteTarget,
        header: &RequestHeader,
    ) -> std::result::Result<(), ErrorReply> {
        let path = header.uri.path();
        let api = match self.protocol {
            Protocol::Http => Api::of_http_path(path),
            Protocol::Grpc => Api::of_grpc_method(path),
        };
        if target.apis.allows(api) {
            return Ok(());
        }
        shared.metrics.filter_denials(APIS_DENIAL, DENIED).inc();
        let message = match api {
            Some(api) => format!(
                "API '{}' is not allowed on route '{}'",
                api.name(),
                governing_route(shared, target)
            ),
            None => format!(
                "this call is of no Triton API, and route '{}' allows only those its `apis` lists",
                governing_route(shared, target)
            ),
        };
        Err(ErrorReply::new(403, GrpcCode::PermissionDenied, message))
    }

    /// The repository call Trident answers itself rather than forwards to one
    /// endpoint, under the route's `repository` mode. A pool with one endpoint
    /// (of the call's protocol) has the call forwarded, so that the client gets
    /// Triton's own answer.
    pub(super) fn repository_call(
        &self,
        shared: &Shared,
        header: &RequestHeader,
        target: &RouteTarget,
    ) -> Option<RepositoryCall> {
        let endpoints = shared.pools[target.pool]
            .endpoints
            .iter()
            .filter(|e| match self.protocol {
                Protocol::Http => e.http_addr.is_some(),
                Protocol::Grpc => e.grpc_addr.is_some(),
            })
            .count();
        let forwarded = match target.repository {
            RepositoryMode::One => true,
            RepositoryMode::FanOut => endpoints < 2,
            RepositoryMode::Deny => false,
        };
        if forwarded {
            return None;
        }
        match self.protocol {
            Protocol::Http => RepositoryCall::of_http(&header.method, header.uri.path()),
            Protocol::Grpc => RepositoryCall::of_grpc_method(header.uri.path()),
        }
    }

    /// Refuses `call`, or sends it to every endpoint of the route's pool and
    /// keeps the combined answer for `request_filter` to send.
    pub(super) async fn fan_out(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        body: peek::BodyPeek,
        call: RepositoryCall,
        target: &RouteTarget,
    ) -> Result<std::result::Result<(), ErrorReply>> {
        let shared = ctx.shared.clone();
        if target.repository == RepositoryMode::Deny {
            shared
                .metrics
                .filter_denials(REPOSITORY_DENIAL, DENIED)
                .inc();
            return Ok(Err(ErrorReply::new(
                403,
                GrpcCode::PermissionDenied,
                format!(
                    "model repository calls are not allowed on route '{}'",
                    governing_route(&shared, target)
                ),
            )));
        }
        ctx.pool = Some(target.pool);
        let pool = &shared.pools[target.pool];
        let settings = &shared.config.server.repository;
        let Some(body) = body.read_all(session, settings.max_body_bytes).await? else {
            return Ok(Err(ErrorReply::new(
                413,
                GrpcCode::ResourceExhausted,
                format!(
                    "a model repository call's body may have at most {} bytes \
                     (server.repository.max_body_bytes)",
                    settings.max_body_bytes
                ),
            )));
        };
        let answer = repository::fan_out(
            pool,
            settings,
            Call {
                protocol: self.protocol,
                action: call,
                model: ctx.model.as_deref(),
                header: session.req_header(),
                body,
                request_id: &ctx.request_id,
                deadline: ctx.deadline,
            },
        )
        .await;
        shared
            .metrics
            .repository_call(&pool.name, call.label(), answer.is_ok());
        Ok(answer.map(|answer| ctx.local_answer = Some(answer)))
    }

    /// Sends the answer of a fanned-out call.
    pub(super) async fn send_local_answer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        answer: Answer,
    ) {
        if self.protocol == Protocol::Grpc {
            ctx.grpc_status = Some(0);
        }
        if let Err(e) = repository::send(session, self.protocol, &ctx.request_id, answer).await {
            log::debug!("writing a repository call's answer: {e}");
        }
    }
}

/// The route a refusal names: server-level calls follow the default route's
/// keys, when there is one (else they keep their own name, `_server`).
fn governing_route<'a>(shared: &'a Shared, target: &'a RouteTarget) -> &'a str {
    match shared.config.routes.default {
        Some(default) if *target.key == *SERVER_ROUTE => &shared.config.routes.target(default).key,
        _ => &target.key,
    }
}
