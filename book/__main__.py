"""``python -m book``: train the chapter 8 date reader, or read dates with it (see book.cli)."""
import sys

try:
    from book.cli import main
except KeyboardInterrupt:  # Ctrl-C while torch is still being imported
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main())
