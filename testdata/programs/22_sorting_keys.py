people = [("ann", 31, 5.5), ("bob", 25, 6.1), ("cy", 31, 5.9), ("di", 25, 5.2)]
print(sorted(people, key=lambda p: (-p[1], p[2])))
print(sorted(people, key=lambda p: p[0], reverse=True)[0])
import operator
print(max(people, key=operator.itemgetter(2)), min(people, key=lambda p: p[1:]))
nums = [5, -3, 2, -8, 7]
print(sorted(nums, key=abs), sorted("banana"), sorted({"b": 2, "a": 1}.items()))
