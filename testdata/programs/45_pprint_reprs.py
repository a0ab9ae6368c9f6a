import pprint, reprlib
data = {"users": [{"id": i, "name": f"user{i}", "roles": ["a", "b"][: i % 3]} for i in range(4)]}
pprint.pprint(data, width=60)
print(reprlib.repr(list(range(100))), repr(1e16), repr(0.1 + 0.2), str(1e-7), 1/3)
print(repr("it's"), repr('say "hi"'), [None, True, 1.0, 2j, b"x"])
