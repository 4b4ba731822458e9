//! Policy: which tools may run, for whom, with which grants, limits and
//! prices — evaluated by Cedar.
//!
//! A policy file ([`file`]) is compiled into one Cedar policy set per
//! document. Each request is governed by exactly one document, the most
//! specific for its tenant and workflow (tenant + workflow, then workflow,
//! then tenant + `*`, then `*`); no matching document means deny.
//!
//! How the essay's rules become Cedar (every policy carries an `@id`, and
//! every decision names the rules that made it):
//!
//! * `policy.allow_tools[i]`: `permit` when the function matches.
//! * `policy.deny_tools[i]`: `forbid` when it matches. If the tool also has an
//!   `approval.required_for` rule, the forbid is an *approval* forbid instead:
//!   the tool never runs autonomously, every call escalates to a human, and an
//!   approved call is permitted. (The essay lists `issue_refund` under both
//!   with the comment "requires approval": this is that meaning.)
//! * `approval.required_for[i]`: an approval forbid when the amount (found by
//!   `amount_field`, default the `amount_usd` argument) exceeds
//!   `threshold_usd`, or cannot be found.
//! * `cedar`: the operator's own policies, as written.
//!
//! Decision: Cedar allows → allow. Cedar denies and every determining policy
//! is an approval forbid → needs approval. Otherwise → deny (with no
//! determining policy: the default deny). A policy that fails to evaluate
//! denies (fail closed), naming the policy and the error.

pub mod file;
pub mod outbound;

use crate::error::{Error, ErrorKind};
use crate::tool::{FunctionInfo, Ty};
use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, PolicyId, PolicySet, Request, RestrictedExpression,
};
use file::{Document, ToolSettings};
use serde::Serialize;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

/// A loaded, compiled policy file.
pub struct Policy {
    name: String,
    documents: Vec<Compiled>,
}

struct Compiled {
    doc: Arc<Document>,
    set: PolicySet,
    /// Policy id → the rule as people name it.
    labels: HashMap<String, String>,
    approval_ids: HashSet<String>,
    /// `amounts.rN` → where to find the amount, for approval rule N.
    amounts: Vec<(String, Option<String>)>,
    /// The entities of recent calls, by who calls what: building them (and
    /// their transitive closure) was a third of a decision's cost.
    entities: std::sync::Mutex<HashMap<EntityKey, Arc<CallEntities>>>,
    /// `Action::"invoke"`, the only action.
    invoke: EntityUid,
}

/// Tenant, principal, tool, function path.
type EntityKey = (String, String, String, String);

/// Most entries kept in [`Compiled::entities`]; past it the map starts over.
const ENTITY_CACHE: usize = 4096;

/// A call's Cedar principal and resource, and the entities that place the
/// principal in its tenant and the function in its tool.
struct CallEntities {
    principal: EntityUid,
    resource: EntityUid,
    entities: Entities,
}

/// What the policy says about one invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    Allow,
    Deny,
    NeedsApproval,
}

/// A decision and the rule(s) that made it.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub effect: Effect,
    /// The deciding rules, e.g. `seed.yaml: policy.allow_tools[0] (lookup_order)`.
    pub rule: String,
}

/// The invocation being decided.
pub struct Subject<'a> {
    pub tenant: Option<&'a str>,
    pub workflow: Option<&'a str>,
    pub task_id: Option<&'a str>,
    /// Who is asking: an API key id, or `cli`.
    pub principal: &'a str,
    /// The tool's (registered) name.
    pub tool: &'a str,
    pub function: &'a FunctionInfo,
    pub args: &'a Value,
    /// Whether a human has approved this invocation.
    pub approved: bool,
}

/// Policy names compare in snake_case.
pub fn normalize(name: &str) -> String {
    name.trim().replace('-', "_")
}

/// Where a policy file went wrong.
fn policy_error(message: String) -> Error {
    Error::new(ErrorKind::InvalidPolicy, message)
}

impl Policy {
    /// Load a policy file.
    pub fn load(path: &Path) -> Result<Policy, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| policy_error(format!("{}: cannot read: {e}", path.display())))?;
        Policy::parse(&path.display().to_string(), &text)
    }

    /// Parse and compile policy text; `name` is used in messages (a path).
    pub fn parse(name: &str, text: &str) -> Result<Policy, Error> {
        let mut documents = Vec::new();
        for (i, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let doc: Document = serde_path_to_error::deserialize(de).map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let at = inner
                    .location()
                    .map(|l| format!("{name}:{}:{}", l.line(), l.column()))
                    .unwrap_or_else(|| format!("{name} (document {})", i + 1));
                let field = if path == "." {
                    String::new()
                } else {
                    format!("{path}: ")
                };
                let msg = inner.to_string();
                // serde_yaml_ng appends " at line L column C" and may prefix
                // part of the path; our prefix says both.
                let mut msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
                if let Some((head, rest)) = msg.split_once(": ")
                    && path.starts_with(head)
                {
                    msg = rest.to_string();
                }
                policy_error(format!("{at}: {field}{msg}"))
            })?;
            documents.push(compile(name, text, i, doc)?);
        }
        if documents.is_empty() {
            return Err(policy_error(format!("{name}: no policy document")));
        }
        let mut seen = HashSet::new();
        for d in &documents {
            if !seen.insert((d.doc.tenant.clone(), d.doc.workflow.clone())) {
                return Err(policy_error(format!(
                    "{name}: two documents govern workflow `{}`{}",
                    d.doc.workflow,
                    d.doc
                        .tenant
                        .as_deref()
                        .map(|t| format!(" for tenant `{t}`"))
                        .unwrap_or_default()
                )));
            }
        }
        Ok(Policy {
            name: name.to_string(),
            documents,
        })
    }

    /// The file's name, as given.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The workflow a request without one falls under: the only workflow the
    /// file names, if it names exactly one and has no catch-all (`"*"`)
    /// document (with one, such requests fall under the catch-all).
    pub fn default_workflow(&self) -> Option<&str> {
        if self.documents.iter().any(|d| d.doc.workflow == "*") {
            return None;
        }
        let mut names = self
            .documents
            .iter()
            .map(|d| d.doc.workflow.as_str())
            .filter(|w| *w != "*");
        let first = names.next()?;
        names.all(|w| w == first).then_some(first)
    }

    fn governing(&self, tenant: Option<&str>, workflow: Option<&str>) -> Option<&Compiled> {
        // Most specific first: tenant + workflow, workflow, tenant + `*`, `*`.
        let mut order: Vec<(Option<&str>, &str)> = Vec::with_capacity(4);
        for w in [workflow, Some("*")].into_iter().flatten() {
            if tenant.is_some() {
                order.push((tenant, w));
            }
            order.push((None, w));
        }
        order.into_iter().find_map(|(t, w)| {
            self.documents
                .iter()
                .find(|d| d.doc.tenant.as_deref() == t && d.doc.workflow == w)
        })
    }

    /// How many days a tenant's audit records are kept: the longest
    /// `logging.retain_days` of the documents that may govern it, or `None`
    /// (keep everything) when one of them sets none.
    pub fn retain_days(&self, tenant: Option<&str>) -> Option<u32> {
        let mut days = None;
        for c in self
            .documents
            .iter()
            .filter(|c| c.doc.tenant.is_none() || c.doc.tenant.as_deref() == tenant)
        {
            let d = c.doc.logging.retain_days?;
            days = Some(days.map_or(d, |m: u32| m.max(d)));
        }
        days
    }

    /// The document governing a tenant and workflow.
    pub fn document(&self, tenant: Option<&str>, workflow: Option<&str>) -> Option<&Arc<Document>> {
        self.governing(tenant, workflow).map(|c| &c.doc)
    }

    /// Decide one invocation.
    pub fn decide(&self, s: &Subject<'_>) -> Decision {
        let Some(compiled) = self.governing(s.tenant, s.workflow) else {
            return Decision {
                effect: Effect::Deny,
                rule: format!(
                    "{}: default deny: no policy document governs workflow `{}`{}",
                    self.name,
                    s.workflow.unwrap_or("(none)"),
                    s.tenant
                        .map(|t| format!(" for tenant `{t}`"))
                        .unwrap_or_default()
                ),
            };
        };
        compiled.decide(&self.name, s)
    }
}

impl Compiled {
    fn decide(&self, file: &str, s: &Subject<'_>) -> Decision {
        let deny = |rule: String| Decision {
            effect: Effect::Deny,
            rule,
        };
        let request = match self.request(s) {
            Ok(r) => r,
            Err(e) => return deny(format!("{file}: policy request could not be built: {e}")),
        };
        let (req, call) = request;
        let response = Authorizer::new().is_authorized(&req, &self.set, &call.entities);
        let errors: Vec<String> = response
            .diagnostics()
            .errors()
            .map(|e| e.to_string())
            .collect();
        if !errors.is_empty() {
            let hint = if errors.iter().any(|e| e.contains("decimal")) {
                " (fractional numbers are Cedar decimals: compare with .greaterThan(decimal(\"50.0\")) and friends)"
            } else {
                ""
            };
            return deny(format!("{file}: fail closed: {}{hint}", errors.join("; ")));
        }
        let reasons: Vec<String> = response
            .diagnostics()
            .reason()
            .map(|id| id.to_string())
            .collect();
        let labels = || {
            let mut l: Vec<&str> = reasons
                .iter()
                .map(|id| self.labels.get(id).map_or(id.as_str(), String::as_str))
                .collect();
            l.sort_unstable();
            l.join("; ")
        };
        match response.decision() {
            CedarDecision::Allow => Decision {
                effect: Effect::Allow,
                rule: labels(),
            },
            CedarDecision::Deny if reasons.is_empty() => deny(format!(
                "{file}: default deny: no rule of workflow `{}` permits `{}`",
                self.doc.workflow,
                normalize(&s.function.name)
            )),
            CedarDecision::Deny if reasons.iter().all(|id| self.approval_ids.contains(id)) => {
                Decision {
                    effect: Effect::NeedsApproval,
                    rule: labels(),
                }
            }
            CedarDecision::Deny => {
                // Name only the hard forbids: they are why approval cannot help.
                let hard: Vec<&str> = reasons
                    .iter()
                    .filter(|id| !self.approval_ids.contains(*id))
                    .map(|id| self.labels.get(id).map_or(id.as_str(), String::as_str))
                    .collect();
                deny(hard.join("; "))
            }
        }
    }

    fn request(&self, s: &Subject<'_>) -> Result<(Request, Arc<CallEntities>), String> {
        let function = normalize(&s.function.function);
        let function_path = normalize(&s.function.name);
        let tool = normalize(s.tool);
        let amounts = record(self.amounts.iter().map(|(key, field)| {
            let micros = amount_micros(s.args, field.as_deref()).unwrap_or(-1);
            (key.clone(), RestrictedExpression::new_long(micros))
        }));
        let text = |v: &str| RestrictedExpression::new_string(v.to_string());
        let context = Context::from_pairs([
            ("tenant".to_string(), text(s.tenant.unwrap_or(""))),
            ("workflow".to_string(), text(s.workflow.unwrap_or(""))),
            ("task_id".to_string(), text(s.task_id.unwrap_or(""))),
            ("tool".to_string(), text(&tool)),
            ("function".to_string(), text(&function)),
            ("function_path".to_string(), text(&function_path)),
            (
                "qualified".to_string(),
                text(&format!("{tool}/{function_path}")),
            ),
            (
                "approved".to_string(),
                RestrictedExpression::new_bool(s.approved),
            ),
            ("amounts".to_string(), amounts),
            ("args".to_string(), cedar_args(&s.function.params, s.args)),
        ])
        .map_err(|e| e.to_string())?;
        let call = self.call_entities(s.tenant.unwrap_or(""), s.principal, tool, function_path)?;
        let request = Request::new(
            call.principal.clone(),
            self.invoke.clone(),
            call.resource.clone(),
            context,
            None,
        )
        .map_err(|e| e.to_string())?;
        Ok((request, call))
    }

    /// The entities of a call, from the cache or built.
    fn call_entities(
        &self,
        tenant: &str,
        principal: &str,
        tool: String,
        function_path: String,
    ) -> Result<Arc<CallEntities>, String> {
        let key = (
            tenant.to_string(),
            principal.to_string(),
            tool,
            function_path,
        );
        let cache = || self.entities.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hit) = cache().get(&key) {
            return Ok(hit.clone());
        }
        let (tenant, principal, tool, function_path) = &key;
        let tenant = uid("Tenant", tenant)?;
        let principal = uid("Caller", principal)?;
        let tool_uid = uid("Tool", tool)?;
        let resource = uid("Function", &format!("{tool}/{function_path}"))?;
        let entities = Entities::from_entities(
            [
                Entity::new_no_attrs(principal.clone(), HashSet::from([tenant.clone()])),
                Entity::new_no_attrs(tenant, HashSet::new()),
                Entity::new_no_attrs(resource.clone(), HashSet::from([tool_uid.clone()])),
                Entity::new_no_attrs(tool_uid, HashSet::new()),
            ],
            None,
        )
        .map_err(|e| e.to_string())?;
        let built = Arc::new(CallEntities {
            principal,
            resource,
            entities,
        });
        let mut cache = cache();
        if cache.len() >= ENTITY_CACHE {
            cache.clear();
        }
        cache.insert(key, built.clone());
        Ok(built)
    }
}

fn uid(ty: &str, id: &str) -> Result<EntityUid, String> {
    Ok(EntityUid::from_type_name_and_id(
        EntityTypeName::from_str(ty).map_err(|e| e.to_string())?,
        EntityId::new(id),
    ))
}

/// The amount of an approval rule, in micro-USD.
fn amount_micros(args: &Value, field: Option<&str>) -> Option<i64> {
    // The arguments are canonical (WIT names, kebab-case): a field may be
    // written in either case, as a dotted path or a JSON pointer.
    fn step<'v>(v: &'v Value, k: &str) -> Option<&'v Value> {
        match v {
            Value::Array(items) => k.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => v.get(k).or_else(|| v.get(k.replace('_', "-"))),
        }
    }
    let found = match field {
        Some(f) if f.starts_with('/') => f[1..].split('/').try_fold(args, |v, k| {
            step(v, &k.replace("~1", "/").replace("~0", "~"))
        }),
        Some(f) => f.split('.').try_fold(args, step),
        None => step(args, "amount-usd"),
    }?;
    let v = found.as_f64()?;
    (v.is_finite() && v.abs() < 9.0e12).then(|| (v * 1_000_000.0).round() as i64)
}

/// Arguments as a Cedar context record: keys in snake_case, integers as
/// `Long`, floats as `decimal`, lists as sets, `none` omitted.
fn cedar_args(params: &[crate::tool::Param], args: &Value) -> RestrictedExpression {
    let fields = params.iter().filter_map(|p| {
        let v = args.get(&p.name).or_else(|| args.get(normalize(&p.name)))?;
        cedar_value(&p.ty, v).map(|v| (normalize(&p.name), v))
    });
    record(fields)
}

fn record(fields: impl Iterator<Item = (String, RestrictedExpression)>) -> RestrictedExpression {
    // Keys are distinct by construction (WIT names); on a clash keep the first.
    let mut seen = HashSet::new();
    let fields: Vec<_> = fields.filter(|(k, _)| seen.insert(k.clone())).collect();
    RestrictedExpression::new_record(fields)
        .unwrap_or_else(|_| RestrictedExpression::new_record([]).expect("empty record"))
}

fn cedar_value(ty: &Ty, v: &Value) -> Option<RestrictedExpression> {
    Some(match (ty, v) {
        (_, Value::Null) => return None,
        (Ty::F32 | Ty::F64, Value::Number(n)) => {
            let f = n.as_f64()?;
            if f.abs() < 9.2e14 {
                RestrictedExpression::new_decimal(format!("{f:.4}"))
            } else {
                RestrictedExpression::new_string(f.to_string())
            }
        }
        (_, Value::Number(n)) => match n.as_i64() {
            Some(i) => RestrictedExpression::new_long(i),
            None => RestrictedExpression::new_string(n.to_string()),
        },
        (_, Value::Bool(b)) => RestrictedExpression::new_bool(*b),
        (_, Value::String(s)) => RestrictedExpression::new_string(s.clone()),
        (Ty::Option(inner), v) => return cedar_value(inner, v),
        (Ty::List(t) | Ty::FixedList(t, _), Value::Array(items)) => {
            RestrictedExpression::new_set(items.iter().filter_map(|i| cedar_value(t, i)))
        }
        (Ty::Tuple(ts), Value::Array(items)) => RestrictedExpression::new_set(
            ts.iter().zip(items).filter_map(|(t, i)| cedar_value(t, i)),
        ),
        (Ty::Record(r), Value::Object(o)) => record(r.items.iter().filter_map(|f| {
            let v = o.get(&f.name).or_else(|| o.get(&normalize(&f.name)))?;
            cedar_value(&f.ty, v).map(|v| (normalize(&f.name), v))
        })),
        (Ty::Variant(var), Value::Object(o)) => record(o.iter().filter_map(|(k, payload)| {
            let ty = var
                .items
                .iter()
                .find(|c| c.name == *k || normalize(&c.name) == *k)
                .and_then(|c| c.ty.as_ref())?;
            cedar_value(ty, payload).map(|v| (normalize(k), v))
        })),
        (Ty::Result { ok, err }, Value::Object(o)) => record(
            [("ok", ok), ("err", err)]
                .into_iter()
                .filter_map(|(k, t)| Some((k.to_string(), cedar_value(t.as_ref()?, o.get(k)?)?))),
        ),
        (Ty::Map(_, vt), Value::Object(o)) => record(
            o.iter()
                .filter_map(|(k, v)| cedar_value(vt, v).map(|v| (k.clone(), v))),
        ),
        (_, Value::Array(items)) => {
            RestrictedExpression::new_set(items.iter().filter_map(|i| cedar_value(&Ty::String, i)))
        }
        (_, Value::Object(_)) => return None,
    })
}

/// Cedar string literal.
fn lit(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// The Cedar condition "this request is for tool `name`": the function's
/// bare name, its qualified name, either prefixed by the tool's name, or the
/// registered tool's name (all its functions).
fn matches_tool(name: &str) -> String {
    let n = lit(&normalize(name));
    format!(
        "(context.function == {n} || context.function_path == {n} || context.qualified == {n} || context.tool == {n})"
    )
}

/// The 1-based line of `needle` (a YAML key) in `text`, after `from_line`.
fn line_of(text: &str, needle: &str) -> Option<usize> {
    text.lines()
        .position(|l| l.trim_start().starts_with(needle))
        .map(|i| i + 1)
}

fn compile(file: &str, text: &str, index: usize, doc: Document) -> Result<Compiled, Error> {
    let mut src: Vec<(String, String, String, bool)> = Vec::new(); // (id, label, text, approval)
    let scope = format!(
        "{}{}",
        file,
        if index > 0 {
            format!(" (document {})", index + 1)
        } else {
            String::new()
        }
    );
    let approval_tools: HashSet<String> = doc
        .approval
        .required_for
        .iter()
        .map(|r| normalize(&r.tool))
        .collect();
    for (i, tool) in doc.policy.allow_tools.iter().enumerate() {
        src.push((
            format!("allow{i}"),
            format!("{scope}: policy.allow_tools[{i}] ({tool})"),
            format!(
                "permit (principal, action == Action::\"invoke\", resource) when {{ {} }};",
                matches_tool(tool)
            ),
            false,
        ));
    }
    for (i, tool) in doc.policy.deny_tools.iter().enumerate() {
        let m = matches_tool(tool);
        if approval_tools.contains(&normalize(tool)) {
            src.push((
                format!("deny{i}"),
                format!("{scope}: policy.deny_tools[{i}] ({tool}): never autonomous, escalate to a human"),
                format!("forbid (principal, action == Action::\"invoke\", resource) when {{ {m} }} unless {{ context.approved }};"),
                true,
            ));
            src.push((
                format!("deny{i}_approved"),
                format!("{scope}: policy.deny_tools[{i}] ({tool}) with a human's approval"),
                format!("permit (principal, action == Action::\"invoke\", resource) when {{ {m} && context.approved }};"),
                false,
            ));
        } else {
            src.push((
                format!("deny{i}"),
                format!("{scope}: policy.deny_tools[{i}] ({tool})"),
                format!(
                    "forbid (principal, action == Action::\"invoke\", resource) when {{ {m} }};"
                ),
                false,
            ));
        }
    }
    let mut amounts = Vec::new();
    for (i, rule) in doc.approval.required_for.iter().enumerate() {
        let key = format!("r{i}");
        let m = matches_tool(&rule.tool);
        let (cond, label) = match rule.threshold_usd {
            Some(t) => (
                format!(
                    "{m} && (context.amounts.{key} < 0 || context.amounts.{key} > {})",
                    (t * 1_000_000.0).round() as i64
                ),
                format!(
                    "{scope}: approval.required_for[{i}] ({} over {t} USD, amount from `{}`)",
                    rule.tool,
                    rule.amount_field.as_deref().unwrap_or("amount_usd")
                ),
            ),
            None => (
                m,
                format!("{scope}: approval.required_for[{i}] ({})", rule.tool),
            ),
        };
        amounts.push((key, rule.amount_field.clone()));
        src.push((
            format!("approval{i}"),
            label,
            format!("forbid (principal, action == Action::\"invoke\", resource) when {{ {cond} }} unless {{ context.approved }};"),
            true,
        ));
    }
    let mut set = PolicySet::new();
    let mut labels = HashMap::new();
    let mut approval_ids = HashSet::new();
    for (id, label, text, approval) in src {
        let policy = cedar_policy::Policy::parse(Some(PolicyId::new(&id)), &text).map_err(|e| {
            Error::internal(format!("generated Cedar for {label} does not parse: {e}"))
        })?;
        set.add(policy)
            .map_err(|e| Error::internal(e.to_string()))?;
        if approval {
            approval_ids.insert(id.clone());
        }
        labels.insert(id, label);
    }
    if let Some(cedar) = &doc.cedar {
        let base = line_of(text, "cedar:").unwrap_or(0);
        let parsed = PolicySet::from_str(cedar)
            .map_err(|e| policy_error(format!("{scope}:{}: cedar: {e}", base + 1)))?;
        for (n, p) in parsed.policies().enumerate() {
            let id = format!("cedar{n}");
            let label = match p.annotation("id") {
                Some(name) => format!("{scope}: cedar policy `{name}`"),
                None => format!("{scope}: cedar policy #{}", n + 1),
            };
            set.add(p.new_id(PolicyId::new(&id)))
                .map_err(|e| policy_error(format!("{label}: {e}")))?;
            labels.insert(id, label);
        }
    }
    Ok(Compiled {
        doc: Arc::new(doc),
        set,
        labels,
        approval_ids,
        amounts,
        entities: Default::default(),
        invoke: uid("Action", "invoke").map_err(Error::internal)?,
    })
}

/// The settings for a function in a document: by function name (bare or
/// qualified, optionally prefixed by the tool), else by tool name.
pub fn tool_settings<'d>(
    doc: &'d Document,
    tool: &str,
    function: &FunctionInfo,
) -> Option<&'d Arc<ToolSettings>> {
    let tool = normalize(tool);
    let bare = normalize(&function.function);
    let path = normalize(&function.name);
    let forms = [
        bare.clone(),
        path.clone(),
        format!("{tool}/{path}"),
        format!("{tool}/{bare}"),
    ];
    doc.tools
        .iter()
        .find(|(k, _)| forms.contains(&normalize(k)))
        .or_else(|| doc.tools.iter().find(|(k, _)| normalize(k) == tool))
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_is_the_longest_of_the_documents_that_may_govern_a_tenant() {
        let p = Policy::parse(
            "r.yaml",
            "workflow: a\nlogging: {retain_days: 30}\n---\nworkflow: b\nlogging: {retain_days: 90}\n---\nworkflow: c\ntenant: acme\n",
        )
        .unwrap();
        assert_eq!(p.retain_days(None), Some(90));
        assert_eq!(p.retain_days(Some("globex")), Some(90));
        // acme's own document keeps everything: never pruned.
        assert_eq!(p.retain_days(Some("acme")), None);
    }
}
