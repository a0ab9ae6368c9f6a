from decimal import Decimal, getcontext, ROUND_HALF_UP
from fractions import Fraction
getcontext().prec = 30
print(Decimal(1) / Decimal(7))
print((Decimal("2.675")).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))
print(sum(Decimal("0.1") for _ in range(10)))
print(Fraction(3, 4) + Fraction(1, 6), Fraction("0.125"), Fraction(22, 7).limit_denominator(5))
