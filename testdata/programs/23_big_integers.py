n = 2 ** 200 + 12345
print(n, n % 97, n.bit_length(), len(str(3 ** 1000)))
print(pow(7, 10**6, 10**9 + 7), pow(3, -1, 11), divmod(-17, 5), -17 // 5, -17 % 5)
print(int("ff", 16), hex(255), oct(8), bin(10), int.from_bytes(b"\x01\x00", "big"))
print((1 << 100).to_bytes(13, "little")[-1], round(2.5), round(3.5), round(-0.5))
