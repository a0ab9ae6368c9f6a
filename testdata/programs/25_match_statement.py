def describe(x):
    match x:
        case {"type": "point", "x": px, "y": py}:
            return f"point {px},{py}"
        case [first, *rest] if rest:
            return f"list starting {first} (+{len(rest)})"
        case [only]:
            return f"single {only}"
        case int(n) if n < 0:
            return "negative"
        case str() | bytes():
            return "text"
        case _:
            return "other"
for v in [{"type": "point", "x": 1, "y": 2}, [1, 2, 3], [9], -5, "s", 3.0]:
    print(describe(v))
