//! The monty backend's worker-mode guest agent (see `agentkernel_backend_monty::worker`).

#[global_allocator]
static ALLOC: monty_alloc::LimitedAllocator = monty_alloc::LimitedAllocator;

fn main() {
    agentkernel_backend_monty::worker::main()
}
