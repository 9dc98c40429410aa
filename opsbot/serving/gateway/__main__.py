"""``python -m opsbot.serving.gateway``."""

from opsbot.serving.gateway.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
