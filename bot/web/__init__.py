"""What every entry point shares to take input from outside and answer it.

JSON bodies refused unless storable (`jsonbody.py`), errors as JSON (`middlewares.py`), HMAC signatures
(`signing.py`), per-sender rate limits (`ratelimit.py`), times people give us (`times.py`) and the client's address
behind trusted proxies (`forwarded.py`).
May import flows and storage only; every other part of `bot` may import it.
"""
