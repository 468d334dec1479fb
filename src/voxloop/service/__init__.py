"""What the server offers every protocol and the engine, below both: API keys and their limits,
the gate that admits a connection (guard, auth), error shapes, metrics and the conversation store.

Nothing here imports the engine, the protocols or the app (``voxloop.server``), which composes
them all on top.
"""
