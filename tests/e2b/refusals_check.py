"""What agentkernel's E2B endpoints refuse, as the official SDK sees it (tests/e2b.rs runs it).

Same environment as sdk_check.py (E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY), plus
E2B_CHECK_HOST_DIR: a host directory the sandbox's program plants a symlink to; writing
through that symlink with files.write must be refused and leave the directory empty.
Prints PASS/FAIL per check; exits 0 only when all passed.
"""

import os
import sys

import e2b
import httpx
from e2b_code_interpreter import Sandbox

results = []


def check(name, fn):
    try:
        detail = fn()
        results.append(True)
        print(f"PASS {name}: {detail}")
    except Exception as e:  # noqa: BLE001 - every failure is reported
        results.append(False)
        print(f"FAIL {name}: {type(e).__name__}: {e}")


def raises(exc, fn, contains=""):
    try:
        fn()
    except exc as e:
        if contains and contains not in str(e):
            raise AssertionError(f"{type(e).__name__} without {contains!r}: {e}")
        return f"{type(e).__name__}: {str(e)[:90]}"
    raise AssertionError(f"no {exc.__name__} raised")


host_dir = os.environ["E2B_CHECK_HOST_DIR"]
sbx = Sandbox.create(timeout=120)
sbx.run_code(
    f"import os\nos.symlink({host_dir!r}, 'esc')\nos.symlink('/etc', 'etc_link')\n"
    "open('/tmp/private', 'w').write('p')"
)


def symlink_write():
    out = raises(e2b.InvalidArgumentException,
                 lambda: sbx.files.write("/home/user/esc/pwned", "x"), "symlink")
    assert os.listdir(host_dir) == [], f"the host directory got {os.listdir(host_dir)}"
    return out


check("files.write through a planted symlink", symlink_write)
check("files.read through a planted symlink",
      lambda: raises(e2b.InvalidArgumentException,
                     lambda: sbx.files.read("/home/user/etc_link/hostname"), "symlink"))
check("files.read of /tmp", lambda: raises(e2b.InvalidArgumentException,
                                           lambda: sbx.files.read("/tmp/private"), "/home/user"))
check("files.read climbing out with ..",
      lambda: raises(e2b.InvalidArgumentException,
                     lambda: sbx.files.read("/home/user/../../etc/passwd")))
check("pty", lambda: raises(e2b.SandboxException,
                            lambda: sbx.pty.create(size=e2b.PtySize(24, 80)), "UNIMPLEMENTED"))
check("watch_dir", lambda: raises(e2b.SandboxException,
                                  lambda: sbx.files.watch_dir("/home/user"), "UNIMPLEMENTED"))
check("run_code in R", lambda: raises(e2b.SandboxException,
                                      lambda: sbx.run_code("1", language="r"), "python only"))
check("pause", lambda: raises(e2b.SandboxException, lambda: sbx.pause(), "501"))


def uploads_belong_to_the_sandbox_user():
    # The server writes into the sandbox's root as the sandbox's own user (its filesystem
    # ids), never as itself: the program owns what is uploaded and can change it.
    sbx.files.write("/home/user/owned.txt", "x")
    ex = sbx.run_code(
        "import os\nst = os.stat('owned.txt')\nopen('owned.txt', 'a').write('y')\n"
        "(st.st_uid == os.getuid(), st.st_gid == os.getgid(), open('owned.txt').read())"
    )
    assert ex.error is None, f"the program could not change the upload: {ex.error}"
    assert ex.text == "(True, True, 'xy')", f"owner check: {ex.text!r}"
    return "the uploaded file is the program's own (uid and gid) and writable by it"


check("an upload belongs to the sandbox's user", uploads_belong_to_the_sandbox_user)


def command_timeout():
    sbx.run_code("kept = 7")
    out = raises(e2b.TimeoutException, lambda: sbx.commands.run("sleep 20", timeout=2))
    text = sbx.run_code("kept").text
    assert text == "7", f"state after the command's timeout: {text!r}"
    return out + " (state kept)"


check("commands.run timeout", command_timeout)


def wrong_token():
    url = os.environ["E2B_SANDBOX_URL"]
    r = httpx.get(f"{url}/files", params={"path": "/home/user/x"},
                  headers={"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "49983",
                           "X-Access-Token": "not-the-token"})
    assert r.status_code == 401, f"status {r.status_code}: {r.text}"
    r = httpx.post(f"{url}/execute", json={"code": "1"},
                   headers={"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "49999"})
    assert r.status_code == 401, f"no token: status {r.status_code}: {r.text}"
    return "401 for a wrong and for a missing X-Access-Token"


check("envd and interpreter without the sandbox's token", wrong_token)


def wrong_key():
    os.environ["E2B_API_KEY"] = "not-a-key-of-the-server-0000"
    try:
        return raises(e2b.AuthenticationException, lambda: Sandbox.create())
    finally:
        os.environ["E2B_API_KEY"] = key


key = os.environ["E2B_API_KEY"]
check("create with an unknown API key", wrong_key)
sbx.kill()
print(f"refusals_check: {sum(results)} passed, {len(results) - sum(results)} failed")
# Without the interpreter's finalization (see the end of sdk_check.py).
sys.stdout.flush()
sys.stderr.flush()
os._exit(0 if all(results) else 1)
