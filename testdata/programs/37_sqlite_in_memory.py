import sqlite3
db = sqlite3.connect(":memory:")
db.execute("create table t (name text, qty int)")
db.executemany("insert into t values (?, ?)", [("tea", 3), ("bun", 10), ("tea", 2)])
print(db.execute("select name, sum(qty) from t group by name order by name").fetchall())
print(db.execute("select count(*), max(qty) from t").fetchone())
db.row_factory = sqlite3.Row
row = db.execute("select * from t where qty > ?", (5,)).fetchone()
print(dict(row))
