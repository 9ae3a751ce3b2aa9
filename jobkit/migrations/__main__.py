"""``python -m jobkit.migrations new "what it does"``: a new numbered revision file.

Writes ``jobkit/migrations/versions/NNNN_what_it_does.py`` from ``script.py.mako``, with
``down_revision`` set to the newest revision. For jobkit's developers (a checkout).
"""

from __future__ import annotations

import re
import sys


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "new" or not argv[1].strip():
        print('usage: python -m jobkit.migrations new "what the revision does"', file=sys.stderr)
        return 2
    from alembic import command

    from jobkit import schema

    number = f"{int(schema.shipped_head()) + 1:04d}"
    slug = re.sub(r"[^a-z0-9]+", "_", argv[1].lower()).strip("_")[:40]
    cfg = schema.alembic_config()
    cfg.set_main_option("file_template", f"%%(rev)s_{slug}")
    script = command.revision(cfg, message=argv[1], rev_id=number,
                              version_path=schema.VERSION_LOCATIONS[0])
    print(getattr(script, "path", script))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
