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
        super::stats::get,
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
        crate::storage::ApprovalStatus,
        tools::ListFormat,
    )),
    modifiers(&Bearer, &Problems),
)]
pub struct ApiDoc;

/// Every `/v1` operation may answer these as problem documents.
const PROBLEMS: &[(&str, &str)] = &[
    (
        "400",
        "Malformed request: JSON, parameters (the detail names the field)",
    ),
    ("401", "No API key, or not a valid one"),
    ("403", "The key lacks the role"),
    ("404", "Not found in the caller's tenant (or no such route)"),
    ("413", "The request body is larger than the server accepts"),
    (
        "429",
        "The caller's tenant is at its share of the server (`tenant_overloaded`): retry after `Retry-After` seconds",
    ),
    ("500", "A fault of the host"),
    ("503", "Overloaded: retry after `Retry-After` seconds"),
    ("504", "The request passed the server's deadline"),
];

const PROBLEM_JSON: &str = "application/problem+json";

/// Problem documents are `application/problem+json`, and every `/v1`
/// operation documents the transport errors it may answer.
struct Problems;

impl Modify for Problems {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::ParameterIn;
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder, Schema};
        let problem = || {
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in operations.into_iter().flatten() {
                // Problem bodies documented as JSON are problem+json; other
                // bodies (invocation outcomes) may also be problems.
                for response in op.responses.responses.values_mut() {
                    let RefOr::T(response) = response else {
                        continue;
                    };
                    let is_problem = response.content.get("application/json").is_some_and(|c| {
                        matches!(&c.schema, Some(RefOr::Ref(r)) if r.ref_location.ends_with("/Problem"))
                    });
                    if is_problem {
                        response.content.shift_remove("application/json");
                        response.content.insert(PROBLEM_JSON.into(), problem());
                    }
                }
                if !path.starts_with("/v1/") {
                    continue;
                }
                // Any error answer may come as a problem document (from the
                // auth, limit or deadline layers, or a refusal before the
                // invocation exists).
                for (code, response) in op.responses.responses.iter_mut() {
                    if let RefOr::T(response) = response
                        && code.as_str() >= "400"
                    {
                        response
                            .content
                            .entry(PROBLEM_JSON.into())
                            .or_insert_with(problem);
                    }
                }
                // A path segment is never empty.
                for parameter in op.parameters.iter_mut().flatten() {
                    if parameter.parameter_in == ParameterIn::Path
                        && let Some(RefOr::T(Schema::Object(schema))) = &mut parameter.schema
                    {
                        schema.min_length.get_or_insert(1);
                    }
                }
                for (code, description) in PROBLEMS {
                    match op.responses.responses.get_mut(*code) {
                        Some(RefOr::T(response)) => {
                            response.content.insert(PROBLEM_JSON.into(), problem());
                        }
                        Some(RefOr::Ref(_)) => {}
                        None => {
                            op.responses.responses.insert(
                                (*code).to_string(),
                                RefOr::T(
                                    ResponseBuilder::new()
                                        .description(*description)
                                        .content(PROBLEM_JSON, problem())
                                        .build(),
                                ),
                            );
                        }
                    }
                }
            }
        }
    }
}

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
