"""Learned scoring kept current in the running server: a lead rescored right after it acts (`rescore.py`), and
the model fitted again on a schedule by one instance (`refit.py`).

The model itself, its fit and its explanations are flows' (flows.learned, flows.learned_fit); this package only
runs them at the right moments. May import flows and storage; never a channel, the API or the console.
"""
