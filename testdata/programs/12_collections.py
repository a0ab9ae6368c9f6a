from collections import Counter, defaultdict, deque, OrderedDict, namedtuple, ChainMap
c = Counter("mississippi")
print(c.most_common(3), c["s"])
d = defaultdict(list)
for k, v in [("a", 1), ("b", 2), ("a", 3)]:
    d[k].append(v)
print(dict(d))
q = deque(range(5), maxlen=4); q.appendleft(-1); q.rotate(1)
print(list(q))
P = namedtuple("P", "x y")
print(P(1, 2)._replace(y=5), P._fields)
o = OrderedDict(a=1, b=2); o.move_to_end("a")
print(list(o))
print(ChainMap({"a": 1}, {"a": 2, "b": 3})["b"])
