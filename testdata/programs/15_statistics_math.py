import statistics as st, math
data = [2, 4, 4, 4, 5, 5, 7, 9]
print(st.mean(data), st.median(data), st.mode(data), st.pstdev(data))
print(round(st.stdev(data), 6), st.median_low([1, 3, 5, 7]))
print(math.gcd(84, 36), math.lcm(4, 6), math.comb(10, 3), math.isqrt(10**20 + 1))
print(math.factorial(25), round(math.pi, 10), math.hypot(3, 4), math.log2(1024))
