"""accelerando: efficient audio and music generation, a thesis that runs.

Subpackages map to the work packages of the research plan:

- `accelerando.models`: builders for the models every chapter measures (Stable Audio Open, MusicGen).
- `accelerando.bench`: the benchmark harness (latency, memory, FLOPs, real-time factor).

Shared pieces: `accelerando.machine` (devices, threads, provenance), `accelerando.record`
(the JSON run record every chapter leaves), `accelerando.book` (executes chapters into the book).
"""

__version__ = "0.1.0"
