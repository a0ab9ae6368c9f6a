class Registry(type):
    classes = []
    def __new__(mcls, name, bases, ns):
        cls = super().__new__(mcls, name, bases, ns)
        mcls.classes.append(name)
        return cls
class Plugin(metaclass=Registry): pass
class A(Plugin): pass
class B(Plugin): pass
print(Registry.classes)
class Positive:
    def __set_name__(self, owner, name): self.name = "_" + name
    def __get__(self, obj, objtype=None): return getattr(obj, self.name)
    def __set__(self, obj, value):
        if value <= 0: raise ValueError(f"{self.name[1:]} must be positive")
        setattr(obj, self.name, value)
class Order:
    qty = Positive()
    def __init__(self, q): self.qty = q
print(Order(3).qty)
try:
    Order(0)
except ValueError as e:
    print(e)
class Auto:
    def __init_subclass__(cls, prefix="", **kw):
        super().__init_subclass__(**kw); cls.tag = prefix + cls.__name__
class Z(Auto, prefix="x-"): pass
print(Z.tag)
