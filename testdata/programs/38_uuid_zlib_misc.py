import uuid, zlib, html, urllib.parse, ipaddress
print(uuid.uuid5(uuid.NAMESPACE_DNS, "example.com"), uuid.UUID(int=1).hex[-4:])
z = zlib.compress(b"a" * 1000); print(len(z) < 50, zlib.decompress(z)[:3])
print(html.escape("<a href='x'>&</a>"), html.unescape("&lt;&amp;"))
u = urllib.parse.urlparse("https://u:p@host:8080/p/a?x=1&y=2#f")
print(u.hostname, u.port, urllib.parse.parse_qs(u.query), urllib.parse.quote("a b/c"))
print(ipaddress.ip_network("10.0.0.0/30").num_addresses, ipaddress.ip_address("::1").is_loopback)
