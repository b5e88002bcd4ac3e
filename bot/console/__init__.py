"""The operator console at /console: accounts, login, roles, lead and flow pages (mounted by `mount.py`)."""
