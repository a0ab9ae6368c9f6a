import unicodedata
s = "Crème brûlée — naïve café ✓ 日本語"
print(len(s), s.upper(), s[::-1])
print(unicodedata.normalize("NFD", "é") == "e\u0301", unicodedata.name("✓"), unicodedata.category("日"))
print("straße".casefold() == "STRASSE".casefold(), "İ".lower().encode())
print(sorted(["b", "A", "a", "B"]), sorted(["b", "A", "a", "B"], key=str.lower))
print(ord("€"), chr(0x1F600).encode("utf-8"), "日本".encode("utf-16-le").hex())
