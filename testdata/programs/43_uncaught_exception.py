def parse(s):
    return int(s)
print("parsing")
parse("not a number")
