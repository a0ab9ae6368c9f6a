from dataclasses import dataclass, field, asdict, replace
from typing import List
@dataclass(order=True, frozen=True)
class Item:
    price: float
    name: str = field(compare=False)
    tags: tuple = ()
@dataclass
class Cart:
    items: List[Item] = field(default_factory=list)
    def total(self):
        return sum(i.price for i in self.items)
c = Cart([Item(3.5, "tea"), Item(1.25, "bun", ("food",))])
print(c.total(), sorted(c.items)[0].name, asdict(c))
print(replace(c.items[0], price=4.0))
try:
    c.items[0].price = 1
except Exception as e:
    print(type(e).__name__)
