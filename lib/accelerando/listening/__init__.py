"""Listening tests (WP5): MUSHRA (ITU-R BS.1534-3) and ABX trials served to people, and their statistics.

- `experiment`: the experiment file, and the stimuli it prepares (hidden reference, 3.5 and 7 kHz
  anchors, loudness matching), named so that no participant can tell a condition by its name.
- `store`: the answers in a SQLAlchemy database, each written the moment it is given.
- `analysis`: BS.1534-3 post-screening, per-condition medians and intervals, ABX against guessing.
- `app`: the FastAPI app (participants' page, API, admin behind a token); `python -m
  accelerando.listening serve` runs it.
"""
