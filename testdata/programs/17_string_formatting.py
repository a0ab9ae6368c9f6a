name, n, f = "ada", 42, 3.14159
print(f"{name!r:>8}|{n:05d}|{f:.2f}|{n:#x}|{n:b}|{1234567:,}|{0.25:.1%}")
print("{0}-{1}-{0}".format("a", "b"), "%s=%d" % ("k", 7), "%(x)s" % {"x": 1})
print(f"{'centre':^12}|", "x".ljust(3, "."), "Title Case".swapcase())
print("a,b,,c".split(","), " pad ".strip(), "abc".replace("b", "B"), "ab" * 3)
print("hello world".title(), "ß".upper(), "ǅ".lower(), "12".zfill(5))
