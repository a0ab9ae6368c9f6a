import base64, hashlib, hmac, binascii
data = b"agentkernel"
print(base64.b64encode(data), base64.urlsafe_b64decode(base64.urlsafe_b64encode(data)))
print(hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest())
print(hmac.new(b"key", data, hashlib.sha1).hexdigest(), binascii.crc32(data))
print(hashlib.blake2b(data, digest_size=8).hexdigest(), base64.b32encode(b"hi"))
