import textwrap, string
s = "The quick brown fox jumps over the lazy dog. " * 3
print(textwrap.fill(s, width=30))
print(textwrap.shorten(s, width=40, placeholder="..."))
print(textwrap.dedent("    a\n      b\n    c"))
print(string.ascii_lowercase[:5], string.Template("$who likes $what").substitute(who="tim", what="pie"))
print(string.capwords("hello  wide world"))
