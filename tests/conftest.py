import os
import tempfile

# Model caches go to a per-run directory so tests never depend on a user's cache.
os.environ.setdefault("INFERWATCH_CACHE_DIR", tempfile.mkdtemp(prefix="inferwatch-cache-"))
