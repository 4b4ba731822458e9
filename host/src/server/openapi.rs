//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use super::{approvals, invoke, problem, records, tools};
use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Toolhost",
        description = "Run WebAssembly tools for AI agents: every invocation and every outbound call passes policy, budget and audit. Authenticate with `Authorization: Bearer <key>` (`host keys create`). Transport errors are RFC 9457 problem documents; invocation outcomes use the invocation shape."
    ),
    paths(
        tools::list,
        tools::upload,
        tools::get_one,
        tools::deploy,
        tools::disable,
        tools::enable,
        invoke::invoke_tool,
        invoke::invoke_function,
        approvals::list,
        approvals::get_one,
        approvals::approve,
        approvals::deny,
        records::get_one,
        records::list,
        records::report_usage,
        records::get_usage,
        super::healthz,
        super::readyz,
    ),
    components(schemas(
        problem::Problem,
        invoke::InvokeRequest,
        crate::invoke::InvocationResponse,
        crate::invoke::Status,
        crate::invoke::Usage,
        crate::error::ErrorSchema,
        tools::DeployRequest,
        records::TokenUsage,
        approvals::DecisionRequest,
    )),
    modifiers(&Bearer),
)]
pub struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// `GET /openapi.json`.
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
