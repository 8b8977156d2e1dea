"""``python -m rmsprop`` is the ``rmsprop`` command."""

from .cli import main

raise SystemExit(main())
