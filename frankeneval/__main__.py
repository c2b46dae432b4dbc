import sys

from frankeneval.cli import main

sys.exit(main())
