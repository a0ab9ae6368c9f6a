x = "global"
def outer():
    x = "enclosing"
    def inner():
        global x
        x = "changed"
        return x
    inner()
    return x
print(outer(), x)
def gen_scope():
    return [(lambda: i)() for i in range(3)]
print(gen_scope())
try:
    def bad():
        print(y)
        y = 1
    bad()
except UnboundLocalError:
    print("unbound")
