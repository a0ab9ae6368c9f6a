def permutations(s):
    if len(s) <= 1:
        return [s]
    return [c + p for i, c in enumerate(s) for p in permutations(s[:i] + s[i+1:])]
print(permutations("abc"))
def hanoi(n, a="A", b="B", c="C"):
    return [] if n == 0 else hanoi(n - 1, a, c, b) + [(a, c)] + hanoi(n - 1, b, a, c)
print(len(hanoi(10)), hanoi(2))
def qsort(xs):
    return xs if len(xs) < 2 else qsort([x for x in xs[1:] if x < xs[0]]) + [xs[0]] + qsort([x for x in xs[1:] if x >= xs[0]])
print(qsort([5, 3, 9, 1, 5, 8, 2, 7]))
grid = ["S.#", "..#", "#.E"]
from collections import deque
def bfs():
    q, seen = deque([(0, 0, 0)]), {(0, 0)}
    while q:
        r, c, d = q.popleft()
        if grid[r][c] == "E": return d
        for dr, dc in ((1,0),(0,1),(-1,0),(0,-1)):
            nr, nc = r + dr, c + dc
            if 0 <= nr < 3 and 0 <= nc < 3 and grid[nr][nc] != "#" and (nr, nc) not in seen:
                seen.add((nr, nc)); q.append((nr, nc, d + 1))
print(bfs())
