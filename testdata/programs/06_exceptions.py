class AppError(Exception):
    def __init__(self, code, msg):
        super().__init__(msg)
        self.code = code
def risky(n):
    if n == 0:
        raise AppError(400, "zero")
    return 10 / n
for n in [2, 0]:
    try:
        print(risky(n))
    except AppError as e:
        print("app", e.code, e)
    finally:
        print("done", n)
try:
    try:
        {}["k"]
    except KeyError as e:
        raise ValueError("wrapped") from e
except ValueError as e:
    print(type(e.__cause__).__name__, e.__cause__)
try:
    raise ExceptionGroup("many", [ValueError(1), TypeError(2)])
except* ValueError as eg:
    print("values", [str(x) for x in eg.exceptions])
except* TypeError as eg:
    print("types", [str(x) for x in eg.exceptions])
