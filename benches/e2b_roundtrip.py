"""The official E2B SDK's round trip against agentkernel's server, timed in Python.

Run by `cargo bench --bench http` (benches/http.rs) with E2B_API_URL, E2B_SANDBOX_URL and
E2B_API_KEY pointing at a server it started; argument: the number of rounds. Each round is
`Sandbox.create()` + `run_code("print(1)")` + `kill()`, what an agent's first step costs.
Prints p50 and p99 in the bench's format, and the median of each of the three calls.
"""

import sys
import time

from e2b_code_interpreter import Sandbox


def main() -> None:
    rounds = int(sys.argv[1])
    times = []
    # (create, run_code, kill) of each timed round
    phases = []
    for i in range(rounds + 10):
        t = time.perf_counter()
        sbx = Sandbox.create()
        t1 = time.perf_counter()
        execution = sbx.run_code("print(1)")
        t2 = time.perf_counter()
        sbx.kill()
        elapsed = time.perf_counter() - t
        if i >= 10:
            phases.append((t1 - t, t2 - t1, elapsed - (t2 - t)))
        # Output may arrive in several chunks (as from E2B's own kernel).
        if "".join(execution.logs.stdout) != "1\n":
            sys.exit(f"round {i}: unexpected output {execution.logs.stdout!r}")
        if i >= 10:  # the first rounds warm the pool and the SDK's connections
            times.append(elapsed)
    times.sort()
    p50 = times[round((len(times) - 1) * 0.5)]
    p99 = times[round((len(times) - 1) * 0.99)]
    print("e2b/process: Sandbox.create() + run_code('print(1)') + kill(), timed in Python")
    print(f"{'E2B SDK round trip':<28} p50 {p50 * 1e3:>8.3f} ms   p99 {p99 * 1e3:>8.3f} ms   ({len(times)} runs)")
    for k, name in enumerate(["  of which create", "  of which run_code", "  of which kill"]):
        each = sorted(p[k] for p in phases)
        print(f"{name:<28} p50 {each[round((len(each) - 1) * 0.5)] * 1e3:>8.3f} ms")


if __name__ == "__main__":
    main()
