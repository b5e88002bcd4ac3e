"""Kindling's server: one package per part; a part imports only parts below it (tests/test_layout.py checks).

Rooms, from the bottom: `web` (input and error helpers) and `config.py`; `intake`; `delivery`; `handoff`;
`reports`; then the edges that people and systems reach: `channels`, `api`, `console`, and `cli`.
A few modules stay at the root because they join the parts rather than belong to one:
`app.py` builds the application from every part (the composition root, imported only by `cli`);
`config.py` holds the settings every part reads (it imports only flows);
`services.py` is the running app's parts in one object, which channels, API and console are handed;
`metrics.py` the Prometheus counters that object carries; `views.py` the app's own pages (demo, /healthz, /metrics).
"""
