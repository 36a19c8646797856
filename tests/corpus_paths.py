"""Where the public capture corpus lives (``../shared/corpus`` or $SHADOWTAP_CORPUS)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("SHADOWTAP_CORPUS", ROOT.parent / "shared" / "corpus"))
