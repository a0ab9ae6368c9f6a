import difflib, shlex, fnmatch
a = "one two three four".split(); b = "one too three five four".split()
print(list(difflib.unified_diff(a, b, lineterm="", n=0)))
print(difflib.get_close_matches("appel", ["ape", "apple", "peach", "puppy"]))
print(round(difflib.SequenceMatcher(None, "abcd", "bcde").ratio(), 4))
print(shlex.split('cmd --name "a b" \'c d\' e\\ f'), shlex.quote("it's"))
print(fnmatch.filter(["a.py", "b.txt", "c.py"], "*.py"))
