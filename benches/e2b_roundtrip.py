"""The official E2B SDK's round trip against agentkernel's server, timed in Python.

Run by `cargo bench --bench http` (benches/http.rs) with E2B_API_URL, E2B_SANDBOX_URL and
E2B_API_KEY pointing at a server it started; argument: the number of rounds. Each round is
`Sandbox.create()` + `run_code("print(1)")` + `kill()`, what an agent's first step costs.
Prints p50 and p99 in the bench's format.
"""

import sys
import time

from e2b_code_interpreter import Sandbox


def main() -> None:
    rounds = int(sys.argv[1])
    times = []
    for i in range(rounds + 10):
        t = time.perf_counter()
        sbx = Sandbox.create()
        execution = sbx.run_code("print(1)")
        sbx.kill()
        elapsed = time.perf_counter() - t
        if execution.logs.stdout != ["1\n"]:
            sys.exit(f"round {i}: unexpected output {execution.logs.stdout!r}")
        if i >= 10:  # the first rounds warm the pool and the SDK's connections
            times.append(elapsed)
    times.sort()
    p50 = times[round((len(times) - 1) * 0.5)]
    p99 = times[round((len(times) - 1) * 0.99)]
    print("e2b/process: Sandbox.create() + run_code('print(1)') + kill(), timed in Python")
    print(f"{'E2B SDK round trip':<28} p50 {p50 * 1e3:>8.3f} ms   p99 {p99 * 1e3:>8.3f} ms   ({len(times)} runs)")


if __name__ == "__main__":
    main()
