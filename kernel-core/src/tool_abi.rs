//! The tool ABI: how a host tool appears to a Python program, shared by every backend and
//! by the tool bridge (so no backend links the bridge's MCP and HTTP clients). Python names
//! for tool and server names, signatures and type hints from a tool's JSON Schema, binding a
//! call's positional and keyword arguments to the schema's properties, and the `tools`
//! Python package the sandbox imports.
//!
//! Layout (mounted read-only at `/tools`):
//!
//! ```text
//! /tools/__init__.py            lists the servers; re-exports ToolError, ToolLimitError
//! /tools/<server>/__init__.py   lazy: `from tools.<server> import <tool>` gives the function
//! /tools/<server>/<tool>.py     def <tool>(<typed signature>): """<description>"""
//! /tools/_local/                the user's own Python tool modules (a read-only mount)
//! ```
//!
//! Every function calls `_agentkernel.call_tool("<server>.<tool>", args)`; the host does the
//! rest. Signatures come from the tool's JSON Schema: required properties are positional or
//! keyword, optional ones keyword-only with their schema default (or `None`, which means
//! "leave it out").

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::Value;

/// Name of the sub-directory of `/tools` where the user's own Python modules are mounted.
pub const LOCAL_DIR: &str = "_local";

/// A tool as the generator needs it.
#[derive(Debug, Clone)]
pub struct StubTool<'a> {
    /// Python-facing name of the server (a package under `tools`).
    pub server: &'a str,
    /// Python-facing name of the tool (module and function name).
    pub tool: &'a str,
    /// Description (docstring).
    pub description: &'a str,
    /// JSON Schema of the arguments.
    pub input_schema: &'a Value,
    /// JSON Schema of the result, if declared.
    pub output_schema: Option<&'a Value>,
}

const KEYWORDS: &[&str] = &[
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue",
    "def", "del", "elif", "else", "except", "finally", "for", "from", "global", "if", "import",
    "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return", "try", "while",
    "with", "yield",
];

/// Whether `s` can be used as a Python identifier (ASCII only, not a keyword).
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
        && !KEYWORDS.contains(&s)
}

/// Turns any tool or server name into a Python identifier: other characters become `_`,
/// a leading digit or a keyword gets a `_` suffix/prefix. (`create-issue` → `create_issue`.)
pub fn python_name(raw: &str) -> String {
    let mut s: String = raw
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    if KEYWORDS.contains(&s.as_str()) {
        s.push('_');
    }
    s
}

/// A JSON value as a Python literal (JSON strings are valid Python string literals).
fn py_literal(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        Value::String(_) => v.to_string(),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(py_literal).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("{}: {}", Value::String(k.clone()), py_literal(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The Python type hint for a JSON Schema (as text; annotations are not evaluated).
pub fn type_hint(schema: &Value) -> String {
    if let Some(values) = schema.get("enum").and_then(Value::as_array)
        && !values.is_empty()
        && values.iter().all(|v| !v.is_array() && !v.is_object())
    {
        return format!(
            "Literal[{}]",
            values.iter().map(py_literal).collect::<Vec<_>>().join(", ")
        );
    }
    if let Some(c) = schema.get("const")
        && !c.is_array()
        && !c.is_object()
    {
        return format!("Literal[{}]", py_literal(c));
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(options) = schema.get(key).and_then(Value::as_array) {
            let mut hints: Vec<String> = Vec::new();
            for o in options {
                let h = type_hint(o);
                if !hints.contains(&h) {
                    hints.push(h);
                }
            }
            if !hints.is_empty() {
                return hints.join(" | ");
            }
        }
    }
    match schema.get("type") {
        Some(Value::String(t)) => simple_hint(t, schema),
        Some(Value::Array(ts)) => {
            let hints: Vec<String> = ts
                .iter()
                .filter_map(Value::as_str)
                .map(|t| simple_hint(t, schema))
                .collect();
            if hints.is_empty() {
                "Any".into()
            } else {
                hints.join(" | ")
            }
        }
        _ => "Any".into(),
    }
}

fn simple_hint(t: &str, schema: &Value) -> String {
    match t {
        "string" => "str".into(),
        "integer" => "int".into(),
        "number" => "float".into(),
        "boolean" => "bool".into(),
        "null" => "None".into(),
        "array" => match schema.get("items") {
            Some(items) if items.is_object() => format!("list[{}]", type_hint(items)),
            _ => "list".into(),
        },
        "object" => "dict[str, Any]".into(),
        _ => "Any".into(),
    }
}

/// Whether `py` (already a [`python_name`]) can name a tool module: not private, not
/// `__debug__`, and short enough for a file name.
pub fn is_tool_name(py: &str) -> bool {
    is_identifier(py) && !py.starts_with('_') && py.len() <= 64
}

/// Whether an output schema is the official SDKs' wrapper of a non-object result:
/// an object with the single property `result`.
pub fn is_result_wrapper(output_schema: Option<&Value>) -> bool {
    output_schema
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
        .is_some_and(|p| p.len() == 1 && p.contains_key("result"))
}

/// The Python return type for an output schema. Servers built on the official SDKs wrap a
/// non-object result as `{"result": value}`; the bridge unwraps it, and so does the hint.
pub fn return_hint(output_schema: Option<&Value>) -> String {
    let Some(schema) = output_schema else {
        return "Any".into();
    };
    if is_result_wrapper(Some(schema)) {
        return type_hint(&schema["properties"]["result"]);
    }
    type_hint(schema)
}

/// One parameter of a generated function.
struct Param {
    name: String,
    hint: String,
    required: bool,
    default: Option<String>,
    doc: String,
}

fn params(schema: &Value) -> (Vec<Param>, bool) {
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut out = Vec::new();
    let mut needs_kwargs = schema
        .get("additionalProperties")
        .is_some_and(|a| a != false);
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, prop) in props {
            if !is_identifier(name) || name.starts_with('_') || name == "kwargs" {
                // Not expressible as a Python parameter (or would clash with the generated
                // code's own names): reachable through **kwargs.
                needs_kwargs = true;
                continue;
            }
            let default = prop.get("default").and_then(|d| match d {
                Value::Array(_) | Value::Object(_) => None,
                d => Some(py_literal(d)),
            });
            let mut doc = prop
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or("")
                .trim()
                .to_owned();
            if let Some(d) = prop
                .get("default")
                .filter(|d| d.is_array() || d.is_object())
            {
                let _ = write!(doc, " (default: {d})");
            }
            out.push(Param {
                name: name.clone(),
                hint: type_hint(prop),
                required: required.contains(&name.as_str()),
                default,
                doc,
            });
        }
    }
    // Required first, in schema order; then optional ones.
    out.sort_by_key(|p| !p.required);
    (out, needs_kwargs)
}

/// Binds a call's positional and keyword arguments to the JSON object the host receives,
/// exactly as the generated function `tool` would (for backends that cannot import the
/// stubs and bind on the host instead: monty). Errors read like CPython's `TypeError`s.
pub fn bind_arguments(
    tool: &str,
    schema: &Value,
    positional: Vec<Value>,
    keywords: serde_json::Map<String, Value>,
) -> Result<serde_json::Map<String, Value>, String> {
    let (params, open) = params(schema);
    let named: Vec<&Param> = params.iter().filter(|p| p.required).collect();
    if positional.len() > named.len() {
        return Err(format!(
            "{tool}() takes {} positional argument{} but {} were given",
            named.len(),
            if named.len() == 1 { "" } else { "s" },
            positional.len()
        ));
    }
    let mut given: serde_json::Map<String, Value> = serde_json::Map::new();
    for (p, v) in named.iter().zip(positional) {
        given.insert(p.name.clone(), v);
    }
    let mut extra = serde_json::Map::new();
    for (k, v) in keywords {
        if given.contains_key(&k) {
            return Err(format!("{tool}() got multiple values for argument '{k}'"));
        }
        if params.iter().any(|p| p.name == k) {
            given.insert(k, v);
        } else if open {
            extra.insert(k, v);
        } else {
            return Err(format!("{tool}() got an unexpected keyword argument '{k}'"));
        }
    }
    let missing: Vec<String> = params
        .iter()
        .filter(|p| p.required && !given.contains_key(&p.name))
        .map(|p| format!("'{}'", p.name))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{tool}() missing {} required positional argument{}: {}",
            missing.len(),
            if missing.len() == 1 { "" } else { "s" },
            missing.join(" and ")
        ));
    }
    let mut out = serde_json::Map::new();
    for p in &params {
        match given.remove(&p.name) {
            Some(Value::Null) if !p.required && p.default.is_none() => {}
            Some(v) => {
                out.insert(p.name.clone(), v);
            }
            None => {
                if let Some(d) = p
                    .default
                    .as_ref()
                    .and_then(|_| schema_default(schema, &p.name))
                {
                    out.insert(p.name.clone(), d);
                }
            }
        }
    }
    out.extend(extra);
    Ok(out)
}

fn schema_default(schema: &Value, name: &str) -> Option<Value> {
    schema.get("properties")?.get(name)?.get("default").cloned()
}

/// The Python signature text of a tool, e.g. `(a: int, b: int, *, round: bool = False)`.
pub fn signature(schema: &Value) -> String {
    signature_of(&params(schema).0, params(schema).1)
}

fn signature_of(params: &[Param], kwargs: bool) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut star = false;
    for p in params {
        if p.required {
            parts.push(format!("{}: {}", p.name, p.hint));
        } else {
            if !star {
                parts.push("*".into());
                star = true;
            }
            let default = p.default.clone().unwrap_or_else(|| "None".into());
            parts.push(format!("{}: {} = {}", p.name, p.hint, default));
        }
    }
    if kwargs {
        parts.push("**kwargs: Any".into());
    }
    format!("({})", parts.join(", "))
}

/// The source of `/tools/<server>/<tool>.py`.
pub fn tool_module(t: &StubTool<'_>) -> String {
    let (params, kwargs) = params(t.input_schema);
    let sig = signature_of(&params, kwargs);
    let qualified = format!("{}.{}", t.server, t.tool);
    let mut doc = t.description.trim().to_owned();
    if doc.is_empty() {
        doc = format!("Tool {qualified}.");
    }
    if !params.is_empty() {
        doc.push_str("\n\nArgs:\n");
        for p in &params {
            let _ = writeln!(
                doc,
                "    {} ({}{}): {}",
                p.name,
                p.hint,
                if p.required { "" } else { ", optional" },
                p.doc
            );
        }
    }
    doc.push_str("\nReturns the tool's result as parsed JSON (dict, list, str, number...).\n");
    doc.push_str("Raises tools.ToolError when the tool fails.");

    let mut src = String::new();
    let _ = writeln!(
        src,
        "# Generated by AgentKernel from the tool's JSON Schema. Calls go to the host.\n\
         from __future__ import annotations\n\n\
         from typing import Any, Literal\n\n\
         import _agentkernel\n"
    );
    let _ = writeln!(
        src,
        "def {}{} -> {}:",
        t.tool,
        sig,
        return_hint(t.output_schema)
    );
    let _ = writeln!(src, "    {}", Value::String(doc));
    let _ = writeln!(src, "    _ak_args: dict[str, Any] = {{}}");
    for p in &params {
        if p.required || p.default.is_some() {
            let _ = writeln!(src, "    _ak_args[{:?}] = {}", p.name, p.name);
        } else {
            let _ = writeln!(
                src,
                "    if {0} is not None:\n        _ak_args[{0:?}] = {0}",
                p.name
            );
        }
    }
    if kwargs {
        let _ = writeln!(src, "    _ak_args.update(kwargs)");
    }
    let _ = writeln!(
        src,
        "    return _agentkernel.call_tool({}, _ak_args)",
        Value::String(qualified)
    );
    src
}

/// The source of `/tools/<server>/__init__.py`: lazy access to the tool functions.
pub fn server_package(server: &str, summary: &[(String, String)]) -> String {
    let mut doc =
        format!("Tools of {server:?}. Import a tool with `from tools.{server} import NAME`.\n\n");
    for (name, desc) in summary {
        let first = desc.lines().next().unwrap_or("").trim();
        let _ = writeln!(doc, "{name}: {first}");
    }
    format!(
        "# Generated by AgentKernel.\n{doc}\n\n{body}",
        doc = Value::String(doc),
        body = SERVER_INIT_BODY
    )
}

const SERVER_INIT_BODY: &str = r#"import importlib as _importlib
import os as _os

_HERE = _os.path.dirname(__file__)


def _tool_names():
    return sorted(
        f[:-3] for f in _os.listdir(_HERE) if f.endswith(".py") and not f.startswith("_")
    )


def __getattr__(name):
    # `from tools.<server> import <tool>` and `tools.<server>.<tool>` give the function.
    if name.startswith("_"):
        raise AttributeError(name)
    if name not in _tool_names():
        _importlib.invalidate_caches()  # the server may have added tools since
        if name not in _tool_names():
            raise AttributeError(f"module {__name__!r} has no tool {name!r}; tools: {', '.join(_tool_names())}")
    module = _importlib.import_module(f"{__name__}.{name}")
    func = getattr(module, name)
    globals()[name] = func  # replaces the submodule attribute the import just set
    return func


def __dir__():
    return _tool_names()


__all__ = _tool_names()
"#;

/// The source of `/tools/__init__.py`.
pub fn root_package(servers: &[(String, String)], local: &[String]) -> String {
    let mut doc = String::from(
        "Tools this sandbox can call. Each server is a sub-package: `from tools.<server> import <tool>`.\n\
         `help(tools.<server>)` lists its tools; `help(tools.<server>.<tool>)` shows one.\n\n",
    );
    for (name, what) in servers {
        let _ = writeln!(doc, "{name}: {what}");
    }
    for name in local {
        let _ = writeln!(doc, "{name}: local Python module");
    }
    let names: Vec<&String> = servers.iter().map(|(n, _)| n).chain(local).collect();
    format!(
        "# Generated by AgentKernel.\n{doc}\n\nfrom _agentkernel import ToolError, ToolLimitError\n\n\
         _NAMES = {names}\n\n{body}",
        doc = Value::String(doc),
        names = serde_json::to_string(&names).unwrap_or_else(|_| "[]".into()),
        body = ROOT_INIT_BODY,
    )
}

const ROOT_INIT_BODY: &str = r#"import importlib as _importlib
import os as _os

# The user's own tool modules are mounted here; they import as tools.<module>.
_LOCAL = _os.path.join(_os.path.dirname(__file__), "_local")
if _os.path.isdir(_LOCAL):
    __path__.append(_LOCAL)


def __getattr__(name):
    if name in _NAMES:
        return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}; tools: {', '.join(_NAMES)}")


def __dir__():
    return sorted(_NAMES + ["ToolError", "ToolLimitError"])


__all__ = list(_NAMES)
"#;

/// Writes `contents` to `path` atomically (temp file + rename), world-readable: the sandbox
/// user is not the file's owner.
pub fn write_file(path: &Path, contents: &str) -> io::Result<()> {
    let tmp = path.with_extension("tmp~");
    fs::write(&tmp, contents)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))?;
    fs::rename(&tmp, path)
}

/// Creates `dir` (world-readable and searchable).
pub fn make_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
}

/// Replaces the contents of `/tools/<server>/` with modules for `tools` (all of one server).
pub fn write_server(root: &Path, server: &str, tools: &[StubTool<'_>]) -> io::Result<()> {
    let dir = root.join(server);
    make_dir(&dir)?;
    let mut keep = vec!["__init__.py".to_owned()];
    for t in tools {
        write_file(&dir.join(format!("{}.py", t.tool)), &tool_module(t))?;
        keep.push(format!("{}.py", t.tool));
    }
    let summary: Vec<(String, String)> = tools
        .iter()
        .map(|t| (t.tool.to_owned(), t.description.to_owned()))
        .collect();
    write_file(&dir.join("__init__.py"), &server_package(server, &summary))?;
    // Tools the server no longer has disappear.
    for entry in fs::read_dir(&dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !keep.contains(&name) && entry.file_type()?.is_file() {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn names_become_identifiers() {
        assert_eq!(python_name("create-issue"), "create_issue");
        assert_eq!(python_name("2fa"), "_2fa");
        assert_eq!(python_name("class"), "class_");
        assert_eq!(python_name("a.b"), "a_b");
        assert!(is_identifier("ok_1") && !is_identifier("1ok") && !is_identifier("def"));
    }

    #[test]
    fn signature_orders_required_first_and_types_from_schema() {
        let schema = json!({
            "type": "object",
            "properties": {
                "round": {"type": "boolean", "default": false},
                "a": {"type": "integer"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "mode": {"enum": ["fast", "slow"]},
                "b": {"type": ["number", "null"]},
                "bad-name": {"type": "string"}
            },
            "required": ["a", "b"]
        });
        assert_eq!(
            signature(&schema),
            "(a: int, b: float | None, *, round: bool = False, tags: list[str] = None, \
             mode: Literal[\"fast\", \"slow\"] = None, **kwargs: Any)"
        );
    }

    #[test]
    fn binding_matches_the_generated_signature() {
        let schema = json!({
            "type": "object",
            "properties": {
                "a": {"type": "integer"},
                "b": {"type": "integer"},
                "round": {"type": "boolean", "default": false},
                "note": {"type": "string"}
            },
            "required": ["a", "b"]
        });
        let kw = |v: Value| v.as_object().unwrap().clone();
        let bound = bind_arguments(
            "add",
            &schema,
            vec![json!(1)],
            kw(json!({"b": 2, "note": null})),
        );
        assert_eq!(
            Value::Object(bound.unwrap()),
            json!({"a": 1, "b": 2, "round": false})
        );
        let err = bind_arguments(
            "add",
            &schema,
            vec![json!(1), json!(2), json!(3)],
            kw(json!({})),
        );
        assert_eq!(
            err.unwrap_err(),
            "add() takes 2 positional arguments but 3 were given"
        );
        let err = bind_arguments("add", &schema, vec![json!(1)], kw(json!({"a": 2})));
        assert_eq!(
            err.unwrap_err(),
            "add() got multiple values for argument 'a'"
        );
        let err = bind_arguments("add", &schema, vec![], kw(json!({"zzz": 2})));
        assert_eq!(
            err.unwrap_err(),
            "add() got an unexpected keyword argument 'zzz'"
        );
        let err = bind_arguments("add", &schema, vec![json!(1)], kw(json!({})));
        assert_eq!(
            err.unwrap_err(),
            "add() missing 1 required positional argument: 'b'"
        );
    }

    #[test]
    fn generated_module_is_valid_python_with_docstring() {
        let schema = json!({"type": "object", "properties": {"q": {"type": "string", "description": "\"\"\" tricky"}}, "required": ["q"]});
        let src = tool_module(&StubTool {
            server: "s",
            tool: "search",
            description: "Finds \"\"\" things.\nSecond line.",
            input_schema: &schema,
            output_schema: None,
        });
        assert!(src.contains("def search(q: str) -> Any:"), "{src}");
        assert!(
            src.contains("_agentkernel.call_tool(\"s.search\", _ak_args)"),
            "{src}"
        );
    }

    /// Every generated file parses as Python, whatever the schema throws at it.
    #[test]
    fn generated_sources_compile() {
        let schema = json!({
            "type": "object",
            "properties": {
                "q": {"type": "string", "description": "ends with a backslash \\"},
                "n": {"type": "integer", "default": 3},
                "x": {"type": "number", "default": 1.5e300},
                "opts": {"type": "object", "default": {"a": [1, null, true]}},
                "from": {"type": "string"},
                "kwargs": {"type": "string"},
                "_agentkernel": {"type": "string"},
                "choice": {"enum": ["a'b", "c\"d", 1, null]},
                "u": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "integer"}}]}
            },
            "required": ["q"]
        });
        let out = json!({"type": "object", "properties": {"result": {"type": "array", "items": {"type": "string"}}}});
        let sources = [
            tool_module(&StubTool {
                server: "srv",
                tool: "t",
                description: "Doc with \"\"\" quotes, \\ and \u{e9}.",
                input_schema: &schema,
                output_schema: Some(&out),
            }),
            server_package("srv", &[("t".into(), "a \"\"\" b".into())]),
            root_package(
                &[("srv".into(), "MCP server (stdio: x)".into())],
                &["local".into()],
            ),
        ];
        for src in sources {
            let mut child = std::process::Command::new("python3")
                .args([
                    "-c",
                    "import sys; compile(sys.stdin.read(), 'stub.py', 'exec')",
                ])
                .stdin(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write as _;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(src.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}\n{src}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert_eq!(return_hint(Some(&out)), "list[str]");
    }
}
