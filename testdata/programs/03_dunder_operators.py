class V:
    def __init__(self, x, y): self.x, self.y = x, y
    def __add__(self, o): return V(self.x + o.x, self.y + o.y)
    def __mul__(self, k): return V(self.x * k, self.y * k)
    __rmul__ = __mul__
    def __eq__(self, o): return (self.x, self.y) == (o.x, o.y)
    def __hash__(self): return hash((self.x, self.y))
    def __repr__(self): return f"V({self.x}, {self.y})"
    def __len__(self): return 2
    def __getitem__(self, i): return (self.x, self.y)[i]
print(V(1, 2) + V(3, 4), 3 * V(1, 1), V(1, 2) == V(1, 2), len({V(1, 2), V(1, 2)}))
print(list(V(5, 6)), sorted([V(2, 1), V(1, 2)], key=lambda v: v.x))
