# An agent-written program, as AgentKernel runs it: in a fresh sandbox, with only its
# /workspace (and a private /tmp) to write to, and no network.
import json
import os
import platform
import statistics

readings = [12.5, 14.1, 13.8, 15.2, 11.9, 14.7]
summary = {
    "count": len(readings),
    "mean": round(statistics.mean(readings), 2),
    "stdev": round(statistics.stdev(readings), 2),
}
print("Hello from the sandbox!")
print(f"python {platform.python_version()} as uid {os.getuid()}, pid {os.getpid()}")
print("summary:", json.dumps(summary))
print("workspace:", os.listdir("/workspace"))
