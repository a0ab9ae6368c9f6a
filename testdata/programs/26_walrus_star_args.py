def f(a, b=2, *args, c, d=4, **kw):
    return (a, b, args, c, d, sorted(kw.items()))
print(f(1, c=3), f(1, 2, 3, 4, c=5, z=6, y=7))
data = [1, 5, 12, 7, 20]
if (n := len([x for x in data if x > 6])) > 2:
    print("many", n)
first, *middle, last = range(6)
print(first, middle, last, [*"ab", *range(2)], {**{"a": 1}, "b": 2})
def pos(a, /, b, *, c): return a + b + c
print(pos(1, b=2, c=3))
