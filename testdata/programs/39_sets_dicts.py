a, b = {1, 2, 3, 4}, {3, 4, 5}
print(a & b, a | b, a - b, a ^ b, a <= {1, 2, 3, 4, 5}, sorted(frozenset("aab")))
d = {"b": 2, "a": 1}
d.setdefault("c", 3); d.update(d=4); d.pop("b")
print(d, list(d.keys()), d.get("zz", "none"), {k: v for k, v in sorted(d.items(), reverse=True)})
print(d | {"e": 5}, dict.fromkeys("xy", 0))
inv = {v: k for k, v in d.items()}
print(inv)
