from abc import ABC, abstractmethod
class Base(ABC):
    @abstractmethod
    def run(self): ...
    def twice(self): return self.run() * 2
class Impl(Base):
    def run(self): return 21
try:
    Base()
except TypeError:
    print("abstract")
print(Impl().twice(), isinstance(Impl(), Base), issubclass(bool, int))
class Seq:
    def __init__(self, n): self.n = n
    def __iter__(self): return iter(range(self.n))
    def __contains__(self, x): return 0 <= x < self.n
print(list(Seq(3)), 2 in Seq(3), 5 in Seq(3))
