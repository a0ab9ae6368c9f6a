def counter():
    n = 0
    def inc(by=1):
        nonlocal n
        n += by
        return n
    return inc
c = counter()
print(c(), c(), c(10))
adders = [lambda x, i=i: x + i for i in range(4)]
print([f(10) for f in adders])
def memo(fn):
    cache = {}
    def wrapper(*a):
        if a not in cache:
            cache[a] = fn(*a)
        return cache[a]
    wrapper.cache = cache
    return wrapper
@memo
def slow_fib(n):
    return n if n < 2 else slow_fib(n - 1) + slow_fib(n - 2)
print(slow_fib(80), len(slow_fib.cache))
