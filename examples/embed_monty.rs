//! Embedding the kernel with the `monty` backend in worker mode (Monty in a jailed process
//! of its own) from an application binary that is not `agentkernel`: the binary is its own
//! worker, through `agentkernel::run_worker_if_requested()`.
//!
//! ```text
//! cargo run --example embed_monty
//! ```
//!
//! Prints what the sandboxed program printed and the outcome's status.

// Monty counts a sandbox's memory with this allocator; a worker started from a binary
// without it refuses to start (its memory limit could not hold).
#[global_allocator]
static ALLOC: agentkernel::Allocator = agentkernel::ALLOCATOR;

fn main() -> std::process::ExitCode {
    // First thing, before any thread: when the jail starts this binary as the worker, this
    // call runs the worker and never returns.
    agentkernel::run_worker_if_requested();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    match runtime.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> agentkernel::Result<()> {
    let kernel = agentkernel::Kernel::builder().backend("monty").build()?;
    let outcome = kernel
        .execute("squares = [i * i for i in range(10)]\nprint('sum of squares:', sum(squares))")
        .await?;
    print!("{}", outcome.stdout.text());
    println!("status: {:?}", outcome.status);
    Ok(())
}
