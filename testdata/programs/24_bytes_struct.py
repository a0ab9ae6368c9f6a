import struct
packed = struct.pack("<IhQ?", 1, -2, 2**40, True)
print(packed.hex(), struct.unpack("<IhQ?", packed), struct.calcsize("<IhQ?"))
b = bytearray(b"hello")
b[0] = ord("J"); b.extend(b"!!")
print(b, bytes(b).upper(), b.find(b"l"), memoryview(b)[1:3].tobytes())
print(b"a,b".split(b","), bytes.fromhex("de ad"), "✓".encode(), b"\xe2\x9c\x93".decode())
