class Countdown:
    def __init__(self, n): self.n = n
    def __iter__(self): return self
    def __next__(self):
        if self.n <= 0: raise StopIteration
        self.n -= 1
        return self.n + 1
print(list(Countdown(5)))
class Matrix:
    def __init__(self, rows): self.rows = rows
    def __matmul__(self, o):
        return Matrix([[sum(a * b for a, b in zip(r, c)) for c in zip(*o.rows)] for r in self.rows])
    def __repr__(self): return f"Matrix({self.rows})"
print(Matrix([[1, 2], [3, 4]]) @ Matrix([[5, 6], [7, 8]]))
class Box:
    def __init__(self, v): self.v = v
    def __bool__(self): return bool(self.v)
    def __call__(self, k): return self.v * k
print([bool(Box(0)), bool(Box(3))], Box(3)(4))
