def fib():
    a, b = 0, 1
    while True:
        yield a
        a, b = b, a + b
import itertools
print(list(itertools.islice(fib(), 15)))
def echo():
    total = 0
    while True:
        x = yield total
        if x is None:
            return total
        total += x
g = echo(); next(g)
print([g.send(i) for i in range(5)])
def chain(*its):
    for it in its:
        yield from it
print(list(chain("ab", [1, 2], range(3))))
print(sum(x * x for x in range(100) if x % 3 == 0))
