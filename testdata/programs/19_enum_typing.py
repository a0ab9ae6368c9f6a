from enum import Enum, IntEnum, Flag, auto
from typing import NamedTuple, Optional, TypedDict
class Color(Enum):
    RED = 1
    GREEN = 2
class Perm(Flag):
    R = auto(); W = auto(); X = auto()
class Level(IntEnum):
    LOW = 1; HIGH = 2
print(Color.RED, Color(2).name, list(Color), Level.HIGH > Level.LOW)
print(Perm.R | Perm.W in Perm.R | Perm.W | Perm.X, (Perm.R | Perm.X).value)
class Pt(NamedTuple):
    x: int
    y: Optional[int] = None
class Movie(TypedDict):
    title: str
print(Pt(1), Movie(title="x"), list(Pt.__annotations__))
