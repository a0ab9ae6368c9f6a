from contextlib import contextmanager, suppress, ExitStack
log = []
@contextmanager
def tag(name):
    log.append(f"<{name}>")
    try:
        yield name.upper()
    finally:
        log.append(f"</{name}>")
with tag("a") as A, tag("b") as B:
    log.append(A + B)
print(log)
with suppress(ZeroDivisionError):
    1 / 0
print("suppressed")
class Res:
    def __enter__(self): print("enter"); return self
    def __exit__(self, *exc): print("exit", exc[0].__name__ if exc[0] else None); return True
with Res():
    raise KeyError("x")
with ExitStack() as stack:
    names = [stack.enter_context(tag(n)) for n in "xy"]
print(names, log[-2:])
