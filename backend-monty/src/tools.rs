//! Tools on Monty: imports rewritten on the host, arguments bound on the host.
//!
//! Monty has no import system to mount a `tools` package into, so before a program runs the
//! host rewrites its tool imports into calls of helpers the engine answers itself
//! ([`crate::engine`]); everything else of the program is untouched and keeps its line
//! numbers:
//!
//! | program                               | becomes                                              |
//! |---------------------------------------|------------------------------------------------------|
//! | `from tools.calc import add, mul as m` | `add = __agentkernel_tool__("calc.add"); m = ...`    |
//! | `import tools.calc as c`               | `c = __agentkernel_module__("calc", "calc.add", ...)` |
//! | `import tools` / `import tools.calc`   | `tools = __agentkernel_package__("calc.add", ...)`   |
//! | `from tools import calc, ToolError`    | `calc = __agentkernel_module__(...); ToolError = RuntimeError` |
//! | `import _agentkernel`                  | `_agentkernel = __agentkernel_runtime__()`           |
//!
//! An unknown server or tool becomes the `ModuleNotFoundError` / `ImportError` CPython would
//! raise. Calling a tool function sends its positional and keyword arguments to the host,
//! where [`bind`] turns them into the JSON object the generated CPython stub would have sent
//! (same names, defaults and `None`-means-absent rule), so validation, policy and results are
//! the ones every backend gives.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use agentkernel_core::tool_abi::{bind_arguments, python_name};
use agentkernel_core::{Error, ToolError, ToolErrorKind, ToolHost, ToolSpec};
use async_trait::async_trait;
use serde_json::{Map, Value};

/// Helper that returns the external function for one tool (catalog name).
pub(crate) const TOOL_HELPER: &str = "__agentkernel_tool__";
/// Helper that returns a module-like object of tools (server, catalog names...).
pub(crate) const MODULE_HELPER: &str = "__agentkernel_module__";
/// Helper that returns the whole `tools` package (catalog names...).
pub(crate) const PACKAGE_HELPER: &str = "__agentkernel_package__";
/// Helper that returns the `_agentkernel` runtime module (`call_tool`).
pub(crate) const RUNTIME_HELPER: &str = "__agentkernel_runtime__";
/// The external function behind `_agentkernel.call_tool(name, args, **kwargs)`.
pub(crate) const CALL_TOOL: &str = "__agentkernel_call_tool__";
/// Key under which a tool call's positional arguments travel to the host (keyword
/// arguments are the other keys; a Python keyword can never be spelled like this).
pub(crate) const POSITIONAL_KEY: &str = "$args";

/// Catalog names by Python server name, then by Python tool name.
type Catalog = BTreeMap<String, BTreeMap<String, String>>;

fn catalog_index(specs: &[ToolSpec]) -> Catalog {
    let mut out: Catalog = BTreeMap::new();
    for s in specs {
        let (server, tool) = s.name.split_once('.').unwrap_or(("", &s.name));
        out.entry(python_name(server))
            .or_default()
            .insert(python_name(tool), s.name.clone());
    }
    out
}

/// Whether `code` may import tools at all (so the catalog is only fetched when needed).
pub(crate) fn mentions_tools(code: &str) -> bool {
    code.contains("tools") || code.contains("_agentkernel")
}

/// Why [`rewrite_imports_until`] stopped before the end of the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RewriteStop {
    /// The exec's deadline passed (the run is then a wall-time kill).
    TimedOut,
    /// The rewritten program would pass [`MAX_REWRITTEN_BYTES`] (each tool import expands
    /// to the catalog names it binds, so many imports of a large catalog multiply).
    TooLarge,
}

/// Largest program the import rewrite may produce (16 MiB): 16 times the program-size cap,
/// far above what real imports need, and a bound on the host memory one exec can make the
/// rewrite hold.
pub const MAX_REWRITTEN_BYTES: usize = 16 << 20;

/// How many lines the rewrite handles between two looks at the clock.
const LINES_PER_CLOCK_CHECK: usize = 4096;

/// Rewrites the tool imports of `code` (see the module docs). Lines inside triple-quoted
/// strings are left alone; a parenthesised `from ... import (...)` over several lines keeps
/// the program's line numbers (the continuation lines become empty).
pub fn rewrite_imports<'a>(code: &'a str, specs: &[ToolSpec]) -> Cow<'a, str> {
    match rewrite_imports_until(code, specs, None) {
        Ok(out) => out,
        // Only reached past the expansion cap: the program is left as it is (its tool
        // imports then fail in Monty as unknown modules).
        Err(_) => Cow::Borrowed(code),
    }
}

/// [`rewrite_imports`] within the exec's `deadline`: it stops with [`RewriteStop::TimedOut`]
/// once the deadline has passed (the clock is read every few thousand lines), and with
/// [`RewriteStop::TooLarge`] when the result would pass [`MAX_REWRITTEN_BYTES`]. Linear in
/// the size of `code`: each line is read once, also the continuation lines of an unclosed
/// `from tools import (` (the audit's 2 MB program of 200k such lines held a host thread
/// 88 s when every line re-copied and re-scanned the statement so far).
pub fn rewrite_imports_until<'a>(
    code: &'a str,
    specs: &[ToolSpec],
    deadline: Option<Instant>,
) -> Result<Cow<'a, str>, RewriteStop> {
    if !mentions_tools(code) {
        return Ok(Cow::Borrowed(code));
    }
    let catalog = catalog_index(specs);
    let lines: Vec<&str> = code.split('\n').collect();
    let mut out: Vec<Cow<'a, str>> = Vec::with_capacity(lines.len());
    let mut changed = false;
    let mut in_string: Option<&str> = None;
    let mut i = 0;
    let mut next_clock_check = LINES_PER_CLOCK_CHECK;
    // Bytes the replacements add (an over-estimate: the replaced statements stay counted).
    let mut grown = 0usize;
    let past_deadline = |i: usize, next: &mut usize| {
        if i < *next {
            return false;
        }
        *next = i + LINES_PER_CLOCK_CHECK;
        deadline.is_some_and(|d| Instant::now() >= d)
    };
    while i < lines.len() {
        if past_deadline(i, &mut next_clock_check) {
            return Err(RewriteStop::TimedOut);
        }
        let line = lines[i];
        i += 1;
        if let Some(q) = in_string {
            if line.matches(q).count() % 2 == 1 {
                in_string = None;
            }
            out.push(Cow::Borrowed(line));
            continue;
        }
        for q in ["\"\"\"", "'''"] {
            if line.matches(q).count() % 2 == 1 {
                in_string = Some(q);
            }
        }
        let body = line.trim_start();
        let indent = &line[..line.len() - body.len()];
        if !(body.starts_with("import ") || body.starts_with("from ")) || !mentions_tools(body) {
            out.push(Cow::Borrowed(line));
            continue;
        }
        // The statement, up to a comment or `;`, joined with its parenthesised continuation.
        // Each continuation line is appended once and only it is searched for the `)`.
        let (first, mut rest) = split_statement(body);
        let mut stmt = first.to_owned();
        let mut continuation = 0;
        let mut open = stmt.contains('(') && !stmt.contains(')');
        while open && i < lines.len() {
            if past_deadline(i, &mut next_clock_check) {
                return Err(RewriteStop::TimedOut);
            }
            let (more, tail) = split_statement(lines[i].trim());
            stmt.push(' ');
            stmt.push_str(more);
            open = !more.contains(')');
            rest = tail;
            i += 1;
            continuation += 1;
        }
        match rewrite_statement(&stmt, &catalog)? {
            Some(new) => {
                changed = true;
                grown += new.len();
                if code.len() + grown > MAX_REWRITTEN_BYTES {
                    return Err(RewriteStop::TooLarge);
                }
                out.push(Cow::Owned(format!("{indent}{new}{rest}")));
                out.extend(std::iter::repeat_n(Cow::Borrowed(""), continuation));
            }
            None => {
                let start = i - continuation - 1;
                out.extend(lines[start..i].iter().map(|l| Cow::Borrowed(*l)));
            }
        }
    }
    Ok(if changed {
        Cow::Owned(out.join("\n"))
    } else {
        Cow::Borrowed(code)
    })
}

/// `(statement, rest)`: the import statement, and what follows it on the line (`; ...` or a
/// comment), kept verbatim.
fn split_statement(body: &str) -> (&str, &str) {
    let end = body.find([';', '#']).unwrap_or(body.len());
    (body[..end].trim_end(), &body[end..])
}

/// A Python string literal.
fn lit(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

fn module_expr(server: &str, tools: &BTreeMap<String, String>) -> String {
    let mut args = vec![lit(server)];
    args.extend(tools.values().map(|n| lit(n)));
    format!("{MODULE_HELPER}({})", args.join(", "))
}

fn package_expr(catalog: &Catalog) -> String {
    let names: Vec<String> = catalog
        .values()
        .flat_map(|t| t.values().map(|n| lit(n)))
        .collect();
    format!("{PACKAGE_HELPER}({})", names.join(", "))
}

/// The replacement of one import statement, or `None` when it imports no tools;
/// [`RewriteStop::TooLarge`] past [`MAX_REWRITTEN_BYTES`].
fn rewrite_statement(stmt: &str, catalog: &Catalog) -> Result<Option<String>, RewriteStop> {
    // The replacement's size so far: many imports of a large catalog in one statement
    // stop at the cap instead of building a huge string.
    let mut size = 0usize;
    macro_rules! push {
        ($assigns:expr, $item:expr) => {{
            let item: String = $item;
            size += item.len() + 2;
            if size > MAX_REWRITTEN_BYTES {
                return Err(RewriteStop::TooLarge);
            }
            $assigns.push(item);
        }};
    }
    let not_found = |m: &str| format!("raise ModuleNotFoundError(\"No module named '{m}'\")");
    if let Some(names) = stmt.strip_prefix("import ") {
        let mut kept = Vec::new();
        let mut assigns = Vec::new();
        for item in names.split(',') {
            let (module, alias) = split_alias(item);
            let is_tools = module == "tools" || module.starts_with("tools.");
            if !is_tools && module != "_agentkernel" {
                kept.push(item.trim().to_owned());
                continue;
            }
            let value = if module == "_agentkernel" {
                format!("{RUNTIME_HELPER}()")
            } else if let Some(server) = module.strip_prefix("tools.") {
                match catalog.get(server) {
                    Some(tools) if !server.contains('.') => match alias {
                        Some(_) => module_expr(server, tools),
                        None => package_expr(catalog),
                    },
                    _ => return Ok(Some(not_found(module))),
                }
            } else {
                package_expr(catalog)
            };
            let target = alias.unwrap_or(if module == "_agentkernel" {
                "_agentkernel"
            } else {
                "tools"
            });
            push!(assigns, format!("{target} = {value}"));
        }
        if assigns.is_empty() {
            return Ok(None);
        }
        if !kept.is_empty() {
            assigns.insert(0, format!("import {}", kept.join(", ")));
        }
        return Ok(Some(assigns.join("; ")));
    }
    let Some(rest) = stmt.strip_prefix("from ") else {
        return Ok(None);
    };
    let Some((module, names)) = rest.split_once(" import ") else {
        return Ok(None);
    };
    let module = module.trim();
    let names = names.trim().trim_start_matches('(').trim_end_matches(')');
    let items: Vec<(&str, Option<&str>)> = names
        .split(',')
        .filter(|n| !n.trim().is_empty())
        .map(split_alias)
        .collect();
    let mut assigns = Vec::new();
    if module == "_agentkernel" {
        for (name, alias) in items {
            let value = match name {
                "call_tool" => format!("{RUNTIME_HELPER}().call_tool"),
                "ToolError" | "ToolLimitError" => "RuntimeError".to_owned(),
                _ => {
                    return Ok(Some(format!(
                        "raise ImportError(\"cannot import name '{name}' from '_agentkernel'\")"
                    )));
                }
            };
            push!(assigns, format!("{} = {value}", alias.unwrap_or(name)));
        }
    } else if module == "tools" {
        for (name, alias) in items {
            let value = match (name, catalog.get(name)) {
                (_, Some(tools)) => module_expr(name, tools),
                ("ToolError" | "ToolLimitError", None) => "RuntimeError".to_owned(),
                _ => {
                    return Ok(Some(format!(
                        "raise ImportError(\"cannot import name '{name}' from 'tools'\")"
                    )));
                }
            };
            push!(assigns, format!("{} = {value}", alias.unwrap_or(name)));
        }
    } else if let Some(server) = module.strip_prefix("tools.") {
        let Some(tools) = catalog.get(server) else {
            return Ok(Some(not_found(module)));
        };
        for (name, alias) in items {
            if name == "*" {
                for (py, full) in tools {
                    push!(assigns, format!("{py} = {TOOL_HELPER}({})", lit(full)));
                }
                continue;
            }
            let Some(full) = tools.get(name) else {
                return Ok(Some(format!(
                    "raise ImportError(\"cannot import name '{name}' from '{module}'\")"
                )));
            };
            push!(
                assigns,
                format!("{} = {TOOL_HELPER}({})", alias.unwrap_or(name), lit(full))
            );
        }
    } else {
        return Ok(None);
    }
    if assigns.is_empty() {
        push!(assigns, "pass".into());
    }
    Ok(Some(assigns.join("; ")))
}

/// `"a as b"` → `("a", Some("b"))`.
fn split_alias(item: &str) -> (&str, Option<&str>) {
    let item = item.trim();
    match item.split_once(" as ") {
        Some((name, alias)) => (name.trim(), Some(alias.trim())),
        None => (item, None),
    }
}

/// Binds a call made from Monty to the JSON arguments of tool `name` (see the module docs).
/// `args` is the object the program passed: keyword arguments, plus the positional ones
/// under `POSITIONAL_KEY`. Without positional arguments and for unknown tools the
/// keywords pass unchanged (the host's own checks then answer).
pub fn bind(specs: &[ToolSpec], name: &str, args: Value) -> Result<Value, ToolError> {
    let Value::Object(mut keywords) = args else {
        return Ok(args);
    };
    let positional = match keywords.remove(POSITIONAL_KEY) {
        Some(Value::Array(p)) => p,
        _ => Vec::new(),
    };
    let Some(spec) = specs.iter().find(|s| s.name == name) else {
        return Ok(Value::Object(keywords));
    };
    let short = name.split_once('.').map_or(name, |(_, t)| t);
    bind_arguments(
        &python_name(short),
        &spec.input_schema,
        positional,
        keywords,
    )
    .map(Value::Object)
    .map_err(|m| ToolError::new(ToolErrorKind::InvalidArguments, m))
}

/// One exec's tools, as both modes use them: the catalog fetched once (for the import
/// rewrite and for binding), and calls bound by [`bind`] before they reach the host's
/// registry.
pub(crate) struct BoundTools {
    inner: Arc<dyn ToolHost>,
    specs: OnceLock<Vec<ToolSpec>>,
}

impl BoundTools {
    pub(crate) fn new(inner: Arc<dyn ToolHost>) -> BoundTools {
        BoundTools {
            inner,
            specs: OnceLock::new(),
        }
    }

    /// The exec's catalog (asked of the host once).
    fn specs(&self) -> &[ToolSpec] {
        self.specs.get_or_init(|| self.inner.catalog())
    }

    /// `code` with its tool imports rewritten ([`rewrite_imports_until`]) by `deadline`
    /// (the exec's: the rewrite is part of the run's wall time). `Ok(None)`: the deadline
    /// passed, and the run is a wall-time kill. A rewrite that would grow past
    /// [`MAX_REWRITTEN_BYTES`] is refused.
    pub(crate) fn rewrite<'a>(
        &self,
        code: &'a str,
        deadline: Instant,
    ) -> Result<Option<Cow<'a, str>>, Error> {
        if !mentions_tools(code) {
            return Ok(Some(Cow::Borrowed(code)));
        }
        match rewrite_imports_until(code, self.specs(), Some(deadline)) {
            Ok(out) => Ok(Some(out)),
            Err(RewriteStop::TimedOut) => Ok(None),
            Err(RewriteStop::TooLarge) => Err(Error::invalid(
                format!(
                    "the program's tool imports expand it past {} MiB on monty (each import of `tools` or of a server lists the tools it binds)",
                    MAX_REWRITTEN_BYTES >> 20
                ),
                "import each tools server once, at the top of the program, and use the names from there",
            )),
        }
    }
}

#[async_trait]
impl ToolHost for BoundTools {
    fn catalog(&self) -> Vec<ToolSpec> {
        self.specs().to_vec()
    }

    async fn call(&self, name: &str, args: Value) -> Result<Value, ToolError> {
        let args = if args.get(POSITIONAL_KEY).is_some() {
            bind(self.specs(), name, args)?
        } else {
            args
        };
        self.inner.call(name, args).await
    }
}

/// Positional and keyword arguments as the JSON object [`bind`] expects.
pub(crate) fn call_args(positional: Vec<Value>, mut keywords: Map<String, Value>) -> Value {
    if !positional.is_empty() {
        keywords.insert(POSITIONAL_KEY.to_owned(), Value::Array(positional));
    }
    Value::Object(keywords)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn specs() -> Vec<ToolSpec> {
        ["calc.add", "calc.mul", "gh.create-issue"]
            .into_iter()
            .map(|n| ToolSpec {
                name: n.into(),
                description: String::new(),
                input_schema: json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}),
                output_schema: None,
            })
            .collect()
    }

    #[test]
    fn tool_imports_become_helper_calls_on_the_same_lines() {
        let code = "import json\nfrom tools.calc import add, mul as m  # two\nimport tools.gh as g\ndef f():\n    import tools\n    return tools\nx = '''\nimport tools\n'''\nfrom tools.calc import (\n    add,\n)\nprint(1)";
        let out = rewrite_imports(code, &specs());
        let lines: Vec<&str> = out.split('\n').collect();
        assert_eq!(lines.len(), code.split('\n').count());
        assert_eq!(lines[0], "import json");
        assert_eq!(
            lines[1],
            "add = __agentkernel_tool__(\"calc.add\"); m = __agentkernel_tool__(\"calc.mul\")# two"
        );
        assert_eq!(
            lines[2],
            "g = __agentkernel_module__(\"gh\", \"gh.create-issue\")"
        );
        assert!(
            lines[4].starts_with("    tools = __agentkernel_package__(\"calc.add\""),
            "{}",
            lines[4]
        );
        assert_eq!(lines[7], "import tools", "inside a string: untouched");
        assert_eq!(lines[9], "add = __agentkernel_tool__(\"calc.add\")");
        assert_eq!(lines[10], "");
        assert_eq!(lines[12], "print(1)");
    }

    #[test]
    fn unknown_servers_and_tools_raise_what_cpython_raises() {
        assert_eq!(
            rewrite_imports("from tools.nope import x", &specs()),
            "raise ModuleNotFoundError(\"No module named 'tools.nope'\")"
        );
        assert_eq!(
            rewrite_imports("from tools.calc import div", &specs()),
            "raise ImportError(\"cannot import name 'div' from 'tools.calc'\")"
        );
        assert_eq!(
            rewrite_imports("print('tools')", &specs()),
            "print('tools')"
        );
    }

    #[test]
    fn the_rewrite_stops_at_the_exec_deadline() {
        let code = format!("from tools import (\n{}", "calc,\n".repeat(100_000));
        assert_eq!(
            rewrite_imports_until(&code, &specs(), Some(Instant::now())),
            Err(RewriteStop::TimedOut)
        );
        // With time to spare, the same program is rewritten: one statement, same lines.
        let far = Instant::now() + std::time::Duration::from_secs(3600);
        let out = rewrite_imports_until(&code, &specs(), Some(far)).unwrap();
        assert_eq!(out.split('\n').count(), code.split('\n').count());
        assert!(out.starts_with("calc = __agentkernel_module__(\"calc\""));
    }

    #[test]
    fn tool_imports_cannot_expand_a_program_without_bound() {
        // 2000 tools: each `import tools` lists all of them (about 50 KB).
        let big: Vec<ToolSpec> = (0..2000)
            .map(|i| ToolSpec {
                name: format!("server{}.tool_with_a_long_name_{i}", i % 7),
                description: String::new(),
                input_schema: json!({"type": "object"}),
                output_schema: None,
            })
            .collect();
        let one_line = format!("import {}", vec!["tools"; 1000].join(", "));
        let many_lines = "import tools\n".repeat(1000);
        for code in [one_line, many_lines] {
            assert!(code.len() < 16 << 10);
            assert_eq!(
                rewrite_imports_until(&code, &big, None),
                Err(RewriteStop::TooLarge)
            );
        }
        // A few imports of the same catalog are fine.
        let few = "import tools\nfrom tools import server1\n";
        assert!(rewrite_imports_until(few, &big, None).is_ok());
    }

    #[test]
    fn positional_arguments_bind_to_the_schema_names() {
        let args = call_args(vec![json!(2)], json!({"b": 3}).as_object().unwrap().clone());
        assert_eq!(
            bind(&specs(), "calc.add", args).unwrap(),
            json!({"a": 2, "b": 3})
        );
        let err = bind(
            &specs(),
            "calc.add",
            call_args(vec![json!(1); 3], Map::new()),
        )
        .unwrap_err();
        assert_eq!(err.kind, ToolErrorKind::InvalidArguments);
        assert_eq!(
            err.message,
            "add() takes 2 positional arguments but 3 were given"
        );
    }
}
