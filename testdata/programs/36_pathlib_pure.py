from pathlib import PurePosixPath
p = PurePosixPath("/data/reports/2024/summary.final.csv")
print(p.name, p.stem, p.suffix, p.suffixes, p.parent, p.parts[:3])
print(p.with_suffix(".json"), p.relative_to("/data"), PurePosixPath("a") / "b" / "..")
print(p.match("*.csv"), PurePosixPath("/a/b").is_absolute())
