"""The `kindling` command line (`kindling = "bot.cli:main"`, and `python -m bot`): one module per command group.

`kindling.py` builds the parser and runs serve, migrate and `lead show`; `flows.py` lint, preview and simulate;
`reports.py`, `privacy.py` (lead export and erase), `operators.py`, `apikeys.py`, `webhooks.py` and `score.py`
(learned scoring) their groups.
May import every other part of `bot` (it starts the app) and flows and storage; nothing in `bot` imports it.
"""

from bot.cli.kindling import main, parser

__all__ = ["main", "parser"]
