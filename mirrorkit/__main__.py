import sys

from mirrorkit.cli import main

sys.exit(main())
