from datetime import datetime, timedelta, date, timezone
d = datetime(2024, 2, 28, 23, 30, tzinfo=timezone.utc)
print(d + timedelta(hours=1), (d + timedelta(days=1)).strftime("%A %d %B %Y"))
print(date(2024, 3, 1) - date(2023, 3, 1), date(2024, 1, 1).isocalendar()[1])
print(datetime.fromisoformat("2021-06-01T12:00:00+02:00").astimezone(timezone.utc).isoformat())
print(datetime.strptime("03/04/2020 05:06", "%d/%m/%Y %H:%M").timetuple().tm_yday)
