import json
data = {"name": "Ada", "tags": ["a", "b"], "n": 3.5, "ok": True, "none": None, "nested": {"x": [1, {"y": 2}]}}
s = json.dumps(data, sort_keys=True, indent=2)
print(s)
print(json.loads(s) == data)
print(json.dumps({"u": "ünï ✓"}), json.dumps({"u": "ünï"}, ensure_ascii=False))
try:
    json.loads("{bad")
except json.JSONDecodeError as e:
    print("error at", e.pos)
