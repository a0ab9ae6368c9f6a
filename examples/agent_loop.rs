//! A scripted agent loop (no LLM): each turn writes a program from what the previous turn
//! printed, runs it in one session (variables and workspace files carry over), and feeds
//! its outcome back. A Rust tool gives the "agent" data; an exception in one turn is fed
//! back as an error to fix, as a model would be shown it.
//!
//! ```text
//! cargo run --example agent_loop
//! ```

use std::time::Duration;

use agentkernel::{ExecStatus, FunctionTool, Kernel, ToolRegistry};
use serde_json::json;

#[global_allocator]
static ALLOC: agentkernel::Allocator = agentkernel::ALLOCATOR;

fn main() -> agentkernel::Result<()> {
    agentkernel::run_worker_if_requested();
    tokio::runtime::Runtime::new()
        .expect("a Tokio runtime")
        .block_on(agent())
}

/// What the "model" writes next, given the last outcome (a stand-in for an LLM call).
fn next_program(turn: usize, last_stdout: &str, last_error: Option<&str>) -> Option<String> {
    match (turn, last_error) {
        // Turn 0: fetch data through the tool and keep it in a variable.
        (0, _) => Some(
            "from tools.shop import orders\nrows = orders(customer='ada')\nprint(len(rows))".into(),
        ),
        // Turn 1: a program with a bug (a wrong key), as models write them.
        (1, _) => Some("total = sum(r['price'] for r in rows)\nprint(total)".into()),
        // Turn 2: shown the KeyError, the "model" fixes the key.
        (2, Some(error)) if error.contains("KeyError") => {
            Some("total = sum(r['amount'] for r in rows)\nprint(total)".into())
        }
        // Turn 3: uses the number the previous turn printed.
        (3, None) => Some(format!(
            "average = {} / len(rows)\nprint(round(average, 2))",
            last_stdout.trim()
        )),
        _ => None,
    }
}

async fn agent() -> agentkernel::Result<()> {
    let tools = ToolRegistry::builder()
        .function(FunctionTool::new(
            "shop",
            "orders",
            "A customer's orders.",
            json!({"type": "object", "properties": {"customer": {"type": "string"}}}),
            |args| async move {
                let who = args["customer"].as_str().unwrap_or_default().to_owned();
                Ok(json!([
                    {"customer": who, "amount": 12.5},
                    {"customer": who, "amount": 30},
                    {"customer": who, "amount": 7.25},
                ]))
            },
        ))
        .build()
        .await?;
    let kernel = Kernel::builder()
        .timeout(Duration::from_secs(60))
        .data_dir(std::env::temp_dir().join("agentkernel-agent-loop"))
        .tools(tools)
        .build()?;
    let session = kernel.session("agent-loop").await?;
    let (mut stdout, mut error) = (String::new(), None::<String>);
    for turn in 0.. {
        let Some(code) = next_program(turn, &stdout, error.as_deref()) else {
            break;
        };
        let out = session.exec(code).await?;
        stdout = out.stdout.text();
        error = match &out.status {
            ExecStatus::Ok => None,
            ExecStatus::Exception {
                type_name, message, ..
            } => Some(format!("{type_name}: {message}")),
            other => Some(format!("{other:?}")),
        };
        match &error {
            None => println!("turn {turn}: {}", stdout.trim()),
            Some(e) => println!("turn {turn}: error {e}"),
        }
    }
    Ok(())
}
