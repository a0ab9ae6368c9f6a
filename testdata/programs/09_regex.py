import re
text = "Contact: ada@example.com, bob@test.org; phone 555-1234 or 555-9876."
print(re.findall(r"[\w.]+@[\w.]+\.\w+", text))
print(re.sub(r"(\d{3})-(\d{4})", r"\2-\1", text))
m = re.search(r"(?P<user>\w+)@(?P<host>[\w.]+)", text)
print(m.group("user"), m.group("host"), m.span())
print(re.split(r"[,;]\s*", text))
pat = re.compile(r"^(\w+)=(\d+)$", re.M)
print(pat.findall("a=1\nb=22\nbad\nc=333"))
