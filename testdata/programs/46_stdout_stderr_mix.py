import sys
print("to stdout")
print("to stderr", file=sys.stderr)
sys.stdout.write("no newline")
sys.stdout.write("\n")
for i in range(3):
    print(i, end=" ")
print()
