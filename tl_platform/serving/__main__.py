"""``python -m tl_platform.serving --deployment PATH ...``: see ``tl_platform.serving.server``."""

from __future__ import annotations

from tl_platform.serving.server import main

raise SystemExit(main())
