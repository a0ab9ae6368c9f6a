import random
r = random.Random(12345)
print([r.random() for _ in range(3)])
print(r.randrange(1000), r.choice("abcdef"), r.sample(range(100), 5))
l = list(range(10)); r.shuffle(l); print(l)
print(round(r.gauss(0, 1), 12), r.getrandbits(64))
