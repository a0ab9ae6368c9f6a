import itertools as it, functools as ft, operator
print(list(it.accumulate([1, 2, 3, 4], operator.mul)))
print(list(it.combinations("abcd", 2))[:4], len(list(it.permutations(range(4)))))
print([(k, len(list(g))) for k, g in it.groupby("aaabccdd")])
print(list(it.product([0, 1], repeat=3))[-1], list(it.chain.from_iterable([[1], [2, 3]])))
print(ft.reduce(lambda a, b: a * b, range(1, 11)))
@ft.lru_cache(maxsize=None)
def ways(n):
    return 1 if n <= 1 else ways(n - 1) + ways(n - 2)
print(ways(60), ways.cache_info().hits)
p = ft.partial(int, base=2)
print(p("1011"), list(it.zip_longest("ab", "xyz", fillvalue="-")))
