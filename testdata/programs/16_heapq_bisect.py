import heapq, bisect
h = []
for x in [5, 1, 8, 3, 9, 2]:
    heapq.heappush(h, x)
print([heapq.heappop(h) for _ in range(3)], heapq.nlargest(2, [5, 1, 8, 3]))
print(list(heapq.merge([1, 4, 7], [2, 5, 8])))
a = [1, 3, 3, 5, 8]
print(bisect.bisect_left(a, 3), bisect.bisect_right(a, 3))
bisect.insort(a, 4); print(a)
tasks = [(2, "write"), (1, "plan"), (3, "ship")]
heapq.heapify(tasks); print(heapq.heappop(tasks)[1])
