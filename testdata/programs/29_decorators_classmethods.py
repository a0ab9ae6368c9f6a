import functools
def trace(fn):
    @functools.wraps(fn)
    def wrapper(*a, **k):
        r = fn(*a, **k)
        print(f"{fn.__name__}{a} -> {r}")
        return r
    return wrapper
class Shape:
    count = 0
    def __init__(self):
        Shape.count += 1
    @classmethod
    def make(cls):
        return cls()
    @staticmethod
    @trace
    def area(w, h):
        return w * h
class Sq(Shape):
    pass
print(type(Sq.make()).__name__, Shape.count, Shape.area(3, 4), Shape.area.__name__)
